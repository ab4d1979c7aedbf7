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
//! out as [`DimensionWindow::overflow`]. The merged tables are sized for every worker's table
//! being full at once (`next_power_of_two(workers · table_capacity)` slots), so merging cannot
//! overflow; if it did, it would be counted (`merge_overflow`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tracing::{debug, info, warn};

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
    /// Keys with a baseline.
    pub zscore_max_keys: usize,
}

/// Merge and score state. Driven by [`run_merger`], or directly by tests.
#[derive(Debug)]
pub struct Merger {
    dims: Arc<[Dimension]>,
    merged_capacity: usize,
    grace_ms: u64,
    threshold: f64,

    watermarks: Vec<Option<u64>>,
    done: Vec<bool>,
    pending: BTreeMap<u64, Vec<Table>>,
    pool: Vec<Vec<Table>>,
    returns: Vec<Sender<TableSet>>,
    closed_up_to: Option<u64>,
    zscore: ZScore,

    totals: WorkerCounters,
    interfaces: InterfaceRates,
    counters_out: Vec<InterfaceCounters>,
    exporter_errors: ExporterErrorMap,
    stats: MergerStats,
    late_log: RateLimit,
}

#[derive(Clone, Copy, Debug, Default)]
struct MergerStats {
    last_window: u64,
    windows_closed: u64,
    windows_closed_incomplete: u64,
    late_shares: u64,
    late_records: u64,
    keys_emitted: u64,
    merge_overflow: u64,
    alerts: u64,
}

impl Merger {
    /// A merger for `dims`; `returns[i]` sends table sets back to worker `i`.
    pub fn new(cfg: &MergerConfig, dims: Arc<[Dimension]>, returns: Vec<Sender<TableSet>>) -> Self {
        let merged_capacity = cfg
            .table_capacity
            .saturating_mul(cfg.workers.max(1))
            .checked_next_power_of_two()
            .unwrap_or(1 << 30)
            .clamp(16, 1 << 30);
        Self {
            dims,
            merged_capacity,
            grace_ms: cfg.grace_ms,
            threshold: cfg.zscore_threshold,
            watermarks: vec![None; cfg.workers],
            done: vec![false; cfg.workers],
            pending: BTreeMap::new(),
            pool: Vec::new(),
            returns,
            closed_up_to: None,
            zscore: ZScore::new(
                cfg.zscore_windows,
                cfg.zscore_threshold,
                cfg.zscore_min_windows,
                cfg.zscore_max_keys,
            ),
            totals: WorkerCounters::default(),
            interfaces: InterfaceRates::default(),
            counters_out: Vec::new(),
            exporter_errors: ExporterErrorMap::default(),
            stats: MergerStats::default(),
            late_log: RateLimit::new(Duration::from_secs(10)),
        }
    }

    /// Takes one worker's share of a window: merges it (or counts it as late) and sends the
    /// table set back to the worker.
    pub fn on_share(&mut self, share: WindowShare) {
        let WindowShare {
            worker,
            window,
            set,
            counters,
            last,
        } = share;
        self.totals.add(&counters);

        if let Some(mut set) = set {
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
            } else {
                self.merge(window, &set);
            }
            set.clear();
            if let Some(tx) = self.returns.get(worker) {
                // A worker that has stopped no longer needs spares.
                let _ = tx.send(set);
            }
        }

