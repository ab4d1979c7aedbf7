//! The flowplane data plane: receive flow exports over UDP on pinned worker threads, decode
//! them, aggregate into per-worker tables by 1-second window, merge and score the windows on
//! one merger thread (or several, each owning a share of the keys), and hand them to the sinks,
//! each driven by its own thread.
//!
//! See `docs/architecture.md` for the threads, the window handoff and what is counted where.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod counters;
mod error;
mod interfaces;
pub mod key;
pub mod merger;
pub mod output;
mod placement;
mod ratelimit;
pub mod receive;
mod rx;
mod sink_driver;
mod sys;
pub mod table;
pub mod transmit;
mod uring;
pub mod worker;
pub mod zscore;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::unbounded;
use tracing::{info, warn};

pub use config::{ConfigError, EngineConfig, ReceiveBackend};
pub use counters::CountersSnapshot;
pub use error::EngineError;
/// The counter sample inside [`InterfaceCounters`], re-exported so sinks need not depend on
/// the decoders.
pub use flowplane_decoders::CounterRecord;
pub use output::{
    AggEntry, Alert, DimensionWindow, InterfaceCounters, KeyValue, Sink, SinkError, Totals,
    WindowBatch,
};
pub use rx::IDLE_TICK_MS;

/// Confines the calling thread (and every thread it starts afterwards) to `cores`, e.g. to run
/// the engine in-process on the cores a benchmark gives it. An empty list changes nothing.
///
/// # Errors
///
/// What `sched_setaffinity` reported (a core that does not exist or is not allowed).
pub fn confine_current_thread(cores: &[usize]) -> std::io::Result<()> {
    if cores.is_empty() {
        return Ok(());
    }
    sys::set_thread_affinity(&sys::CpuSet::from_cores(cores.iter().copied()))
}

/// The cores the calling thread may run on (its CPU mask).
///
/// # Errors
///
/// What `sched_getaffinity` reported.
pub fn current_thread_cpus() -> std::io::Result<Vec<usize>> {
    Ok(sys::thread_affinity()?.cores())
}

/// What `run` returns after a clean shutdown.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// The addresses the listeners were bound to (ports filled in where the configuration
    /// asked for port 0).
    pub bound: Vec<SocketAddr>,
    /// Final counters.
    pub counters: CountersSnapshot,
    /// The receive path the workers used (a worker whose ring could not be set up under
    /// `auto` used `recvmmsg`; the log says which).
    pub receive: ReceiveBackend,
}

/// Runs the data plane until `shutdown` becomes true, then flushes the open window to the
/// sinks (waiting at most `shutdown_timeout_secs` for them) and returns the final counters.
///
/// Threads: one `fp-worker-N` per worker, one `fp-merger` (with `merger_shards` > 1 also
/// `fp-merger-1` ... and the `fp-merge-join` collector), and one `fp-sink-NAME` per sink.
/// With `pin_cores`, workers, merger and sinks go to their cores and every other thread is kept
/// off the worker cores (see `placement`): the calling thread's CPU mask is narrowed while the
/// engine starts its threads and runs, and restored before `run` returns. `on_ready` is called
/// once every socket is bound, with the bound addresses, before any datagram is read.
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
    run_with(cfg, sinks, shutdown, |_| {})
}

