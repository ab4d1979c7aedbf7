//! Counters for everything the engine receives, refuses or loses.
//!
//! Where each number is counted:
//!
//! * Workers keep plain local [`WorkerCounters`] (no atomics on the hot path) and hand the
//!   window's deltas to the merger together with their tables.
//! * The merger adds them up, adds its own (windows, late shares, alerts, Z-score state) and the
//!   sink drivers' (atomics, one set per sink), and publishes a [`CountersSnapshot`] once per
//!   window. [`crate::run`] returns the last one; the stats logger prints
//!   [`CountersSnapshot::summary`] every `stats_interval_secs`.
//! * Decode errors are also kept per exporter address: the first [`MAX_EXPORTERS`] exporters
//!   that sent a malformed datagram get their own row, later ones add to `other`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use flowplane_decoders::{DecodeError, DecodeStats, SflowStats};
use serde::Serialize;

/// Number of decode error kinds ([`DecodeError::ALL`]).
pub const ERROR_KINDS: usize = DecodeError::ALL.len();

/// Exporters whose decode errors are counted separately; later ones go to `other`.
pub const MAX_EXPORTERS: usize = 1_024;

/// A worker's counters for one window (deltas). Plain integers: only the worker writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Datagrams received.
    pub datagrams: u64,
    /// UDP payload bytes received.
    pub bytes: u64,
    /// Datagrams cut short because they exceeded the receive buffer (MSG_TRUNC); decoded as
    /// truncated.
    pub datagrams_truncated: u64,
    /// Datagrams the kernel dropped on this worker's sockets because their receive queue was
    /// full (`SO_RXQ_OVFL`).
    pub socket_drops: u64,
    /// Failed receive calls (other than "would block").
    pub recv_errors: u64,
    /// Flow records decoded and aggregated.
    pub records: u64,
    /// Datagrams (or the rest of one) refused, by [`DecodeError::index`].
    pub decode_errors: [u64; ERROR_KINDS],
    /// Data sets dropped because their template was unknown and could not be held.
    pub sets_without_template: u64,
    /// Data sets held waiting for their template.
    pub sets_held: u64,
    /// Held data sets decoded when their template arrived.
    pub held_sets_decoded: u64,
    /// Held data sets dropped after waiting too long.
    pub held_sets_expired: u64,
    /// Held data sets dropped because a memory bound was hit.
    pub held_sets_evicted: u64,
    /// Template definitions accepted.
    pub templates_learned: u64,
    /// Templates withdrawn by exporters.
    pub templates_withdrawn: u64,
    /// Template definitions refused because a bound was hit.
    pub templates_refused: u64,
    /// (record, dimension) additions that went to a table's overflow entry (table 7/8 full).
    pub table_overflow: u64,
    /// Windows this worker had to discard because the merger had not returned a spare table
    /// set and the worker's pool was at its bound (see `worker`).
    pub merger_behind_windows: u64,
    /// Records in those discarded windows.
    pub merger_behind_records: u64,
    /// Exporters whose templates were forgotten: silent for 30 minutes, or evicted for a new
    /// exporter when every `max_exporters` slot was taken.
    pub exporters_forgotten: u64,
    /// Interface counter samples (sFlow) handed on to the sinks.
    pub counter_samples: u64,
    /// Counter samples dropped because a worker's per-window bound was reached.
    pub counter_samples_dropped: u64,
    /// sFlow datagrams missing by the agents' sequence numbers (some may arrive late: `sflow_sequence_late`).
    pub sflow_sequence_gaps: u64,
    /// sFlow datagrams that arrived after a later one.
    pub sflow_sequence_late: u64,
    /// Samples the sFlow agents report they lost themselves (their `drops` field).
    pub sflow_agent_drops: u64,
    /// sFlow samples and records of a format flowplane does not read, skipped by length.
    pub sflow_unknown_skipped: u64,
}

