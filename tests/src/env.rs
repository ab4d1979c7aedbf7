//! Where things are: the repository, the shared corpus, the tools and the `flowplane` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The real captures made by others: `$FLOWPLANE_CORPUS`, else `../shared/corpus` relative to the
/// repository root (where CI lays it).
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os("FLOWPLANE_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("../shared/corpus"),
    }
}

/// Fails with the install hint when `tool` is not on `PATH`.
///
/// # Errors
///
/// The tool is missing or cannot be started.
pub fn require_tool(tool: &str) -> Result<()> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        bail!("{tool} is not installed: run scripts/install-deps.sh");
    }
    Ok(())
}

/// The `flowplane` binary: `$FLOWPLANE_BIN`, else `target/debug/flowplane`, else
/// `target/release/flowplane` under the repository (or under `$CARGO_TARGET_DIR`).
///
/// # Errors
///
/// None of these exists.
pub fn flowplane_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLOWPLANE_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("FLOWPLANE_BIN={} does not exist", p.display());
    }
    let mut roots = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        roots.push(PathBuf::from(t));
    }
    roots.push(repo_root().join("target"));
    for root in &roots {
        for profile in ["debug", "release"] {
            let p = root.join(profile).join("flowplane");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "flowplane binary not found (set FLOWPLANE_BIN, or run `cargo build` first); looked in {}",
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A fresh, empty scratch directory for one test, under the system temp dir.
///
/// # Errors
///
/// The directory cannot be created.
pub fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("flowplane-tests-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
