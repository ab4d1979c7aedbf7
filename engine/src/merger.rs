//! The merger: combines the workers' tables of each window, scores every key, and hands the
//! closed window to the sink drivers.
//!
//! # Merge cadence
//!
//! Each worker reports every window it finishes, in order, with a [`WindowShare`] (tables, or
//! none when it had nothing). A share for window `W` also tells the merger that the worker
//! will send nothing more for any window up to `W` (its watermark). The merger adds each share
//! into the window's merged tables as soon as it arrives and at once sends the worker's table
//! set back, cleared, through the worker's return channel; so a worker needs only two sets
//! while the merger keeps up.
//!
//! A window is closed, in window order, when
//!
//! * every worker's watermark has reached it (complete: with 100 ms receive timeouts this is
//!   normally 0 to 100 ms after the second ends), or
//! * its grace deadline has passed (`merge_grace_ms` after the second ends), because a worker
//!   is stalled; the window goes out without that worker's share, is counted as incomplete,
//!   and a share that arrives for a closed window later is counted (`late_shares`,
//!   `late_records`) and dropped: it cannot be sent out of order.
//!
//! Windows that no worker had data for produce no batch.
//!
//! # Closing a window
//!
//! For each dimension the merged table's keys are rendered (`|`-joined text and fields),
//! scored against their baseline ([`crate::zscore`]), and sorted by scaled bytes, largest
//! first (ties by key text, so the order is deterministic). The table's overflow entry goes
//! out as [`DimensionWindow::overflow`]. Alerts are sorted by score, highest first (ties by
//! dimension and key). The merged tables are sized for every worker's table being full at once
//! (`next_power_of_two(workers · table_capacity)` slots), so merging cannot overflow; if it
//! did, it would be counted (`merge_overflow`).
//!
//! # Sharded merge (`merger_shards` > 1)
//!
//! Where one thread cannot merge and score every key of a window within the second, the key
//! space is split by the tables' own key hash ([`crate::table::shard_of`]: stable across
//! threads and runs) over `S` shards, each on its own thread. The workers are not involved:
//! they send their shares to shard 0 exactly as with one merger.
//!
//! * **Shard 0 coordinates.** It takes every share, counts the worker counters, exporter
//!   errors and late shares (so nothing is counted twice), wraps the table set in an `Arc` and
//!   forwards it to shards 1 to `S - 1` (one crossbeam channel each) before merging its own
//!   keys. It alone keeps the watermarks and decides when a window closes (complete or at its
//!   grace deadline); it then sends `Close(W)` down the same channels. Because a follower sees
//!   the forwarded shares and the closes in the order shard 0 sent them, every shard merges
//!   exactly the same shares into each window, and a late share is late for all of them.
//! * **Each shard merges and scores only its keys**: its merged tables take only the keys
//!   whose hash falls in its shard (sized `next_power_of_two(2 · workers · table_capacity /
//!   S)`: twice the even split, as headroom for an uneven one; a spill is still counted), and
//!   it keeps its own Z-score store of `zscore_max_keys / S` keys (rounded up). Only shard 0
//!   takes the workers' table overflow entries.
//! * **The table set goes back to its worker when the last shard is done with it**: every
//!   shard drops its `Arc` after merging, and the one that held the last reference clears the
//!   set and sends it back. The worker's bound of [`crate::worker::MAX_SETS_PER_WORKER`] sets
//!   and its merger-behind accounting are unchanged: a slow shard holds sets back exactly as a
//!   slow single merger would.
//! * **A collector thread joins the parts.** Each shard sends its part of every closed window
//!   (entries sorted as above, alerts sorted) to the collector, in window order; the collector
//!   takes one part from each shard, concatenates the entries of each dimension and re-sorts
//!   them (a stable sort over `S` sorted runs, which is a merge), adds up the overflow entries,
//!   merges the alerts, and hands the batch to the sink drivers in window order. The result is
//!   the batch one merger would have produced.
//!
//! Counters keep their meaning: `windows_closed` and the other window counters count windows
//! (shard 0's), `keys_emitted`, `merge_overflow`, `alerts` and the Z-score key counts are added
//! up over the shards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tracing::{debug, error, info, warn};

use crate::counters::{
    CountersSnapshot, ExporterErrorMap, WorkerCounters, WorkerTotals, errors_by_kind,
};
use crate::interfaces::InterfaceRates;
use crate::key::Dimension;
use crate::output::{AggEntry, Alert, DimensionWindow, InterfaceCounters, WindowBatch};
use crate::ratelimit::RateLimit;
use crate::sink_driver::SinkHandle;
use crate::table::Table;
use crate::worker::{TableSet, WindowShare};
use crate::zscore::ZScore;

/// Settings of the merger (from the engine configuration).
#[derive(Clone, Debug)]
pub struct MergerConfig {
    /// Number of workers.
    pub workers: usize,
    /// Slots of each worker table.
    pub table_capacity: usize,
    /// Grace after a window's end before it is closed without a stalled worker.
    pub grace_ms: u64,
    /// Z-score baseline length in windows.
    pub zscore_windows: usize,
    /// Z-score threshold.
    pub zscore_threshold: f64,
    /// Windows of history before a key can alert.
    pub zscore_min_windows: usize,
    /// Keys with a baseline (all shards together).
    pub zscore_max_keys: usize,
    /// Merger shards (at least 1).
    pub shards: usize,
}

