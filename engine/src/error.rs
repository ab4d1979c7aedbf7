//! Why the engine could not start or run.

use std::io;
use std::net::SocketAddr;

/// A fatal engine error. Everything that can go wrong per packet or per window is counted
/// instead (see [`crate::counters`]); these stop `run` before or while it starts.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `worker_cores`, `merger_cores` or `sink_cores` names a core the process may not run on.
    #[error(
        "invalid setting `engine.{setting}`: core {core} is not available to this process \
         (available: {available:?})"
    )]
    NoSuchCore {
        /// The setting that names it (`worker_cores`, `merger_cores`, `sink_cores`).
        setting: &'static str,
        /// The core asked for.
        core: usize,
        /// The cores the process may use.
        available: Vec<usize>,
    },
    /// A socket option could not be set.
    #[error("cannot set {option} on the socket for {addr}: {source}")]
    SocketOption {
        /// The option (`SO_REUSEPORT`, ...).
        option: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// `engine.receive = "io_uring"` was asked for and this kernel or process cannot do it.
    #[error(
        "invalid setting `engine.receive`: io_uring is not usable here: {reason} (use \"auto\" \
         or \"recvmmsg\")"
    )]
    IoUring {
        /// Why not.
        reason: String,
    },
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        /// Thread name.
        name: String,
        /// What the OS said.
        source: io::Error,
    },
    /// A thread panicked (a bug: please report it with the log).
    #[error("thread {name} panicked")]
    ThreadPanicked {
        /// Thread name.
        name: String,
    },
}
