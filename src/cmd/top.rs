//! `flowplane top`: the hot window, from Valkey.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    /// Dimension to rank, as named in `engine.dimensions` (e.g. `dst_port`,
    /// `src_ip+dst_port+protocol`).
    #[arg(long, short)]
    dimension: String,

    /// How far back: `1m`, `5m`, or a number of seconds (1 to 300).
    #[arg(long, short, default_value = "1m", value_parser = parse_window)]
    window: u64,

    /// How many keys to show.
    #[arg(short = 'n', long = "top", default_value_t = 10)]
    n: usize,

    /// Show this key's per-second series over the window instead of the ranking.
    #[arg(long, short)]
    key: Option<String>,

    /// Configuration file, for the Valkey address and key prefix.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn top(args: &TopArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    // TODO(#2): answer from Valkey through `flowplane_sinks::valkey` once it lands.
    anyhow::bail!("`flowplane top` is not wired to Valkey yet")
}

/// `1m`, `5m`, `90s` or `90` to seconds, within the 300 s Valkey keeps.
fn parse_window(s: &str) -> Result<u64, String> {
    let secs = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>().ok().and_then(|m| m.checked_mul(60))
    } else {
        s.strip_suffix('s').unwrap_or(s).parse::<u64>().ok()
    };
    match secs {
        Some(secs @ 1..=300) => Ok(secs),
        Some(_) => Err(format!("{s} is outside 1 s to 5 m (Valkey keeps 300 s)")),
        None => Err(format!(
            "`{s}` is not a window: use 1m, 5m or a number of seconds"
        )),
    }
}