/// Merge and score state of shard 0, which also coordinates the other shards (see the module
/// docs). Driven by [`run_merger`], or directly by tests.
#[derive(Debug)]
pub struct Merger {
    state: ShardState,
    followers: Vec<Sender<FollowerMsg>>,
    grace_ms: u64,

    watermarks: Vec<Option<u64>>,
    done: Vec<bool>,
    returns: Vec<Sender<TableSet>>,
    closed_up_to: Option<u64>,

    totals: WorkerCounters,
    interfaces: InterfaceRates,
    counters_out: Vec<InterfaceCounters>,
    exporter_errors: ExporterErrorMap,
    stats: MergerStats,
    late_log: RateLimit,
    behind_log: RateLimit,
}

/// Window bookkeeping, counted by shard 0 only.
#[derive(Clone, Copy, Debug, Default)]
struct MergerStats {
    last_window: u64,
    windows_closed: u64,
    windows_closed_incomplete: u64,
    late_shares: u64,
    late_records: u64,
}

impl Merger {
    /// A single merger (`merger_shards = 1`) for `dims`; `returns[i]` sends table sets back to
    /// worker `i`. `cfg.shards` is ignored: see [`Merger::sharded`].
    pub fn new(cfg: &MergerConfig, dims: Arc<[Dimension]>, returns: Vec<Sender<TableSet>>) -> Self {
        let one = MergerConfig {
            shards: 1,
            ..cfg.clone()
        };
        Self::with_followers(&one, dims, returns, Vec::new())
    }

    /// Shard 0 and the `cfg.shards - 1` followers it forwards shares and closes to, each with
    /// the receiving end of its channel.
    pub(crate) fn sharded(
        cfg: &MergerConfig,
        dims: Arc<[Dimension]>,
        returns: Vec<Sender<TableSet>>,
    ) -> (Self, Vec<(Follower, Receiver<FollowerMsg>)>) {
        let shards = cfg.shards.max(1);
        let mut senders = Vec::with_capacity(shards - 1);
        let mut followers = Vec::with_capacity(shards - 1);
        for shard in 1..shards {
            let (tx, rx) = crossbeam_channel::unbounded();
            senders.push(tx);
            let f = Follower {
                state: ShardState::new(cfg, Arc::clone(&dims), shard),
                returns: returns.clone(),
            };
            followers.push((f, rx));
        }
        let m = Self::with_followers(cfg, dims, returns, senders);
        (m, followers)
    }

    fn with_followers(
        cfg: &MergerConfig,
        dims: Arc<[Dimension]>,
        returns: Vec<Sender<TableSet>>,
        followers: Vec<Sender<FollowerMsg>>,
    ) -> Self {
        Self {
            state: ShardState::new(cfg, dims, 0),
            followers,
            grace_ms: cfg.grace_ms,
            watermarks: vec![None; cfg.workers],
            done: vec![false; cfg.workers],
            returns,
            closed_up_to: None,
            totals: WorkerCounters::default(),
            interfaces: InterfaceRates::default(),
            counters_out: Vec::new(),
            exporter_errors: ExporterErrorMap::default(),
            stats: MergerStats::default(),
            late_log: RateLimit::new(Duration::from_secs(10)),
            behind_log: RateLimit::new(Duration::from_secs(10)),
        }
    }

    /// Takes one worker's share of a window: merges it (or counts it as late), forwards it to
    /// the other shards, and sends the table set back to the worker once every shard is done
    /// with it.
    pub fn on_share(&mut self, share: WindowShare) {
        let WindowShare {
            worker,
            window,
            set,
            counters,
            last,
        } = share;
        self.totals.add(&counters);
        if counters.merger_behind_windows > 0
            && let Some(held_back) = self.behind_log.check(Instant::now())
        {
            warn!(
                worker,
                windows = counters.merger_behind_windows,
                records = counters.merger_behind_records,
                held_back,
                "A worker discarded windows because the merger was behind (it had no table set \
                 back to continue into); the data plane kept receiving. The merger or the sinks \
                 are too slow for this load: see merger_behind in the summary."
            );
        }

        if let Some(set) = set {
            for (exporter, errors) in &set.exporter_errors {
                self.exporter_errors.add(*exporter, errors);
            }
            // Counter samples are not aggregated: they go out with the next window closed,
            // even when their share is late.
            for c in &set.counters {
                let annotated = self.interfaces.annotate(c);
                self.counters_out.push(annotated);
            }
            if self.closed_up_to.is_some_and(|c| window <= c) {
                self.stats.late_shares += 1;
                self.stats.late_records += set.records;
                if let Some(held_back) = self.late_log.check(Instant::now()) {
                    warn!(
                        worker,
                        window,
                        records = set.records,
                        held_back,
                        "worker share arrived after its window was closed; dropped \
                         (raise engine.merge_grace_ms if workers are slow)"
                    );
                }
                // Not forwarded: the other shards closed the window too (or will, before they
                // would see this share).
                release(Arc::new(set), worker, &self.returns);
            } else {
                let set = Arc::new(set);
                for f in &self.followers {
                    // A follower is gone only when its thread died; the engine reports that.
                    let _ = f.send(FollowerMsg::Merge {
                        worker,
                        window,
                        set: Arc::clone(&set),
                    });
                }
                self.state.merge(window, &set);
                release(set, worker, &self.returns);
            }
        }

        if let Some(wm) = self.watermarks.get_mut(worker) {
            *wm = Some(wm.map_or(window, |w| w.max(window)));
        }
        if last && let Some(d) = self.done.get_mut(worker) {
            *d = true;
        }
    }