impl WorkerCounters {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &Self) {
        self.datagrams += o.datagrams;
        self.bytes += o.bytes;
        self.datagrams_truncated += o.datagrams_truncated;
        self.socket_drops += o.socket_drops;
        self.recv_errors += o.recv_errors;
        self.records += o.records;
        for (a, b) in self.decode_errors.iter_mut().zip(o.decode_errors) {
            *a += b;
        }
        self.sets_without_template += o.sets_without_template;
        self.sets_held += o.sets_held;
        self.held_sets_decoded += o.held_sets_decoded;
        self.held_sets_expired += o.held_sets_expired;
        self.held_sets_evicted += o.held_sets_evicted;
        self.templates_learned += o.templates_learned;
        self.templates_withdrawn += o.templates_withdrawn;
        self.templates_refused += o.templates_refused;
        self.table_overflow += o.table_overflow;
        self.merger_behind_windows += o.merger_behind_windows;
        self.merger_behind_records += o.merger_behind_records;
        self.exporters_forgotten += o.exporters_forgotten;
        self.counter_samples += o.counter_samples;
        self.counter_samples_dropped += o.counter_samples_dropped;
        self.sflow_sequence_gaps += o.sflow_sequence_gaps;
        self.sflow_sequence_late += o.sflow_sequence_late;
        self.sflow_agent_drops += o.sflow_agent_drops;
        self.sflow_unknown_skipped += o.sflow_unknown_skipped;
    }

    /// Copies the decoder's template and held-data counters as the change from `prev` to `now`
    /// (the decoder's totals are monotonic). Records and errors are counted by the worker
    /// itself, per datagram.
    pub fn add_decoder_delta(&mut self, prev: &DecodeStats, now: &DecodeStats) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        self.sets_without_template += d(prev.sets_without_template, now.sets_without_template);
        self.sets_held += d(prev.sets_held, now.sets_held);
        self.held_sets_decoded += d(prev.held_sets_decoded, now.held_sets_decoded);
        self.held_sets_expired += d(prev.held_sets_expired, now.held_sets_expired);
        self.held_sets_evicted += d(prev.held_sets_evicted, now.held_sets_evicted);
        self.templates_learned += d(prev.templates_learned, now.templates_learned);
        self.templates_withdrawn += d(prev.templates_withdrawn, now.templates_withdrawn);
        self.templates_refused += d(prev.templates_refused, now.templates_refused);
        self.exporters_forgotten += d(
            prev.exporters_expired + prev.exporters_evicted,
            now.exporters_expired + now.exporters_evicted,
        );
    }

    /// Copies the decoder's sFlow counters as the change from `prev` to `now`.
    pub fn add_sflow_delta(&mut self, prev: &SflowStats, now: &SflowStats) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        self.sflow_sequence_gaps += d(prev.sequence_gaps, now.sequence_gaps);
        self.sflow_sequence_late += d(prev.sequence_late, now.sequence_late);
        self.sflow_agent_drops += d(prev.samples_dropped, now.samples_dropped);
        self.sflow_unknown_skipped += d(
            prev.unknown_samples + prev.unknown_records,
            now.unknown_samples + now.unknown_records,
        );
    }
}

/// Decode errors of one exporter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExporterErrors {
    /// Exporter address; `None` for the `other` row.
    pub exporter: Option<IpAddr>,
    /// Errors by kind, as (reason label, count), kinds with a count only.
    pub errors: Vec<(&'static str, u64)>,
    /// Sum of `errors`.
    pub total: u64,
}

/// Counters of one sink driver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkCountersSnapshot {
    /// Sink name.
    pub name: &'static str,
    /// Windows the sink accepted.
    pub windows_sent: u64,
    /// Failed `send` calls (each is retried).
    pub send_failures: u64,
    /// Windows dropped: the oldest buffered window when the buffer was full, and what was
    /// still buffered when the shutdown timeout ran out.
    pub windows_dropped: u64,
    /// Windows waiting in the buffer now.
    pub windows_queued: u64,
}

