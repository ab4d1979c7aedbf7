//! Which core runs which thread when `engine.pin_cores` is on.
//!
//! * Each worker is pinned to its own core: `worker_cores[i]`, or by default the available
//!   cores after the first (wrapping), leaving out the merger and sink cores.
//! * Each merger shard is pinned to `merger_cores[i]`, each sink thread to
//!   `sink_cores[i % len]`; the thread that joins the shards' parts of a window (only with
//!   more than one shard) runs on the last merger core.
//! * Nothing else of flowplane runs on a worker core. Before the engine starts its threads,
//!   [`MaskGuard::restrict`] narrows the calling thread's CPU mask to the available cores
//!   minus the worker cores, so that every thread created afterwards inherits that mask:
//!   merger and sink threads without a core of their own, and the threads that libraries start
//!   from them (librdkafka's, created by the Kafka sink thread on its first send). Workers then
//!   pin themselves to their core. The guard restores the caller's mask when `run` returns.
//!
//! "Available" is the calling thread's mask at start (`sched_getaffinity`), so flowplane
//! started under `taskset` or in a cpuset keeps to it.

use tracing::{info, warn};

use crate::EngineError;
use crate::config::EngineConfig;
use crate::sys::{self, CpuSet};

/// The core of each thread; `None` where the thread is not pinned.
#[derive(Clone, Debug, Default)]
pub(crate) struct Placement {
    /// One per worker.
    pub(crate) workers: Vec<Option<usize>>,
    /// One per merger shard.
    pub(crate) mergers: Vec<Option<usize>>,
    /// Cycled over the sinks.
    pub(crate) sinks: Vec<usize>,
    /// Every other flowplane thread's mask: the available cores minus the worker cores
    /// (empty: not restricted).
    pub(crate) others: Vec<usize>,
}

impl Placement {
    /// The core of sink `i`, if sinks are pinned.
    pub(crate) fn sink(&self, i: usize) -> Option<usize> {
        self.sinks.get(i % self.sinks.len().max(1)).copied()
    }
}

/// Works out the placement of `cfg` on the cores available to the calling thread.
///
/// # Errors
///
/// [`EngineError::NoSuchCore`] when `worker_cores`, `merger_cores` or `sink_cores` names a core
/// that is not available.
pub(crate) fn plan(cfg: &EngineConfig) -> Result<Placement, EngineError> {
    let unpinned = Placement {
        workers: vec![None; cfg.workers],
        mergers: vec![None; cfg.merger_shards],
        ..Placement::default()
    };
    if !cfg.pin_cores {
        return Ok(unpinned);
    }
    let available = match sys::thread_affinity() {
        Ok(set) => set.cores(),
        Err(error) => {
            warn!(%error, "Cannot read the cores available to the process; threads are not pinned.");
            return Ok(unpinned);
        }
    };
    if available.is_empty() {
        return Ok(unpinned);
    }
    for (setting, cores) in [
        ("worker_cores", &cfg.worker_cores),
        ("merger_cores", &cfg.merger_cores),
        ("sink_cores", &cfg.sink_cores),
    ] {
        if let Some(&core) = cores.iter().find(|c| !available.contains(c)) {
            return Err(EngineError::NoSuchCore {
                setting,
                core,
                available,
            });
        }
    }

    let workers: Vec<usize> = if cfg.worker_cores.is_empty() {
        let taken = |c: &&usize| cfg.merger_cores.contains(c) || cfg.sink_cores.contains(c);
        let mut candidates: Vec<usize> = available
            .iter()
            .skip(1)
            .filter(|c| !taken(c))
            .copied()
            .collect();
        if candidates.is_empty() {
            candidates = available.iter().filter(|c| !taken(c)).copied().collect();
        }
        if candidates.is_empty() {
            candidates.clone_from(&available);
        }
        (0..cfg.workers)
            .map(|i| candidates[i % candidates.len()])
            .collect()
    } else {
        cfg.worker_cores.clone()
    };
    let others = available
        .iter()
        .filter(|c| !workers.contains(c))
        .copied()
        .collect();
    let mergers = if cfg.merger_cores.is_empty() {
        vec![None; cfg.merger_shards]
    } else {
        cfg.merger_cores.iter().copied().map(Some).collect()
    };
    Ok(Placement {
        workers: workers.into_iter().map(Some).collect(),
        mergers,
        sinks: cfg.sink_cores.clone(),
        others,
    })
}

/// Restores the calling thread's CPU mask when dropped (see the module docs).
#[derive(Debug)]
pub(crate) struct MaskGuard {
    original: Option<CpuSet>,
}

impl MaskGuard {
    /// Narrows the calling thread's mask to `cores`; does nothing when `cores` is empty. A
    /// mask that cannot be read or set is logged and left alone: the threads still run, only
    /// not kept off the worker cores.
    pub(crate) fn restrict(cores: &[usize]) -> Self {
        if cores.is_empty() {
            return Self { original: None };
        }
        let original = match sys::thread_affinity() {
            Ok(set) => set,
            Err(error) => {
                warn!(%error, "Cannot read this thread's CPU mask; flowplane's other threads may run on worker cores.");
                return Self { original: None };
            }
        };
        if let Err(error) = sys::set_thread_affinity(&CpuSet::from_cores(cores.iter().copied())) {
            warn!(%error, cores = ?cores, "Cannot narrow this thread's CPU mask; flowplane's other threads may run on worker cores.");
            return Self { original: None };
        }
        Self {
            original: Some(original),
        }
    }
}

impl Drop for MaskGuard {
    fn drop(&mut self) {
        if let Some(original) = self.original.take()
            && let Err(error) = sys::set_thread_affinity(&original)
        {
            warn!(%error, cores = ?original.cores(), "Cannot restore the caller's CPU mask.");
        }
    }
}

/// Pins the calling thread to `core` (nothing when `None`); a failure is logged, and the
/// thread runs on where it is.
pub(crate) fn pin_current(core: Option<usize>, thread: &str) {
    let Some(core) = core else {
        return;
    };
    if let Err(error) = sys::set_thread_affinity(&CpuSet::from_cores([core])) {
        warn!(thread, core, %error, "Could not pin the thread to its core.");
    }
}

/// Logs the placement once at start.
pub(crate) fn log(p: &Placement, sinks: &[&'static str]) {
    let cores = |v: &[Option<usize>]| {
        v.iter()
            .map(|c| c.map_or(-1, |c| c as i64))
            .collect::<Vec<_>>()
    };
    info!(
        workers = ?cores(&p.workers),
        mergers = ?cores(&p.mergers),
        sinks = ?sinks.iter().enumerate().map(|(i, n)| (*n, p.sink(i))).collect::<Vec<_>>(),
        others = ?p.others,
        "Thread placement (core per thread, -1 = not pinned; others: the mask of every other \
         flowplane thread, empty = not restricted)."
    );
}
