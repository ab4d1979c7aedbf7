//! The flowplane data plane: receive flow exports over UDP on pinned worker threads, decode
//! them, aggregate into per-worker tables by 1-second window, merge and score the windows on
//! one merger thread, and hand them to the sinks, each driven by its own thread.
//!
//! See `docs/architecture.md` for the threads, the window handoff and what is counted where.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod counters;
mod error;
pub mod key;
pub mod output;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use config::{ConfigError, EngineConfig};
pub use counters::CountersSnapshot;
pub use error::EngineError;
pub use output::{
    AggEntry, Alert, DimensionWindow, KeyValue, Sink, SinkError, Totals, WindowBatch,
};

/// What `run` returns after a clean shutdown.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Final counters.
    pub counters: CountersSnapshot,
}

/// Runs the data plane until `shutdown` becomes true, then flushes the open window to the
/// sinks (waiting at most `shutdown_timeout_secs` for them) and returns the final counters.
///
/// # Errors
///
/// An invalid configuration, a socket that cannot be bound, a core that does not exist, a
/// thread that cannot start or that panicked.
pub fn run(
    cfg: &EngineConfig,
    sinks: Vec<Box<dyn Sink>>,
    shutdown: Arc<AtomicBool>,
) -> Result<RunReport, EngineError> {
    cfg.validate()?;
    // TODO(#2): interim body so the binary can wire the API; the full engine lands next.
    let _ = sinks;
    while !shutdown.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(RunReport::default())
}
