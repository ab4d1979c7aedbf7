//! Feeds arbitrary bytes through a `Decoder` and checks its invariants, not just "no panic".
//!
//! Input layout: byte 0 picks one of four exporters (so template state is shared and
//! contested across calls), byte 1 advances the clock (so held data expires), byte 2 says
//! whether `expire` runs, and the rest is split on the marker `FP` into several datagrams fed
//! to the same decoder, so that templates from one datagram meet data in the next.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use flowplane_decoders::{DecodeError, Decoder, DecoderLimits, FlowFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [who, step, expire, rest @ ..] = data else {
        return;
    };
    let limits = DecoderLimits {
        max_exporters: 2,
        max_templates_per_exporter: 8,
        max_templates_total: 12,
        pending_bytes_per_exporter: 2_048,
        pending_bytes_total: 3_072,
        pending_ttl_ms: 500,
    };
    let mut dec = Decoder::new(limits);
    let mut now = 1_700_000_000_000u64;
    let (mut records, mut with_error, mut calls) = (0u64, 0u64, 0u64);

    for (i, dg) in split(rest).enumerate() {
        let port = 2055 + u16::from(who.wrapping_add(i as u8) % 4);
        let exporter = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), port);
        now += u64::from(*step) * 10;
        let pending_before = dec.pending_bytes() as u64;

        let mut emitted = 0u64;
        let r = dec.decode(exporter, now, dg, |rec| {
            emitted += 1;
            assert_eq!(rec.exporter_port, port);
            assert!(rec.sampling_rate >= 1);
            assert!(matches!(rec.ip_version, 0 | 4 | 6));
            assert_ne!(rec.flow_format(), FlowFormat::Unknown);
        });
        calls += 1;
        assert_eq!(u64::from(r.records), emitted);
        // Every record consumes at least one byte of this datagram or of held data.
        assert!(emitted <= dg.len() as u64 + pending_before);
        if r.format == Some(FlowFormat::NetflowV5) {
            assert!(emitted <= 30);
        }
        if r.format.is_none() {
            assert_eq!(emitted, 0);
            assert!(matches!(r.error, Some(DecodeError::Truncated | DecodeError::BadVersion)));
        }
        records += emitted;
        with_error += u64::from(r.error.is_some());

        if expire & 1 == 1 {
            dec.expire(now);
        }
        let s = dec.stats();
        assert!(dec.pending_bytes() <= limits.pending_bytes_total);
        assert!(dec.templates() <= limits.max_templates_total);
        assert_eq!(
            s.sets_held,
            s.held_sets_decoded + s.held_sets_expired + s.held_sets_evicted
                + dec.pending_sets() as u64
        );
    }

    let s = dec.stats();
    assert_eq!(s.datagrams, calls);
    assert_eq!(s.records, records);
    let errors: u64 = s.errors.iter().sum();
    assert!(errors >= with_error);
    assert!(errors - with_error <= s.held_sets_decoded);
});

/// Splits the input on the two-byte marker `FP`.
fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let cur = rest?;
        match cur.windows(2).position(|w| w == b"FP") {
            Some(at) => {
                rest = Some(&cur[at + 2..]);
                Some(&cur[..at])
            }
            None => {
                rest = None;
                Some(cur)
            }
        }
    })
}
