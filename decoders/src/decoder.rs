//! The entry point: one [`Decoder`] per worker, holding the template state of every exporter
//! that worker has seen.

use std::net::SocketAddr;

use crate::{DecodeError, FlowFormat, FlowRecord};

/// Bounds on decoder memory. Every bound, when hit, is counted in [`DecodeStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Exporters (address, port) tracked at once; datagrams from further exporters that need
    /// template state are refused and counted.
    pub max_exporters: usize,
    /// Templates kept per exporter (all domains together).
    pub max_templates_per_exporter: usize,
    /// Templates kept in total.
    pub max_templates_total: usize,
    /// Bytes of data sets held per exporter while their template is missing.
    pub pending_bytes_per_exporter: usize,
    /// Bytes of data sets held in total while their template is missing.
    pub pending_bytes_total: usize,
    /// How long a data set waits for its template before it is dropped and counted.
    pub pending_ttl_ms: u64,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_exporters: 4_096,
            max_templates_per_exporter: 1_024,
            max_templates_total: 65_536,
            pending_bytes_per_exporter: 256 * 1024,
            pending_bytes_total: 16 * 1024 * 1024,
            pending_ttl_ms: 10_000,
        }
    }
}

/// What one call to [`Decoder::decode`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramResult {
    /// Format recognised from the header ([`FlowFormat::Unknown`] if none).
    pub format: Option<FlowFormat>,
    /// Records emitted by this call (including held data decoded because its template arrived).
    pub records: u32,
    /// Data sets held because their template has not been seen yet.
    pub sets_held: u32,
    /// Data sets dropped because their template is missing and they could not be held.
    pub sets_without_template: u32,
    /// The error that ended decoding of this datagram, if any. Records before it were emitted.
    pub error: Option<DecodeError>,
}

/// Running totals of one decoder. Monotonic; the engine publishes deltas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Datagrams passed to `decode`.
    pub datagrams: u64,
    /// Records emitted.
    pub records: u64,
    /// Errors by [`DecodeError::index`].
    pub errors: [u64; DecodeError::ALL.len()],
    /// Data sets dropped because their template was missing and could not be held.
    pub sets_without_template: u64,
    /// Data sets held waiting for a template.
    pub sets_held: u64,
    /// Held data sets decoded later, when their template arrived.
    pub held_sets_decoded: u64,
    /// Held data sets dropped because they waited longer than the TTL.
    pub held_sets_expired: u64,
    /// Held data sets dropped because a memory bound was hit.
    pub held_sets_evicted: u64,
    /// Template definitions accepted (new or replacing).
    pub templates_learned: u64,
    /// Templates withdrawn by the exporter.
    pub templates_withdrawn: u64,
    /// Template definitions refused because a bound was hit.
    pub templates_refused: u64,
}

/// Decoder state for many exporters: templates, option-announced sampling rates, held data.
#[derive(Debug)]
pub struct Decoder {
    limits: DecoderLimits,
    stats: DecodeStats,
}

impl Decoder {
    /// A decoder with the given bounds.
    pub fn new(limits: DecoderLimits) -> Self {
        Self {
            limits,
            stats: DecodeStats::default(),
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &DecoderLimits {
        &self.limits
    }

    /// Decodes one datagram received from `exporter` at `now_ms` (Unix milliseconds) and calls
    /// `emit` once per decoded record. Auto-detects NetFlow v5, v9 and IPFIX from the header.
    pub fn decode<F: FnMut(&FlowRecord)>(
        &mut self,
        exporter: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        mut emit: F,
    ) -> DatagramResult {
        // Placeholder so that the engine can build against the API; the real decoders replace
        // this body.
        let _ = (exporter, now_ms, datagram, &mut emit);
        self.stats.datagrams += 1;
        DatagramResult::default()
    }

    /// Drops held data older than the TTL. Call at least once per second.
    pub fn expire(&mut self, now_ms: u64) {
        let _ = now_ms;
    }

    /// Running totals.
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }
}
