//! Shared helpers for flowplane's benchmarks: flows over a bounded set of keys, and the export
//! datagrams that carry them, built by the flow generator's encoder
//! ([`flowplane::gen::wire`](flowplane::r#gen::wire)), so that benchmarks need no capture and
//! measure the datagrams the throughput test sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowplane::r#gen::wire::{BUILD_UNIX_SECS, Encoder, Flow, Format, stamp};

/// Exporter index the helpers build for (observation domain / source id 1).
pub const EXPORTER: u32 = 0;

/// Export time the helpers stamp, Unix seconds; decode at `EXPORT_MS`.
pub const EXPORT_SECS: u32 = BUILD_UNIX_SECS;

/// [`EXPORT_SECS`] in milliseconds, the `now_ms` to decode with.
pub const EXPORT_MS: u64 = BUILD_UNIX_SECS as u64 * 1_000;

/// `count` flows of datagram `seed`, over `distinct_keys` keys: flow `i` takes key
/// `(seed * 31 + i) % distinct_keys`, so consecutive datagrams rotate through the keys. Mostly
/// TCP to port 443, every fourth flow UDP to 53; IPv6 (`2001:db8::/32`) when `v6`, else IPv4
/// (`10/8` to `192.0.2/24`).
pub fn flows(seed: u32, count: usize, distinct_keys: u32, v6: bool) -> Vec<Flow> {
    (0..count as u32)
        .map(|i| {
            let k = seed.wrapping_mul(31).wrapping_add(i) % distinct_keys.max(1);
            let (src, dst) = if v6 {
                (
                    IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0,
                        0,
                        0,
                        0,
                        (k >> 16) as u16,
                        k as u16,
                    )),
                    IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        1,
                        0,
                        0,
                        0,
                        0,
                        (k & 0xff) as u16,
                    )),
                )
            } else {
                (
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | k)),
                    IpAddr::V4(Ipv4Addr::from(0xc000_0200 | (k & 0xff))),
                )
            };
            let udp = k % 4 == 3;
            Flow {
                src,
                dst,
                src_port: 1_024 + (k % 60_000) as u16,
                dst_port: if udp { 53 } else { 443 },
                protocol: if udp { 17 } else { 6 },
                tcp_flags: if udp { 0 } else { 0x18 },
                tos: 0,
                input_if: 1,
                output_if: 2,
                packets: 10,
                octets: 1_500 + u64::from(k % 10_000),
            }
        })
        .collect()
}

/// A data datagram of `format` holding [`flows`]`(seed, count, distinct_keys, v6)`, stamped
/// with sequence `seed`, [`EXPORT_SECS`] and one hour of uptime.
///
/// # Panics
///
/// When the encoder refuses the flows (v5 with IPv6 or more than 30): a bench set-up error.
pub fn datagram(format: Format, seed: u32, count: usize, distinct_keys: u32, v6: bool) -> Vec<u8> {
    let mut d = Encoder::new(format, EXPORTER)
        .data(&flows(seed, count, distinct_keys, v6))
        .expect("bench flows fit the format");
    stamp(format, &mut d, seed, EXPORT_SECS, 3_600_000);
    d
}

/// The template datagram of `format` (v9 and IPFIX; `None` for v5 and sFlow).
pub fn template(format: Format) -> Option<Vec<u8>> {
    let mut t = Encoder::new(format, EXPORTER).template()?;
    stamp(format, &mut t, 0, EXPORT_SECS, 3_600_000);
    Some(t)
}
