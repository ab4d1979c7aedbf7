//! The entry point: one [`Decoder`] per worker, holding the template state of every exporter
//! that worker has seen.

use std::net::SocketAddr;

use crate::{DecodeError, FlowFormat, FlowRecord, addr_to_bytes, netflow_v5};

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
    /// Format recognised from the header; `None` when the datagram is too short to carry a
    /// version or the version is not one this decoder handles.
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
        let _ = now_ms;
        self.stats.datagrams += 1;
        let mut result = DatagramResult::default();
        let base = FlowRecord {
            exporter: addr_to_bytes(exporter.ip()),
            exporter_port: exporter.port(),
            sampling_rate: 1,
            ..FlowRecord::default()
        };

        let outcome = match sniff_version(datagram) {
            Err(e) => Err(e),
            Ok(VERSION_V5) => {
                result.format = Some(FlowFormat::NetflowV5);
                netflow_v5::Packet::new_checked(datagram).map(|p| {
                    result.records += netflow_v5::parse(&p, &base, &mut emit);
                })
            }
            // TODO(#2): NetFlow v9 and IPFIX land in the next commit.
            Ok(_) => Err(DecodeError::BadVersion),
        };

        self.stats.records += u64::from(result.records);
        if let Err(e) = outcome {
            self.stats.errors[e.index()] += 1;
            result.error = Some(e);
        }
        result
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

/// NetFlow v5: the 16-bit version field at offset 0.
const VERSION_V5: u16 = 0x0005;

/// Reads the 16-bit version that NetFlow v5, v9 and IPFIX all put at offset 0.
///
/// sFlow v5 puts a 32-bit version there instead (`00 00 00 05`), so its 16-bit reading is 0 and
/// it can never be taken for NetFlow v5 (`00 05`); until the sFlow decoder lands (issue 3) it is
/// refused here as [`DecodeError::BadVersion`].
fn sniff_version(datagram: &[u8]) -> Result<u16, DecodeError> {
    match datagram {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(DecodeError::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter() -> SocketAddr {
        "192.0.2.7:40000".parse().unwrap()
    }

    #[test]
    fn sflow_is_not_taken_for_netflow_v5() {
        let mut d = Decoder::new(DecoderLimits::default());
        // sFlow v5: 32-bit version 5, then an IPv4 agent address.
        let sflow = [0, 0, 0, 5, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let r = d.decode(exporter(), 0, &sflow, |_| panic!("no record expected"));
        assert_eq!(r.error, Some(DecodeError::BadVersion));
        assert_eq!(r.format, None);
        assert_eq!(d.stats().errors[DecodeError::BadVersion.index()], 1);
    }

    #[test]
    fn counts_short_datagrams() {
        let mut d = Decoder::new(DecoderLimits::default());
        let r = d.decode(exporter(), 0, &[0], |_| {});
        assert_eq!(r.error, Some(DecodeError::Truncated));
        let r = d.decode(exporter(), 0, &[0, 5, 0, 1], |_| {});
        assert_eq!(r.format, Some(FlowFormat::NetflowV5));
        assert_eq!(r.error, Some(DecodeError::Truncated));
        assert_eq!(d.stats().datagrams, 2);
        assert_eq!(d.stats().errors[DecodeError::Truncated.index()], 2);
    }

    #[test]
    fn v5_records_carry_the_exporter() {
        let mut dg = vec![0u8; 24 + 48];
        dg[1] = 5;
        dg[3] = 1;
        let mut d = Decoder::new(DecoderLimits::default());
        let mut seen = Vec::new();
        let r = d.decode(exporter(), 0, &dg, |rec| seen.push(*rec));
        assert_eq!((r.records, r.error), (1, None));
        assert_eq!(seen[0].exporter_ip().to_string(), "192.0.2.7");
        assert_eq!(seen[0].exporter_port, 40000);
        assert_eq!(seen[0].sampling_rate, 1);
        assert_eq!(d.stats().records, 1);
    }
}