/// [`run`], with a callback told the bound addresses once the listeners are up.
///
/// # Errors
///
/// As [`run`].
pub fn run_with(
    cfg: &EngineConfig,
    sinks: Vec<Box<dyn Sink>>,
    shutdown: Arc<AtomicBool>,
    on_ready: impl FnOnce(&[SocketAddr]),
) -> Result<RunReport, EngineError> {
    cfg.validate()?;
    check_memory(cfg)?;
    let dims: Arc<[key::Dimension]> = cfg.dimension_specs()?.into();
    let placement = placement::plan(cfg)?;
    let sink_names: Vec<_> = sinks.iter().map(|s| s.name()).collect();
    placement::log(&placement, &sink_names);
    let cores = &placement.workers;
    let listeners = rx::open(&cfg.listen, cfg.workers, cfg.rcvbuf_bytes)?;
    let bound = listeners.bound.clone();
    let backend = rx::choose(cfg)?;
    // Every thread started from here on inherits this mask (restored when `_mask` is dropped,
    // after every thread has been joined).
    let _mask = placement::MaskGuard::restrict(&placement.others);
    // Sink drivers first, so the merger has somewhere to hand windows.
    let mut handles = Vec::with_capacity(sinks.len());
    let mut driver_joins = Vec::with_capacity(sinks.len());
    for (i, s) in sinks.into_iter().enumerate() {
        let name = s.name();
        let (h, j) =
            sink_driver::spawn(s, cfg.sink_queue_windows, placement.sink(i)).map_err(|source| {
                EngineError::Spawn {
                    name: format!("fp-sink-{name}"),
                    source,
                }
            })?;
        handles.push(h);
        driver_joins.push((format!("fp-sink-{name}"), j));
    }

    // Channels: shares to the merger, and one return channel of spare table sets per worker.
    let (share_tx, share_rx) = unbounded();
    let mut returns = Vec::with_capacity(cfg.workers);
    let mut spares = Vec::with_capacity(cfg.workers);
    for _ in 0..cfg.workers {
        let (tx, rx) = unbounded();
        returns.push(tx);
        spares.push(rx);
    }
    let shards = cfg.merger_shards.max(1);
    let (merger, followers) = merger::Merger::sharded(
        &merger::MergerConfig {
            workers: cfg.workers,
            table_capacity: cfg.table_capacity,
            grace_ms: cfg.merge_grace_ms,
            zscore_windows: cfg.zscore_windows,
            zscore_threshold: cfg.zscore_threshold,
            zscore_min_windows: cfg.zscore_min_windows,
            zscore_max_keys: cfg.zscore_max_keys,
            shards,
        },
        Arc::clone(&dims),
        returns,
    );
    // One counter snapshot per merger shard; `merger::combine` adds them up.
    let shared = Arc::new(Mutex::new(vec![CountersSnapshot::default(); shards]));
    let stats_every = Duration::from_secs(cfg.stats_interval_secs);
    let mut merger_joins = Vec::with_capacity(shards + 1);
    // Several shards: each sends its part of every window to the collector, which joins them.
    let output = if shards > 1 {
        let mut part_txs = Vec::with_capacity(shards);
        let mut part_rxs = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = unbounded();
            part_txs.push(tx);
            part_rxs.push(rx);
        }
        let collector_handles = handles.clone();
        let core = placement.mergers.last().copied().flatten();
        let name = "fp-merge-join".to_owned();
        let j = spawn(name.clone(), move || {
            placement::pin_current(core, "fp-merge-join");
            merger::run_collector(part_rxs, collector_handles);
        })?;
        merger_joins.push((name, j));
        let mut part_txs = part_txs.into_iter();
        let to_collector = part_txs.next();
        for ((shard, (f, rx)), out) in (1..).zip(followers).zip(part_txs) {
            let core = placement.mergers.get(shard).copied().flatten();
            let shared = Arc::clone(&shared);
            let name = format!("fp-merger-{shard}");
            let thread = name.clone();
            let j = spawn(name.clone(), move || {
                placement::pin_current(core, &thread);
                merger::run_follower(f, shard, rx, out, shared);
            })?;
            merger_joins.push((name, j));
        }
        to_collector.map_or(merger::Output::Sinks, merger::Output::Collector)
    } else {
        merger::Output::Sinks
    };
    let merger_handles = handles.clone();
    let merger_shared = Arc::clone(&shared);
    let merger_core = placement.mergers.first().copied().flatten();
    let j = spawn("fp-merger".into(), move || {
        placement::pin_current(merger_core, "fp-merger");
        merger::run_merger(
            merger,
            share_rx,
            output,
            merger_handles,
            merger_shared,
            stats_every,
        );
    })?;
    merger_joins.push(("fp-merger".into(), j));

    // Workers, each with its own sockets, decoder and tables.
    let stop = Arc::new(AtomicBool::new(false));
    let mut worker_joins = Vec::with_capacity(cfg.workers);
    // Each worker sets up its own ring (io_uring rings here are single-issuer: the thread that
    // submits must be the one that created it) and reports whether it could.
    let (ready_tx, ready_rx) = unbounded::<Result<(), String>>();
    for (id, (socks, spare_rx)) in listeners.sockets.into_iter().zip(spares).enumerate() {
        let worker = worker::Worker::new(
            id,
            Arc::clone(&dims),
            cfg.table_capacity,
            cfg.scale_sampling,
            cfg.decoder.limits(),
            share_tx.clone(),
            spare_rx,
        );
        let core = cores.get(id).copied().flatten();
        let stop = Arc::clone(&stop);
        let batch = cfg.recv_batch;
        let sizes = rx::uring_sizes(cfg);
        let forced = cfg.receive == config::ReceiveBackend::IoUring;
        let ready = ready_tx.clone();
        let name = format!("fp-worker-{id}");
        let j = spawn(name.clone(), move || {
            placement::pin_current(core, &format!("fp-worker-{id}"));
            let ring = match backend {
                config::ReceiveBackend::IoUring => match rx::new_uring(&socks, sizes) {
                    Ok(r) => Some(r),
                    Err(e) if forced => {
                        let _ = ready.send(Err(format!("worker {id}: {e}")));
                        // The start is refused; the worker still reports its (empty) window
                        // so that the merger can finish.
                        stop.store(true, Ordering::Relaxed);
                        None
                    }
                    Err(e) => {
                        warn!(worker = id, error = %e, "io_uring setup failed; this worker uses recvmmsg.");
                        None
                    }
                },
                _ => None,
            };
            let _ = ready.send(Ok(()));
            match ring {
                Some(ring) => rx::run_worker_uring(worker, socks, ring, batch, &stop),
                None => rx::run_worker(worker, socks, batch, &stop),
            }
        })?;
        worker_joins.push((name, j));
    }
    drop(share_tx);
    drop(ready_tx);
    // Every worker reports once (twice when it refuses: the refusal, then ready to wind down).
    let mut refused = None;
    let mut reported = 0;
    while reported < cfg.workers {
        match ready_rx.recv() {
            Ok(Ok(())) => reported += 1,
            Ok(Err(reason)) => {
                refused.get_or_insert(reason);
            }
            Err(_) => break,
        }
    }
    if refused.is_some() {
        stop.store(true, Ordering::Relaxed);
    }

    for a in refused.is_none().then_some(&bound).into_iter().flatten() {
        info!(
            addr = %a,
            workers = cfg.workers,
            cores = ?cores,
            dimensions = dims.len(),
            "Listening for NetFlow v5/v9, IPFIX and sFlow v5."
        );
    }
    if refused.is_none() {
        on_ready(&bound);
        while !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        info!("Shutting down: flushing the open window.");
    }

    // Workers drain their sockets and send their last share; the merger closes every window
    // and hands it to the drivers, which get until the deadline to write it.
    stop.store(true, Ordering::Relaxed);
    let mut first_err = None;
    for (name, j) in worker_joins {
        if j.join().is_err() {
            first_err.get_or_insert(EngineError::ThreadPanicked { name });
        }
    }
    // Shard 0 first: when it returns, the other shards and then the collector follow.
    for (name, j) in merger_joins.into_iter().rev() {
        if j.join().is_err() {
            first_err.get_or_insert(EngineError::ThreadPanicked { name });
        }
    }
    let deadline = merger::unix_ms() + cfg.shutdown_timeout_secs * 1000;
    for h in &handles {
        h.set_deadline(deadline);
    }
    // Only the counters outlive the handles: a sender kept alive here would keep the drivers
    // waiting for windows that never come.
    let sink_counters: Vec<_> = handles
        .iter()
        .map(sink_driver::SinkHandle::counters)
        .collect();
    drop(handles);
    for (name, j) in driver_joins {
        if j.join().is_err() {
            first_err.get_or_insert(EngineError::ThreadPanicked { name });
        }
    }
    if let Some(reason) = refused {
        return Err(EngineError::IoUring { reason });
    }
    if let Some(e) = first_err {
        return Err(e);
    }

    let mut counters = shared
        .lock()
        .map(|s| merger::combine(&s))
        .unwrap_or_default();
    counters.sinks = sink_counters
        .iter()
        .map(|(name, c)| c.snapshot(name, 0))
        .collect();
    info!("Stopped: {}", counters.summary());
    Ok(RunReport {
        bound,
        counters,
        receive: backend,
    })
}

/// Refuses a configuration whose tables and buffers would take more than 90 % of this
/// machine's memory (a `table_capacity` with one zero too many would otherwise end in an
/// allocation failure, or the OOM killer taking Valkey); logs the estimate.
fn check_memory(cfg: &EngineConfig) -> Result<(), EngineError> {
    let need = cfg.memory_estimate()?;
    let total = flowplane_hwprofiles::Machine::inspect(std::path::Path::new("/")).memory_bytes;
    info!(
        estimate_mib = need >> 20,
        machine_mib = total.map(|t| t >> 20),
        "Memory for tables, receive buffers and Z-score baselines."
    );
    match total {
        Some(total) if need > total / 10 * 9 => Err(EngineError::Config(ConfigError::new(
            "table_capacity",
            format!(
                "the tables, receive buffers and Z-score baselines would take about {} MiB, \
                 more than 90 % of this machine's {} MiB: lower table_capacity, the number of \
                 dimensions or workers, or zscore_max_keys",
                need >> 20,
                total >> 20
            ),
        ))),
        _ => Ok(()),
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, EngineError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| EngineError::Spawn { name, source })
}