    /// Closes every window that is complete or past its grace deadline at `now_ms`, in order,
    /// and returns the batches. For a merger with followers the batches hold only shard 0's
    /// keys; the engine joins the parts with the collector instead (see the module docs).
    pub fn poll(&mut self, now_ms: u64) -> Vec<WindowBatch> {
        self.poll_parts(now_ms)
            .into_iter()
            .filter_map(|p| assemble(vec![p]))
            .collect()
    }

    /// Closes every pending window regardless of completeness (shutdown). As [`Merger::poll`].
    pub fn flush(&mut self) -> Vec<WindowBatch> {
        self.flush_parts()
            .into_iter()
            .filter_map(|p| assemble(vec![p]))
            .collect()
    }

    /// [`Merger::poll`], giving shard 0's part of each window.
    pub(crate) fn poll_parts(&mut self, now_ms: u64) -> Vec<Part> {
        let min_wm = self.min_watermark();
        let mut out = Vec::new();
        while let Some((&w, _)) = self.state.pending.first_key_value() {
            let complete = min_wm.is_some_and(|m| m >= w);
            let deadline = (w + 1).saturating_mul(1000).saturating_add(self.grace_ms);
            if !complete && now_ms < deadline {
                break;
            }
            if !complete {
                self.stats.windows_closed_incomplete += 1;
                debug!(
                    window = w,
                    "window closed at its grace deadline without every worker"
                );
            }
            out.push(self.close(w));
        }
        if let Some(m) = min_wm {
            self.closed_up_to = Some(self.closed_up_to.map_or(m, |c| c.max(m)));
        }
        out
    }

    /// [`Merger::flush`], giving shard 0's part of each window.
    pub(crate) fn flush_parts(&mut self) -> Vec<Part> {
        let mut out = Vec::new();
        while let Some((&w, _)) = self.state.pending.first_key_value() {
            out.push(self.close(w));
        }
        out
    }

    /// True once every worker has sent its last share.
    pub fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// The counters as of now: the workers', the window bookkeeping and shard 0's merge and
    /// Z-score counts (sink counters are filled in by the caller, the other shards' counts are
    /// added by [`combine`]).
    pub fn snapshot(&self) -> CountersSnapshot {
        let mut s = CountersSnapshot {
            last_window: self.stats.last_window,
            workers: WorkerTotals::from(&self.totals),
            decode_errors: errors_by_kind(&self.totals.decode_errors),
            decode_errors_by_exporter: self.exporter_errors.rows(),
            windows_closed: self.stats.windows_closed,
            windows_closed_incomplete: self.stats.windows_closed_incomplete,
            late_shares: self.stats.late_shares,
            late_records: self.stats.late_records,
            interfaces_untracked: self.interfaces.untracked(),
            ..CountersSnapshot::default()
        };
        self.state.add_counts(&mut s);
        s
    }

    /// Lowest watermark over the workers still running; `None` while some worker has not
    /// reported any window yet. Done workers do not hold windows back.
    fn min_watermark(&self) -> Option<u64> {
        let mut min: Option<u64> = None;
        for (wm, done) in self.watermarks.iter().zip(&self.done) {
            if *done {
                continue;
            }
            let wm = (*wm)?;
            min = Some(min.map_or(wm, |m| m.min(wm)));
        }
        // Every worker done: everything pending is complete.
        Some(min.unwrap_or(u64::MAX))
    }

    fn close(&mut self, w: u64) -> Part {
        for f in &self.followers {
            let _ = f.send(FollowerMsg::Close(w));
        }
        self.stats.windows_closed += 1;
        self.stats.last_window = w;
        self.closed_up_to = Some(self.closed_up_to.map_or(w, |c| c.max(w)));
        let mut part = self.state.close(w);
        // Counter samples are not sharded: shard 0 carries all of them.
        part.counters = std::mem::take(&mut self.counters_out);
        part
    }
}

/// What shard 0 sends the other shards, in order.
#[derive(Debug)]
pub(crate) enum FollowerMsg {
    /// Merge this worker's share of `window` (the shard's keys of it).
    Merge {
        worker: usize,
        window: u64,
        set: Arc<TableSet>,
    },
    /// Close `window` and send its part to the collector.
    Close(u64),
}

/// A shard other than 0: merges and scores its keys as shard 0 tells it.
#[derive(Debug)]
pub(crate) struct Follower {
    state: ShardState,
    returns: Vec<Sender<TableSet>>,
}

impl Follower {
    /// Handles one message; a close gives the shard's part of the window.
    pub(crate) fn on_msg(&mut self, msg: FollowerMsg) -> Option<Part> {
        match msg {
            FollowerMsg::Merge {
                worker,
                window,
                set,
            } => {
                self.state.merge(window, &set);
                release(set, worker, &self.returns);
                None
            }
            FollowerMsg::Close(w) => Some(self.state.close(w)),
        }
    }

    /// The shard's merge and Z-score counts.
    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        let mut s = CountersSnapshot::default();
        self.state.add_counts(&mut s);
        s
    }
}