/// Everything counted so far (totals since start).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CountersSnapshot {
    /// Last window closed by the merger (Unix seconds; 0 before the first).
    pub last_window: u64,
    /// Worker-side totals: receive, decode, tables.
    #[serde(flatten)]
    pub workers: WorkerTotals,
    /// Decode errors by kind, as (reason label, count), every kind listed.
    pub decode_errors: Vec<(&'static str, u64)>,
    /// Decode errors by exporter, largest first (at most [`MAX_EXPORTERS`] + the `other` row).
    pub decode_errors_by_exporter: Vec<ExporterErrors>,
    /// Windows closed and handed to the sinks.
    pub windows_closed: u64,
    /// Windows closed at the grace deadline without every worker's share.
    pub windows_closed_incomplete: u64,
    /// Worker shares that arrived after their window was closed (dropped).
    pub late_shares: u64,
    /// Records in those late shares.
    pub late_records: u64,
    /// Keys emitted in windows (all dimensions).
    pub keys_emitted: u64,
    /// Records that went to a dimension's overflow entry in the merged tables.
    pub merge_overflow: u64,
    /// Alerts raised.
    pub alerts: u64,
    /// Keys with a Z-score baseline now.
    pub zscore_keys: u64,
    /// New keys not scored because the baseline store was full.
    pub zscore_keys_untracked: u64,
    /// Interface counter samples that got no rate because the merger already tracked the
    /// maximum number of interfaces.
    pub interfaces_untracked: u64,
    /// Per sink.
    pub sinks: Vec<SinkCountersSnapshot>,
}

/// Worker counters as they appear in a snapshot (the error array is listed by kind in
/// [`CountersSnapshot::decode_errors`] instead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerTotals {
    /// Datagrams received.
    pub datagrams: u64,
    /// UDP payload bytes received.
    pub bytes: u64,
    /// Datagrams larger than the receive buffer.
    pub datagrams_truncated: u64,
    /// Datagrams dropped by the kernel (receive queue full).
    pub socket_drops: u64,
    /// Failed receive calls.
    pub recv_errors: u64,
    /// Records decoded.
    pub records: u64,
    /// Data sets dropped for want of a template.
    pub sets_without_template: u64,
    /// Data sets held waiting for a template.
    pub sets_held: u64,
    /// Held sets decoded later.
    pub held_sets_decoded: u64,
    /// Held sets expired.
    pub held_sets_expired: u64,
    /// Held sets evicted by a memory bound.
    pub held_sets_evicted: u64,
    /// Templates learned.
    pub templates_learned: u64,
    /// Templates withdrawn.
    pub templates_withdrawn: u64,
    /// Templates refused by a bound.
    pub templates_refused: u64,
    /// Record/dimension additions to a worker table's overflow entry.
    pub table_overflow: u64,
    /// Windows discarded by workers because the merger was behind.
    pub merger_behind_windows: u64,
    /// Records in those windows.
    pub merger_behind_records: u64,
    /// Exporters whose templates were forgotten: silent for 30 minutes, or evicted for a new
    /// exporter when every `max_exporters` slot was taken.
    pub exporters_forgotten: u64,
    /// Interface counter samples (sFlow) handed on to the sinks.
    pub counter_samples: u64,
    /// Counter samples dropped because a worker's per-window bound was reached.
    pub counter_samples_dropped: u64,
    /// sFlow datagrams missing by the agents' sequence numbers (some may arrive late: `sflow_sequence_late`).
    pub sflow_sequence_gaps: u64,
    /// sFlow datagrams that arrived after a later one.
    pub sflow_sequence_late: u64,
    /// Samples the sFlow agents report they lost themselves (their `drops` field).
    pub sflow_agent_drops: u64,
    /// sFlow samples and records of a format flowplane does not read, skipped by length.
    pub sflow_unknown_skipped: u64,
}

