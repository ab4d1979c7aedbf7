//! A sink wrapper that counts what reached the real sink: windows, records, keys, documents,
//! and how long after the merger closed a window it was written (visible to a reader).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use flowplane_engine::{Sink, SinkError, WindowBatch};
use hdrhistogram::Histogram;

/// What one sink took during a step.
#[derive(Clone, Debug)]
pub(crate) struct SinkTally {
    pub(crate) name: &'static str,
    /// Windows written.
    pub(crate) windows: u64,
    /// Records in those windows (the first dimension's flows, overflow included).
    pub(crate) records: u64,
    /// Keys written (all dimensions).
    pub(crate) keys: u64,
    /// Documents (Kafka: one per key, alert and counter sample) or key writes (Valkey).
    pub(crate) documents: u64,
    /// Failed sends (the engine retries them).
    pub(crate) failures: u64,
    /// Milliseconds from the merger closing a window to this sink having written it.
    pub(crate) close_to_written_ms: Histogram<u64>,
}

/// Every sink's tally, plus per window when each sink finished with it (for "visible in all
/// sinks").
#[derive(Debug)]
pub(crate) struct Meters {
    pub(crate) sinks: Vec<SinkTally>,
    /// window start -> (closed ms, written ms per sink index).
    pub(crate) written: BTreeMap<u64, (u64, Vec<Option<u64>>)>,
}

pub(crate) type SharedMeters = Arc<Mutex<Meters>>;

impl Meters {
    pub(crate) fn new(names: &[&'static str]) -> SharedMeters {
        Arc::new(Mutex::new(Self {
            sinks: names
                .iter()
                .map(|&name| SinkTally {
                    name,
                    windows: 0,
                    records: 0,
                    keys: 0,
                    documents: 0,
                    failures: 0,
                    close_to_written_ms: latency_histogram(),
                })
                .collect(),
            written: BTreeMap::new(),
        }))
    }

    /// Latency from close until a window was written to every sink, over the windows that
    /// every sink wrote.
    pub(crate) fn all_sinks_latency(&self) -> Histogram<u64> {
        let mut h = latency_histogram();
        for (closed, per_sink) in self.written.values() {
            if per_sink.iter().all(Option::is_some) {
                let last = per_sink.iter().flatten().max().copied().unwrap_or(*closed);
                h.saturating_record(last.saturating_sub(*closed));
            }
        }
        h
    }
}

/// 1 ms to 10 min, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000, 3).expect("valid histogram bounds")
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wraps a real sink; every successful `send` is tallied.
pub(crate) struct Metered {
    inner: Box<dyn Sink>,
    index: usize,
    meters: SharedMeters,
}

impl Metered {
    pub(crate) fn new(inner: Box<dyn Sink>, index: usize, meters: SharedMeters) -> Self {
        Self {
            inner,
            index,
            meters,
        }
    }
}

/// Records a window holds: the first dimension's flows plus its overflow (every dimension sees
/// every record).
pub(crate) fn records_in(batch: &WindowBatch) -> u64 {
    batch.dimensions.first().map_or(0, |d| {
        d.entries.iter().map(|e| e.totals.flows).sum::<u64>() + d.overflow.flows
    })
}

impl Sink for Metered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn send(&mut self, batch: &WindowBatch) -> Result<(), SinkError> {
        let result = self.inner.send(batch);
        let now = unix_ms();
        let mut m = self.meters.lock().unwrap_or_else(PoisonError::into_inner);
        let sinks = m.sinks.len();
        let t = &mut m.sinks[self.index];
        if result.is_err() {
            t.failures += 1;
            return result;
        }
        let keys: u64 = batch
            .dimensions
            .iter()
            .map(|d| d.entries.len() as u64)
            .sum();
        t.windows += 1;
        t.records += records_in(batch);
        t.keys += keys;
        t.documents += keys + batch.alerts.len() as u64 + batch.counters.len() as u64;
        t.close_to_written_ms
            .saturating_record(now.saturating_sub(batch.closed_unix_ms));
        let entry = m
            .written
            .entry(batch.window_start)
            .or_insert_with(|| (batch.closed_unix_ms, vec![None; sinks]));
        entry.1[self.index] = Some(now);
        result
    }
}