        if let Some(wm) = self.watermarks.get_mut(worker) {
            *wm = Some(wm.map_or(window, |w| w.max(window)));
        }
        if last && let Some(d) = self.done.get_mut(worker) {
            *d = true;
        }
    }

    /// Closes every window that is complete or past its grace deadline at `now_ms`, in order.
    pub fn poll(&mut self, now_ms: u64) -> Vec<WindowBatch> {
        let min_wm = self.min_watermark();
        let mut out = Vec::new();
        while let Some((&w, _)) = self.pending.first_key_value() {
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
            if let Some(b) = self.close(w) {
                out.push(b);
            }
        }
        if let Some(m) = min_wm {
            self.closed_up_to = Some(self.closed_up_to.map_or(m, |c| c.max(m)));
        }
        out
    }

    /// Closes every pending window regardless of completeness (shutdown).
    pub fn flush(&mut self) -> Vec<WindowBatch> {
        let mut out = Vec::new();
        while let Some((&w, _)) = self.pending.first_key_value() {
            if let Some(b) = self.close(w) {
                out.push(b);
            }
        }
        out
    }

    /// True once every worker has sent its last share.
    pub fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// The counters as of now (sink counters are filled in by the caller).
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            last_window: self.stats.last_window,
            workers: WorkerTotals::from(&self.totals),
            decode_errors: errors_by_kind(&self.totals.decode_errors),
            decode_errors_by_exporter: self.exporter_errors.rows(),
            windows_closed: self.stats.windows_closed,
            windows_closed_incomplete: self.stats.windows_closed_incomplete,
            late_shares: self.stats.late_shares,
            late_records: self.stats.late_records,
            keys_emitted: self.stats.keys_emitted,
            merge_overflow: self.stats.merge_overflow,
            alerts: self.stats.alerts,
            zscore_keys: self.zscore.tracked() as u64,
            zscore_keys_untracked: self.zscore.untracked(),
            interfaces_untracked: self.interfaces.untracked(),
            sinks: Vec::new(),
        }
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

    fn merge(&mut self, window: u64, set: &TableSet) {
        let tables = match self.pending.entry(window) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let fresh = self.pool.pop().unwrap_or_else(|| {
                    self.dims
                        .iter()
                        .map(|d| Table::new(self.merged_capacity, d.key_len()))
                        .collect()
                });
                e.insert(fresh)
            }
        };
        for (merged, t) in tables.iter_mut().zip(&set.tables) {
            self.stats.merge_overflow += merged.merge_from(t);
        }
    }

    fn close(&mut self, w: u64) -> Option<WindowBatch> {
        let mut tables = self.pending.remove(&w)?;
        self.zscore.begin_window(w);
        self.stats.windows_closed += 1;
        self.stats.last_window = w;
        self.closed_up_to = Some(self.closed_up_to.map_or(w, |c| c.max(w)));

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
            dw.entries.sort_by(|a, b| {
                b.totals
                    .bytes
                    .cmp(&a.totals.bytes)
                    .then_with(|| a.key.cmp(&b.key))
            });
            self.stats.keys_emitted += dw.entries.len() as u64;
        }
        self.pool.push(tables);

        alerts.sort_by(|a, b| b.score.total_cmp(&a.score));
        self.stats.alerts += alerts.len() as u64;
        for a in alerts.iter().take(ALERTS_LOGGED_PER_WINDOW) {
            info!(
                dimension = %a.dimension, key = %a.key, window = w, bytes = a.value,
                mean = a.mean, stddev = a.stddev, score = a.score, "Z-score alert"
            );
        }
        Some(WindowBatch {
            window_start: w,
            dimensions,
            alerts,
            counters: std::mem::take(&mut self.counters_out),
        })
    }
}

/// The merger thread: takes shares, closes windows, feeds the sink drivers, publishes the
/// counters once per window and logs the summary every `stats_interval`. Returns after every
/// worker has sent its last share (or all workers are gone), once the last windows have been
/// handed to the sinks.
pub(crate) fn run_merger(
    mut m: Merger,
    rx: Receiver<WindowShare>,
    sinks: Vec<SinkHandle>,
    shared: Arc<Mutex<CountersSnapshot>>,
    stats_interval: Duration,
) {
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

        let batches = m.poll(unix_ms());
        let closed = !batches.is_empty();
        dispatch(&sinks, batches);
        if closed || Instant::now() >= next_stats {
            publish(&m, &sinks, &shared);
        }
        if Instant::now() >= next_stats {
            next_stats = Instant::now() + stats_interval;
            if let Ok(s) = shared.lock() {
                info!("{}", s.summary());
            }
        }
    }

    let batches = m.flush();
    dispatch(&sinks, batches);
    publish(&m, &sinks, &shared);
    if let Ok(s) = shared.lock() {
        info!("final: {}", s.summary());
    }
    // Dropping the handles disconnects the drivers once they have drained their queues.
}

fn dispatch(sinks: &[SinkHandle], batches: Vec<WindowBatch>) {
    for b in batches {
        let b = Arc::new(b);
        for s in sinks {
            s.dispatch(Arc::clone(&b));
        }
    }
}

fn publish(m: &Merger, sinks: &[SinkHandle], shared: &Mutex<CountersSnapshot>) {
    let mut snap = m.snapshot();
    snap.sinks = sinks.iter().map(SinkHandle::snapshot).collect();
    if let Ok(mut s) = shared.lock() {
        *s = snap;
    }
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
    use crate::worker::Worker;
    use crate::worker::tests::{dims, v5};

    fn cfg(workers: usize) -> MergerConfig {
        MergerConfig {
            workers,
            table_capacity: 64,
            grace_ms: 500,
            zscore_windows: 10,
            zscore_threshold: 3.0,
            zscore_min_windows: 5,
            zscore_max_keys: 64,
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
}