impl From<&WorkerCounters> for WorkerTotals {
    fn from(w: &WorkerCounters) -> Self {
        Self {
            datagrams: w.datagrams,
            bytes: w.bytes,
            datagrams_truncated: w.datagrams_truncated,
            socket_drops: w.socket_drops,
            recv_errors: w.recv_errors,
            records: w.records,
            sets_without_template: w.sets_without_template,
            sets_held: w.sets_held,
            held_sets_decoded: w.held_sets_decoded,
            held_sets_expired: w.held_sets_expired,
            held_sets_evicted: w.held_sets_evicted,
            templates_learned: w.templates_learned,
            templates_withdrawn: w.templates_withdrawn,
            templates_refused: w.templates_refused,
            table_overflow: w.table_overflow,
            merger_behind_windows: w.merger_behind_windows,
            merger_behind_records: w.merger_behind_records,
            exporters_forgotten: w.exporters_forgotten,
            counter_samples: w.counter_samples,
            counter_samples_dropped: w.counter_samples_dropped,
            sflow_sequence_gaps: w.sflow_sequence_gaps,
            sflow_sequence_late: w.sflow_sequence_late,
            sflow_agent_drops: w.sflow_agent_drops,
            sflow_unknown_skipped: w.sflow_unknown_skipped,
        }
    }
}

impl CountersSnapshot {
    /// Sum of every decode error.
    pub fn decode_errors_total(&self) -> u64 {
        self.decode_errors.iter().map(|(_, n)| n).sum()
    }

    /// The one-line summary the stats logger prints.
    pub fn summary(&self) -> String {
        let w = &self.workers;
        let mut s = format!(
            "rx datagrams={} bytes={} socket_drops={} truncated={} records={} decode_errors={} \
             sets_without_template={} held_expired={} held_evicted={} templates_refused={} \
             exporters_forgotten={} table_overflow={} merger_behind={} \
             counter_samples={} counter_samples_dropped={} sflow_seq_gaps={} sflow_agent_drops={} \
             windows={} incomplete={} late_shares={} alerts={}",
            w.datagrams,
            w.bytes,
            w.socket_drops,
            w.datagrams_truncated,
            w.records,
            self.decode_errors_total(),
            w.sets_without_template,
            w.held_sets_expired,
            w.held_sets_evicted,
            w.templates_refused,
            w.exporters_forgotten,
            w.table_overflow + self.merge_overflow,
            w.merger_behind_windows,
            w.counter_samples,
            w.counter_samples_dropped,
            w.sflow_sequence_gaps.saturating_sub(w.sflow_sequence_late),
            w.sflow_agent_drops,
            self.windows_closed,
            self.windows_closed_incomplete,
            self.late_shares,
            self.alerts,
        );
        // Which errors, when there are any: the reason is what an operator needs first.
        let kinds: Vec<String> = self
            .decode_errors
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}:{n}"))
            .collect();
        if !kinds.is_empty() {
            s.push_str(&format!(" decode_error_kinds={}", kinds.join(",")));
        }
        if let Some(worst) = self.decode_errors_by_exporter.first()
            && worst.total > 0
        {
            let who = worst
                .exporter
                .map_or_else(|| "other".to_owned(), |e| e.to_string());
            s.push_str(&format!(" most_errors_from={who}:{}", worst.total));
        }
        for k in &self.sinks {
            s.push_str(&format!(
                " {}: sent={} failures={} dropped={} queued={}",
                k.name, k.windows_sent, k.send_failures, k.windows_dropped, k.windows_queued
            ));
        }
        s
    }
}

/// A sink driver's counters, shared between its thread and the merger.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Windows accepted by the sink.
    pub windows_sent: AtomicU64,
    /// Failed sends.
    pub send_failures: AtomicU64,
    /// Windows dropped.
    pub windows_dropped: AtomicU64,
}