/// One shard's part of one closed window.
#[derive(Debug)]
pub(crate) struct Part {
    window: u64,
    dimensions: Vec<DimensionWindow>,
    alerts: Vec<Alert>,
    /// Interface counter samples (shard 0 only).
    counters: Vec<InterfaceCounters>,
}

/// Wall-clock now in Unix milliseconds (0 if the clock is before 1970).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Joins the shards' parts of one window (in shard order, all of the same window) into the
/// batch for the sinks; `None` when there is no part.
pub(crate) fn assemble(parts: Vec<Part>) -> Option<WindowBatch> {
    let several = parts.len() > 1;
    let mut parts = parts.into_iter();
    let first = parts.next()?;
    let mut batch = WindowBatch {
        window_start: first.window,
        closed_unix_ms: unix_ms_now(),
        dimensions: first.dimensions,
        alerts: first.alerts,
        counters: first.counters,
    };
    for p in parts {
        for (dw, pw) in batch.dimensions.iter_mut().zip(p.dimensions) {
            dw.entries.extend(pw.entries);
            dw.overflow.add(&pw.overflow);
        }
        batch.alerts.extend(p.alerts);
        batch.counters.extend(p.counters);
    }
    if several {
        // Each part is sorted: the stable sort finds the runs and merges them.
        for dw in &mut batch.dimensions {
            dw.entries.sort_by(entry_order);
        }
        batch.alerts.sort_by(alert_order);
    }
    for a in batch.alerts.iter().take(ALERTS_LOGGED_PER_WINDOW) {
        info!(
            dimension = %a.dimension, key = %a.key, window = batch.window_start,
            bytes = a.value, mean = a.mean, stddev = a.stddev, score = a.score, "Z-score alert"
        );
    }
    Some(batch)
}

/// Adds the merge and Z-score counts of the other shards' snapshots to shard 0's (the first).
pub(crate) fn combine(shards: &[CountersSnapshot]) -> CountersSnapshot {
    let mut out = shards.first().cloned().unwrap_or_default();
    for s in shards.iter().skip(1) {
        out.keys_emitted += s.keys_emitted;
        out.merge_overflow += s.merge_overflow;
        out.alerts += s.alerts;
        out.zscore_keys += s.zscore_keys;
        out.zscore_keys_untracked += s.zscore_keys_untracked;
    }
    out
}

/// The merge and score state of one shard.
#[derive(Debug)]
struct ShardState {
    shard: usize,
    shards: usize,
    dims: Arc<[Dimension]>,
    merged_capacity: usize,
    threshold: f64,

    pending: BTreeMap<u64, Vec<Table>>,
    pool: Vec<Vec<Table>>,
    zscore: ZScore,

    keys_emitted: u64,
    merge_overflow: u64,
    alerts: u64,
}

impl ShardState {
    fn new(cfg: &MergerConfig, dims: Arc<[Dimension]>, shard: usize) -> Self {
        let shards = cfg.shards.max(1);
        // One shard: room for every worker table full at once. Several: twice the even split
        // (see the module docs).
        let slots = cfg.table_capacity.saturating_mul(cfg.workers.max(1));
        let slots = if shards == 1 {
            slots
        } else {
            slots.saturating_mul(2).div_ceil(shards)
        };
        let merged_capacity = slots
            .checked_next_power_of_two()
            .unwrap_or(1 << 30)
            .clamp(16, 1 << 30);
        Self {
            shard,
            shards,
            dims,
            merged_capacity,
            threshold: cfg.zscore_threshold,
            pending: BTreeMap::new(),
            pool: Vec::new(),
            zscore: ZScore::new(
                cfg.zscore_windows,
                cfg.zscore_threshold,
                cfg.zscore_min_windows,
                cfg.zscore_max_keys.div_ceil(shards),
            ),
            keys_emitted: 0,
            merge_overflow: 0,
            alerts: 0,
        }
    }

    fn merge(&mut self, window: u64, set: &TableSet) {
        let (shard, shards) = (self.shard, self.shards);
        let tables = self.tables(window);
        let mut spilled = 0;
        for (merged, t) in tables.iter_mut().zip(&set.tables) {
            spilled += merged.merge_shard_from(t, shard, shards, shard == 0);
        }
        self.merge_overflow += spilled;
    }

    /// The merged tables of `window`, created (from the pool when it has a set) if needed.
    fn tables(&mut self, window: u64) -> &mut Vec<Table> {
        let Self {
            pending,
            pool,
            dims,
            merged_capacity,
            ..
        } = self;
        pending.entry(window).or_insert_with(|| {
            pool.pop().unwrap_or_else(|| {
                dims.iter()
                    .map(|d| Table::new(*merged_capacity, d.key_len()))
                    .collect()
            })
        })
    }

