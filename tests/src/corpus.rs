//! The shared capture corpus: `INDEX.tsv` (what each file is, what to decode first) and the
//! MANIFEST notes the tests rely on (which files are deliberately malformed).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One line of `INDEX.tsv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the corpus directory.
    pub path: String,
    /// `pcap`, `raw-udp-payload`, ...
    pub container: String,
    /// `NetFlow v5`, `NetFlow v9`, `IPFIX`, `IPFIX (file format)`, `sFlow v5`, ...
    pub protocol: String,
    /// Files (relative to the corpus directory) whose templates must be seen first.
    pub decode_after: Vec<String>,
    /// The MANIFEST says the file is deliberately malformed.
    pub malformed: bool,
}

impl Entry {
    /// NetFlow v5, v9 or IPFIX (possibly next to other protocols), not sFlow only.
    pub fn is_netflow_or_ipfix(&self) -> bool {
        self.protocol.contains("NetFlow") || self.protocol.contains("IPFIX")
    }
}

/// Reads `INDEX.tsv` and marks the entries the MANIFEST calls MALFORMED.
///
/// # Errors
///
/// The corpus is missing or its index has an unexpected header.
pub fn read_index(dir: &Path) -> Result<Vec<Entry>> {
    let index = dir.join("INDEX.tsv");
    let text = std::fs::read_to_string(&index).with_context(|| {
        format!(
            "read {} (the shared corpus must be at ../shared/corpus, or set FLOWPLANE_CORPUS)",
            index.display()
        )
    })?;
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.md")).unwrap_or_default();
    let malformed = malformed_files(&manifest);

    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(p), Some(c), Some(pr), Some(da)) = (
        col("path"),
        col("container"),
        col("protocol"),
        col("decode_after"),
    ) else {
        bail!("{}: unexpected header {header:?}", index.display());
    };

    let mut out = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| cols.get(i).copied().unwrap_or("").trim().to_owned();
        let path = get(p);
        out.push(Entry {
            malformed: malformed.contains(&path),
            decode_after: get(da)
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            container: get(c),
            protocol: get(pr),
            path,
        });
    }
    Ok(out)
}

/// Files whose MANIFEST section says `exercises: MALFORMED`.
fn malformed_files(manifest: &str) -> Vec<String> {
    let mut current = None;
    let mut out = Vec::new();
    for line in manifest.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            current = Some(h.trim().to_owned());
        } else if line.contains("exercises: MALFORMED")
            && let Some(f) = &current
        {
            out.push(f.clone());
        }
    }
    out
}

/// Absolute path of a corpus file.
pub fn file(dir: &Path, rel: &str) -> PathBuf {
    dir.join(rel)
}

/// The corpus directory for a corpus test, or `None` when `FLOWPLANE_SKIP_CORPUS=1` (the test
/// then says so under `label`). Panics when the corpus or tshark is missing: a corpus test
/// that silently passes without its inputs proves nothing.
pub fn dir_or_skip(label: &str) -> Option<std::path::PathBuf> {
    if std::env::var("FLOWPLANE_SKIP_CORPUS").as_deref() == Ok("1") {
        eprintln!("{label}: FLOWPLANE_SKIP_CORPUS=1, skipped");
        return None;
    }
    let dir = crate::env::corpus_dir();
    assert!(
        dir.join("INDEX.tsv").is_file(),
        "corpus not found at {} (set FLOWPLANE_CORPUS, or FLOWPLANE_SKIP_CORPUS=1 to skip)",
        dir.display()
    );
    if let Err(e) = crate::env::require_tool("tshark") {
        panic!("{e} (or set FLOWPLANE_SKIP_CORPUS=1 to skip)");
    }
    Some(dir)
}