impl SinkCounters {
    /// Reads the counters (relaxed; each is exact, they are not a consistent cut).
    pub fn snapshot(&self, name: &'static str, queued: usize) -> SinkCountersSnapshot {
        SinkCountersSnapshot {
            name,
            windows_sent: self.windows_sent.load(Ordering::Relaxed),
            send_failures: self.send_failures.load(Ordering::Relaxed),
            windows_dropped: self.windows_dropped.load(Ordering::Relaxed),
            windows_queued: queued as u64,
        }
    }
}

/// Decode errors per exporter, bounded: the merger's side of the accounting.
#[derive(Debug, Default)]
pub(crate) struct ExporterErrorMap {
    map: HashMap<IpAddr, [u64; ERROR_KINDS]>,
    other: [u64; ERROR_KINDS],
}

impl ExporterErrorMap {
    pub(crate) fn add(&mut self, exporter: Option<IpAddr>, errors: &[u64; ERROR_KINDS]) {
        let row = match exporter {
            Some(ip) if self.map.contains_key(&ip) || self.map.len() < MAX_EXPORTERS => {
                self.map.entry(ip).or_default()
            }
            _ => &mut self.other,
        };
        for (a, b) in row.iter_mut().zip(errors) {
            *a += b;
        }
    }

    pub(crate) fn rows(&self) -> Vec<ExporterErrors> {
        let row = |exporter, e: &[u64; ERROR_KINDS]| ExporterErrors {
            exporter,
            errors: DecodeError::ALL
                .iter()
                .filter(|k| e[k.index()] > 0)
                .map(|k| (k.reason(), e[k.index()]))
                .collect(),
            total: e.iter().sum(),
        };
        let mut rows: Vec<_> = self.map.iter().map(|(ip, e)| row(Some(*ip), e)).collect();
        rows.sort_by(|a, b| b.total.cmp(&a.total).then(a.exporter.cmp(&b.exporter)));
        if self.other.iter().any(|&n| n > 0) {
            rows.push(row(None, &self.other));
        }
        rows
    }
}

/// Lists an error array by kind label.
pub(crate) fn errors_by_kind(e: &[u64; ERROR_KINDS]) -> Vec<(&'static str, u64)> {
    DecodeError::ALL
        .iter()
        .map(|k| (k.reason(), e[k.index()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_error_kinds_and_the_worst_exporter() {
        let mut s = CountersSnapshot::default();
        assert!(!s.summary().contains("decode_error_kinds"));
        s.decode_errors = vec![("bad_version", 10), ("truncated", 2), ("bad_count", 0)];
        s.decode_errors_by_exporter = vec![ExporterErrors {
            exporter: Some("192.0.2.9".parse().unwrap()),
            errors: vec![("bad_version", 10)],
            total: 10,
        }];
        let line = s.summary();
        assert!(line.contains("decode_errors=12 "), "{line}");
        assert!(
            line.contains("decode_error_kinds=bad_version:10,truncated:2"),
            "{line}"
        );
        assert!(line.contains("most_errors_from=192.0.2.9:10"), "{line}");
    }

    #[test]
    fn exporter_map_is_bounded() {
        let mut m = ExporterErrorMap::default();
        let mut one = [0u64; ERROR_KINDS];
        one[DecodeError::Truncated.index()] = 1;
        for i in 0..(MAX_EXPORTERS as u32 + 10) {
            m.add(Some(IpAddr::from(i.to_be_bytes())), &one);
        }
        m.add(Some(IpAddr::from([0, 0, 0, 0])), &one);
        let rows = m.rows();
        assert_eq!(rows.len(), MAX_EXPORTERS + 1);
        assert_eq!(rows[0].total, 2);
        let other = rows.last().unwrap();
        assert_eq!(other.exporter, None);
        assert_eq!(other.errors, vec![("truncated", 10)]);
    }
}