    /// Renders, scores and sorts the shard's keys of `w`. A window the shard has no tables for
    /// (none of its shares reached it) gives empty dimensions, so that every shard has a part
    /// of every closed window.
    fn close(&mut self, w: u64) -> Part {
        self.tables(w);
        let mut tables = self.pending.remove(&w).unwrap_or_default();
        self.zscore.begin_window(w);

        // Render every key and queue its bytes for the Z-score; remember which (dimension,
        // entry) each observation was, then score the whole window in one pass.
        let mut dimensions = Vec::with_capacity(self.dims.len());
        let mut observed: Vec<(u16, u32)> = Vec::new();
        for (i, (dim, table)) in self.dims.iter().zip(tables.iter_mut()).enumerate() {
            let mut entries = Vec::with_capacity(table.len());
            for (k, t) in table.iter() {
                let (key, fields) = dim.render(k);
                if self.zscore.observe(i as u16, k, t.bytes as f64).is_some() {
                    observed.push((i as u16, entries.len() as u32));
                }
                entries.push(AggEntry {
                    key,
                    fields,
                    totals: *t,
                });
            }
            dimensions.push(DimensionWindow {
                dimension: dim.name().clone(),
                entries,
                overflow: *table.overflow(),
            });
            table.clear();
        }
        let mut scored = Vec::new();
        self.zscore.score_window(&mut scored);
        let mut alerts: Vec<Alert> = scored
            .into_iter()
            .filter_map(|(at, s)| {
                let &(d, e) = observed.get(at)?;
                let dw = dimensions.get(usize::from(d))?;
                let entry = dw.entries.get(e as usize)?;
                Some(Alert {
                    dimension: dw.dimension.clone(),
                    key: entry.key.clone(),
                    window_start: w,
                    value: s.value,
                    mean: s.mean,
                    stddev: s.stddev,
                    score: s.score,
                    threshold: self.threshold,
                })
            })
            .collect();
        for dw in &mut dimensions {
            dw.entries.sort_by(entry_order);
            self.keys_emitted += dw.entries.len() as u64;
        }
        self.pool.push(tables);

        alerts.sort_by(alert_order);
        self.alerts += alerts.len() as u64;
        Part {
            window: w,
            dimensions,
            alerts,
            counters: Vec::new(),
        }
    }

    fn add_counts(&self, s: &mut CountersSnapshot) {
        s.keys_emitted += self.keys_emitted;
        s.merge_overflow += self.merge_overflow;
        s.alerts += self.alerts;
        s.zscore_keys += self.zscore.tracked() as u64;
        s.zscore_keys_untracked += self.zscore.untracked();
    }
}

/// Largest scaled bytes first, ties by key text.
fn entry_order(a: &AggEntry, b: &AggEntry) -> std::cmp::Ordering {
    b.totals
        .bytes
        .cmp(&a.totals.bytes)
        .then_with(|| a.key.cmp(&b.key))
}

/// Highest score first, ties by dimension and key.
fn alert_order(a: &Alert, b: &Alert) -> std::cmp::Ordering {
    b.score
        .total_cmp(&a.score)
        .then_with(|| a.dimension.cmp(&b.dimension))
        .then_with(|| a.key.cmp(&b.key))
}

/// Drops one shard's hold on a worker's table set; the last holder clears it and sends it back
/// to the worker.
fn release(set: Arc<TableSet>, worker: usize, returns: &[Sender<TableSet>]) {
    let Some(mut set) = Arc::into_inner(set) else {
        return;
    };
    set.clear();
    if let Some(tx) = returns.get(worker) {
        // A worker that has stopped no longer needs spares.
        let _ = tx.send(set);
    }
}

/// Where shard 0 sends what it closes.
#[derive(Debug)]
pub(crate) enum Output {
    /// One shard: straight to the sink drivers.
    Sinks,
    /// Several: its parts to the collector.
    Collector(Sender<Part>),
}

