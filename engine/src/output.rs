//! What the engine hands to sinks: one [`WindowBatch`] per closed 1-second window, and the
//! [`Sink`] trait that the `sinks` crate implements.
//!
//! The merger builds these off the hot path (once per second), so they use ordinary owned
//! types. Keys are rendered once here so that every sink writes the same key text.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A value of one key field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyValue {
    /// An address field (src_ip, dst_ip, exporter).
    Ip(IpAddr),
    /// A numeric field (ports, protocol, interfaces, AS numbers).
    Num(u64),
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Num(n) => n.fmt(f),
        }
    }
}

/// Byte, packet and flow totals of one key in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Octets, scaled by the sampling rate when scaling is on for the record's format.
    pub bytes: u64,
    /// Packets, scaled likewise.
    pub packets: u64,
    /// Flow records that contributed (never scaled).
    pub flows: u64,
    /// Octets exactly as exported.
    pub raw_bytes: u64,
    /// Packets exactly as exported.
    pub raw_packets: u64,
}

impl Totals {
    /// Adds another set of totals (saturating).
    pub fn add(&mut self, o: &Self) {
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.packets = self.packets.saturating_add(o.packets);
        self.flows = self.flows.saturating_add(o.flows);
        self.raw_bytes = self.raw_bytes.saturating_add(o.raw_bytes);
        self.raw_packets = self.raw_packets.saturating_add(o.raw_packets);
    }
}

/// One key of one dimension in one window.
#[derive(Clone, Debug, PartialEq)]
pub struct AggEntry {
    /// The key as text: field values joined by `|` in the dimension's field order,
    /// e.g. `10.0.0.1|443|6`. This is the Valkey member and the Kafka message key.
    pub key: String,
    /// The same key as (field name, value) pairs, for structured documents.
    pub fields: Vec<(&'static str, KeyValue)>,
    /// The totals.
    pub totals: Totals,
}

/// All keys of one dimension in one window.
#[derive(Clone, Debug, PartialEq)]
pub struct DimensionWindow {
    /// Dimension name: its field names joined by `+`, e.g. `src_ip+dst_port+protocol`.
    pub dimension: Arc<str>,
    /// Every key seen in the window, largest `bytes` first.
    pub entries: Vec<AggEntry>,
    /// Totals of records whose key found no room in a worker's table (counted overflow entry).
    pub overflow: Totals,
}

/// A Z-score alert raised by the merger.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Dimension name.
    pub dimension: Arc<str>,
    /// Key text, as in [`AggEntry::key`].
    pub key: String,
    /// Window start, Unix seconds.
    pub window_start: u64,
    /// Observed bytes in the window.
    pub value: f64,
    /// Baseline mean of the key's per-second bytes.
    pub mean: f64,
    /// Baseline standard deviation.
    pub stddev: f64,
    /// `(value - mean) / max(stddev, 0.05 · mean)` (see `zscore::SIGMA_FLOOR_FRACTION`).
    pub score: f64,
    /// Threshold in force.
    pub threshold: f64,
}

/// One interface counter sample (sFlow generic and Ethernet interface counters) as the agent
/// sent it, with the rates since the same interface's previous sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InterfaceCounters {
    /// The sample: cumulative counters, interface, agent, arrival time.
    pub record: flowplane_decoders::CounterRecord,
    /// Seconds since the previous sample of this interface (by arrival), when there was one.
    pub interval_secs: Option<f64>,
    /// Input bits per second over that interval (`None` without a previous sample, or when the
    /// counter went backwards: a reset or wrap).
    pub in_bps: Option<f64>,
    /// Output bits per second, likewise.
    pub out_bps: Option<f64>,
    /// The larger of the two directions as a fraction of `ifSpeed` (0 to 1; `None` when the
    /// speed is 0 or unknown, or there is no rate).
    pub utilisation: Option<f64>,
}

/// One closed window, as handed to every sink.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WindowBatch {
    /// Window start, Unix seconds (windows are aligned to wall-clock seconds).
    pub window_start: u64,
    /// When the merger closed the window and handed it on, Unix milliseconds (0 when unknown).
    /// Sinks may use it to tell how long a window waited; `flowplane bench` measures the
    /// window-close-to-sink latency from it.
    pub closed_unix_ms: u64,
    /// Per-dimension aggregates.
    pub dimensions: Vec<DimensionWindow>,
    /// Alerts raised for this window.
    pub alerts: Vec<Alert>,
    /// Interface counter samples that arrived since the previous window was handed on (they
    /// are not aggregated: each keeps its own arrival time).
    pub counters: Vec<InterfaceCounters>,
}

/// Why a sink could not take a batch. The engine retries, buffers and counts; the sink only
/// reports.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The backend could not be reached or refused the connection.
    #[error("{sink} unavailable: {reason}")]
    Unavailable {
        /// Sink name.
        sink: &'static str,
        /// What the client library said.
        reason: String,
    },
    /// The backend took the connection but rejected the write.
    #[error("{sink} rejected the batch: {reason}")]
    Rejected {
        /// Sink name.
        sink: &'static str,
        /// What the client library said.
        reason: String,
    },
}

/// A destination for closed windows. Implemented in the `sinks` crate.
///
/// `send` is called from the sink's own thread, never from a worker or the merger; it may
/// block for network I/O. Returning an error makes the engine keep the batch and retry it
/// later (bounded; see `engine::sink_driver`).
pub trait Sink: Send + 'static {
    /// Short fixed name for logs and metrics (`valkey`, `kafka`).
    fn name(&self) -> &'static str;

    /// Writes one window. Must be all-or-error: on `Err` the engine will send the same batch
    /// again, so a partial write must be harmless to repeat or must not happen.
    fn send(&mut self, batch: &WindowBatch) -> Result<(), SinkError>;
}