/// The merger thread (shard 0): takes shares, closes windows, hands them on (see [`Output`]),
/// publishes its counters once per window into `shared[0]` and logs the summary of all shards
/// every `stats_interval`. Returns after every worker has sent its last share (or all workers
/// are gone), once the last windows have been handed on; dropping `m` then lets the followers
/// finish.
pub(crate) fn run_merger(
    mut m: Merger,
    rx: Receiver<WindowShare>,
    out: Output,
    sinks: Vec<SinkHandle>,
    shared: Arc<Mutex<Vec<CountersSnapshot>>>,
    stats_interval: Duration,
) {
    let emit = |parts: Vec<Part>| match &out {
        Output::Sinks => dispatch(&sinks, parts.into_iter().filter_map(|p| assemble(vec![p]))),
        Output::Collector(tx) => {
            for p in parts {
                // The collector is gone only when a shard died; the engine reports that.
                let _ = tx.send(p);
            }
        }
    };
    let mut next_stats = Instant::now() + stats_interval;
    loop {
        match rx.recv_timeout(TICK) {
            Ok(share) => m.on_share(share),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(share) = rx.try_recv() {
            m.on_share(share);
        }
        if m.all_done() {
            break;
        }

        let parts = m.poll_parts(unix_ms());
        let closed = !parts.is_empty();
        emit(parts);
        if closed || Instant::now() >= next_stats {
            publish(0, m.snapshot(), &shared);
        }
        if Instant::now() >= next_stats {
            next_stats = Instant::now() + stats_interval;
            info!("{}", summary(&shared, &sinks));
        }
    }

    emit(m.flush_parts());
    publish(0, m.snapshot(), &shared);
    info!(
        "Merged the last window (the sinks may still be writing; the Stopped line has the final counts): {}",
        summary(&shared, &sinks)
    );
    // Dropping the handles disconnects the drivers once they have drained their queues;
    // dropping `m` disconnects the followers.
}

/// A follower shard's thread: merges and closes as shard 0 says, sends its parts to the
/// collector and publishes its counts into `shared[shard]`. Returns when shard 0 is gone.
pub(crate) fn run_follower(
    mut f: Follower,
    shard: usize,
    rx: Receiver<FollowerMsg>,
    out: Sender<Part>,
    shared: Arc<Mutex<Vec<CountersSnapshot>>>,
) {
    while let Ok(msg) = rx.recv() {
        if let Some(part) = f.on_msg(msg) {
            let _ = out.send(part);
            publish(shard, f.snapshot(), &shared);
        }
    }
    publish(shard, f.snapshot(), &shared);
}

/// The collector thread: takes one part of each window from every shard, joins them and
/// hands the batch to the sink drivers, in window order. Returns when a shard is gone (after
/// the last window, or when one died).
pub(crate) fn run_collector(parts: Vec<Receiver<Part>>, sinks: Vec<SinkHandle>) {
    loop {
        let mut window = Vec::with_capacity(parts.len());
        for rx in &parts {
            match rx.recv() {
                Ok(p) => window.push(p),
                Err(_) => return,
            }
        }
        // Every shard closes the windows shard 0 closes, in its order (see the module docs).
        if let Some(first) = window.first()
            && let Some(odd) = window.iter().find(|p| p.window != first.window)
        {
            error!(
                window = first.window,
                other = odd.window,
                "merger shards out of step; window dropped (a bug: please report it)"
            );
            continue;
        }
        dispatch(&sinks, assemble(window));
    }
}

fn dispatch(sinks: &[SinkHandle], batches: impl IntoIterator<Item = WindowBatch>) {
    for b in batches {
        let b = Arc::new(b);
        for s in sinks {
            s.dispatch(Arc::clone(&b));
        }
    }
}

fn publish(shard: usize, snap: CountersSnapshot, shared: &Mutex<Vec<CountersSnapshot>>) {
    if let Ok(mut s) = shared.lock()
        && let Some(slot) = s.get_mut(shard)
    {
        *slot = snap;
    }
}

/// The summary line of every shard's counters with the sinks'.
fn summary(shared: &Mutex<Vec<CountersSnapshot>>, sinks: &[SinkHandle]) -> String {
    let mut snap = shared.lock().map(|s| combine(&s)).unwrap_or_default();
    snap.sinks = sinks.iter().map(SinkHandle::snapshot).collect();
    snap.summary()
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How often the merger wakes without shares, to close windows of stalled workers.
const TICK: Duration = Duration::from_millis(50);

/// Alerts logged per window at info (all of them go to the sinks).
const ALERTS_LOGGED_PER_WINDOW: usize = 5;

#[cfg(test)]
mod tests {
    use crossbeam_channel::unbounded;
    use flowplane_decoders::DecoderLimits;

    use super::*;
    use crate::worker::tests::{V5Rec, dims, v5};
    use crate::worker::{MAX_SETS_PER_WORKER, Worker};

    fn cfg(workers: usize) -> MergerConfig {
        MergerConfig {
            workers,
            table_capacity: 64,
            grace_ms: 500,
            zscore_windows: 10,
            zscore_threshold: 3.0,
            zscore_min_windows: 5,
            zscore_max_keys: 64,
            shards: 1,
        }
    }

    struct Rig {
        workers: Vec<Worker>,
        merger: Merger,
        shares: Receiver<WindowShare>,
    }

    fn rig(n: usize, dim_specs: &[&str]) -> Rig {
        let d = dims(dim_specs);
        let (tx, shares) = unbounded();
        let mut returns = Vec::new();
        let mut workers = Vec::new();
        for i in 0..n {
            let (rtx, rrx) = unbounded();
            returns.push(rtx);
            workers.push(Worker::new(
                i,
                d.clone(),
                64,
                true,
                DecoderLimits::default(),
                tx.clone(),
                rrx,
            ));
        }
        let merger = Merger::new(&cfg(n), d, returns);
        Rig {
            workers,
            merger,
            shares,
        }
    }

    impl Rig {
        fn pump(&mut self, now_ms: u64) -> Vec<WindowBatch> {
            while let Ok(s) = self.shares.try_recv() {
                self.merger.on_share(s);
            }
            self.merger.poll(now_ms)
        }
    }

    fn exporter(i: u8) -> std::net::SocketAddr {
        format!("192.0.2.{i}:2055").parse().unwrap()
    }

    #[test]
    fn merges_two_workers_exactly() {
        let mut r = rig(2, &["src_ip", "dst_port+protocol"]);
        let a = v5(
            &[
                ([10, 0, 0, 1], [10, 0, 0, 9], 443, 6, 1_000, 10),
                ([10, 0, 0, 2], [10, 0, 0, 9], 53, 17, 70, 1),
            ],
            0,
        );
        let b = v5(
            &[
                ([10, 0, 0, 1], [10, 0, 0, 9], 443, 6, 500, 5),
                ([10, 0, 0, 3], [10, 0, 0, 9], 443, 6, 3_000, 3),
            ],
            0,
        );
        r.workers[0].on_datagram(exporter(1), 10_100, &a);
        r.workers[1].on_datagram(exporter(2), 10_200, &b);
        r.workers[1].on_datagram(exporter(2), 10_300, &b);

        // Only worker 0 has moved on: window 10 is not complete yet.
        r.workers[0].maybe_rotate(11_000);
        assert!(r.pump(11_010).is_empty());
        r.workers[1].maybe_rotate(11_020);
        let batches = r.pump(11_030);
        assert_eq!(batches.len(), 1);
        let b10 = &batches[0];
        assert_eq!(b10.window_start, 10);

        let src = &b10.dimensions[0];
        assert_eq!(&*src.dimension, "src_ip");
        let got: Vec<_> = src
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.totals.bytes))
            .collect();
        assert_eq!(
            got,
            vec![("10.0.0.3", 6_000), ("10.0.0.1", 2_000), ("10.0.0.2", 70)]
        );
        let e1 = &src.entries[1];
        assert_eq!((e1.totals.packets, e1.totals.flows), (20, 3));

        let port = &b10.dimensions[1];
        let got: Vec<_> = port
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.totals.bytes))
            .collect();
        assert_eq!(got, vec![("443|6", 8_000), ("53|17", 70)]);

        let snap = r.merger.snapshot();
        assert_eq!((snap.workers.records, snap.workers.datagrams), (6, 3));
        assert_eq!(snap.windows_closed, 1);
        assert_eq!(snap.windows_closed_incomplete, 0);
    }

    #[test]
    fn stalled_worker_closes_at_grace_and_late_share_is_counted() {
        let mut r = rig(2, &["protocol"]);
        let dg = v5(&[([10, 0, 0, 1], [10, 0, 0, 9], 443, 6, 1_000, 10)], 0);
        r.workers[0].on_datagram(exporter(1), 20_000, &dg);
        r.workers[1].on_datagram(exporter(2), 20_000, &dg);
        r.workers[0].maybe_rotate(21_000);
        assert!(r.pump(21_499).is_empty(), "within grace");
        let batches = r.pump(21_500);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].dimensions[0].entries[0].totals.bytes, 1_000);

        r.workers[1].maybe_rotate(21_600);
        assert!(r.pump(21_600).is_empty());
        let s = r.merger.snapshot();
        assert_eq!(
            (s.windows_closed_incomplete, s.late_shares, s.late_records),
            (1, 1, 1)
        );
    }

    #[test]
    fn spike_alerts_through_the_merger() {
        let mut r = rig(1, &["src_ip"]);
        let mut alerts = Vec::new();
        for s in 0..12u64 {
            let bytes = if s == 11 {
                50_000
            } else {
                1_000 + 10 * (s as u32 % 3)
            };
            let dg = v5(&[([10, 0, 0, 1], [10, 0, 0, 9], 443, 6, bytes, 1)], 0);
            r.workers[0].on_datagram(exporter(1), s * 1_000 + 5, &dg);
            r.workers[0].maybe_rotate((s + 1) * 1_000);
            for b in r.pump((s + 1) * 1_000 + 1) {
                alerts.extend(b.alerts);
            }
        }
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(
            (a.key.as_str(), a.window_start, a.value),
            ("10.0.0.1", 11, 50_000.0)
        );
        assert!(a.score > 3.0 && (a.mean - 1_010.0).abs() < 10.0, "{a:?}");
        assert_eq!(r.merger.snapshot().alerts, 1);
    }

    #[test]
    fn finish_flushes_the_open_window() {
        let mut r = rig(2, &["dst_port"]);
        let dg = v5(&[([10, 0, 0, 1], [10, 0, 0, 9], 443, 6, 1_234, 1)], 0);
        r.workers[0].on_datagram(exporter(1), 30_100, &dg);
        r.workers[0].finish(30_400);
        r.workers[1].finish(30_400);
        let mut batches = r.pump(30_401);
        assert!(r.merger.all_done());
        batches.extend(r.merger.flush());
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].window_start, 30);
        assert_eq!(batches[0].dimensions[0].entries[0].totals.bytes, 1_234);
    }

    /// Shards 0 to S-1 driven in one thread: shard 0 takes the shares, then each follower
    /// drains its channel, then the parts of each window are joined, as the collector does.
    struct ShardedRig {
        workers: Vec<Worker>,
        shares: Receiver<WindowShare>,
        merger: Merger,
        followers: Vec<(Follower, Receiver<FollowerMsg>)>,
    }

    fn sharded_rig(n: usize, shards: usize, dim_specs: &[&str]) -> ShardedRig {
        let d = dims(dim_specs);
        let (tx, shares) = unbounded();
        let mut returns = Vec::new();
        let mut workers = Vec::new();
        for i in 0..n {
            let (rtx, rrx) = unbounded();
            returns.push(rtx);
            workers.push(Worker::new(
                i,
                d.clone(),
                64,
                true,
                DecoderLimits::default(),
                tx.clone(),
                rrx,
            ));
        }
        let c = MergerConfig {
            shards,
            zscore_max_keys: 10_000,
            ..cfg(n)
        };
        let (merger, followers) = Merger::sharded(&c, d, returns);
        ShardedRig {
            workers,
            shares,
            merger,
            followers,
        }
    }

    impl ShardedRig {
        fn pump(&mut self, now_ms: u64, flush: bool) -> Vec<WindowBatch> {
            while let Ok(s) = self.shares.try_recv() {
                self.merger.on_share(s);
            }
            let first = if flush {
                self.merger.flush_parts()
            } else {
                self.merger.poll_parts(now_ms)
            };
            let mut by_shard = vec![first];
            for (f, rx) in &mut self.followers {
                by_shard.push(rx.try_iter().filter_map(|m| f.on_msg(m)).collect());
            }
            let windows = by_shard[0].len();
            assert!(
                by_shard.iter().all(|p| p.len() == windows),
                "one part per shard"
            );
            let mut iters: Vec<_> = by_shard.into_iter().map(Vec::into_iter).collect();
            (0..windows)
                .filter_map(|_| assemble(iters.iter_mut().filter_map(Iterator::next).collect()))
                .collect()
        }

        fn snapshot(&self) -> CountersSnapshot {
            let mut all = vec![self.merger.snapshot()];
            all.extend(self.followers.iter().map(|(f, _)| f.snapshot()));
            combine(&all)
        }
    }

    /// Twelve seconds of three workers: a steady pool of keys, worker 0's table overflowing
    /// in second 3, worker 2 stalling over seconds 5 and 6 (window 5 closes at its grace
    /// deadline and its share arrives late), and a spike in second 11 that alerts.
    fn scenario(shards: usize) -> (Vec<WindowBatch>, CountersSnapshot, Vec<u64>) {
        let mut r = sharded_rig(
            3,
            shards,
            &["src_ip", "dst_port+protocol", "src_ip+dst_port"],
        );
        let mut out = Vec::new();
        for s in 0..12u64 {
            for w in 0..3usize {
                if w == 2 && s == 6 {
                    continue;
                }
                let recs: Vec<V5Rec> = (0..20u8)
                    .map(|k| {
                        let spike = s == 11 && k % 7 == 0;
                        let bytes = if spike {
                            90_000
                        } else {
                            1_000 + 37 * u32::from(k) + 11 * (s as u32 % 4)
                        };
                        let port = 400 + u16::from(k % 5);
                        ([10, 0, w as u8, k], [10, 9, 9, 9], port, 6, bytes, 2)
                    })
                    .collect();
                let dg = v5(&recs, 0);
                r.workers[w].on_datagram(exporter(w as u8 + 1), s * 1_000 + 30, &dg);
                if w == 0 && s == 3 {
                    let many: Vec<V5Rec> = (0..70u8)
                        .map(|k| ([172, 16, 0, k], [10, 9, 9, 9], 80, 17, 100, 1))
                        .collect();
                    for chunk in many.chunks(30) {
                        r.workers[0].on_datagram(exporter(1), s * 1_000 + 40, &v5(chunk, 0));
                    }
                }
            }
            for w in 0..3usize {
                if w == 2 && (s == 5 || s == 6) {
                    continue;
                }
                r.workers[w].maybe_rotate((s + 1) * 1_000);
            }
            out.extend(r.pump((s + 1) * 1_000 + 5, false));
        }
        for w in &mut r.workers {
            w.finish(12_100);
        }
        out.extend(r.pump(12_101, false));
        assert!(r.merger.all_done());
        out.extend(r.pump(12_101, true));
        let per_shard = std::iter::once(r.merger.snapshot().keys_emitted)
            .chain(r.followers.iter().map(|(f, _)| f.snapshot().keys_emitted))
            .collect();
        (out, r.snapshot(), per_shard)
    }

    #[test]
    fn three_shards_give_the_batches_and_counters_of_one() {
        let (one, one_counters, _) = scenario(1);
        let (three, three_counters, per_shard) = scenario(3);

        // The scenario covers what must survive the split.
        assert_eq!(one.len(), 12);
        assert!(one.iter().any(|b| b.dimensions[0].overflow.bytes > 0));
        assert!(
            one.iter().map(|b| b.alerts.len()).sum::<usize>() >= 3,
            "spike alerts"
        );
        assert_eq!(
            (
                one_counters.late_shares,
                one_counters.windows_closed_incomplete
            ),
            (1, 1)
        );
        assert!(
            per_shard.iter().all(|&k| k > 0),
            "every shard has keys: {per_shard:?}"
        );

        assert_eq!(one.len(), three.len());
        for (a, b) in one.iter().zip(&three) {
            // The close time is the wall clock's, not the data's.
            let b = WindowBatch {
                closed_unix_ms: a.closed_unix_ms,
                ..b.clone()
            };
            assert_eq!(*a, b, "window {}", a.window_start);
        }
        assert_eq!(one_counters, three_counters);
    }

    #[test]
    fn a_set_goes_back_to_its_worker_when_the_last_shard_is_done() {
        // `lagging`: shard 1 only reads its channel at the end, so it holds every set.
        let behind = |lagging: bool| {
            let mut r = sharded_rig(1, 2, &["src_ip"]);
            let dg = v5(&[([10, 0, 0, 1], [10, 0, 0, 9], 443, 6, 1_000, 10)], 0);
            for s in 0..10u64 {
                r.workers[0].on_datagram(exporter(1), s * 1_000, &dg);
                r.workers[0].maybe_rotate((s + 1) * 1_000);
                while let Ok(share) = r.shares.try_recv() {
                    r.merger.on_share(share);
                }
                if !lagging {
                    let (f, rx) = &mut r.followers[0];
                    for m in rx.try_iter() {
                        let _ = f.on_msg(m);
                    }
                }
            }
            r.merger.snapshot().workers.merger_behind_windows
        };
        assert_eq!(behind(false), 0);
        // The worker's own bound applies: its first sets, then every window is discarded.
        assert_eq!(behind(true), 10 - (MAX_SETS_PER_WORKER as u64 - 1));
    }
}
