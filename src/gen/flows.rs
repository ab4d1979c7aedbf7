//! The flows the generator exports: a fixed population of `flows` distinct 5-tuples, and the
//! order in which an exporter reports them (every flow in turn, or Zipf-distributed so that a
//! few heavy hitters dominate, as on a real network).
//!
//! Flow `i` is a pure function of `i`, so two runs (or two exporters) with the same settings
//! export the same keys. The population looks like an enterprise edge: many clients (four flows
//! each), 1,024 servers, sixteen services (TCP, UDP and ICMP), a fraction of the flows over
//! IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use rand_distr::Distribution as _;

use super::wire::Flow;

/// How an exporter picks the next flow to report.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every flow equally often: each pass over the population reports each flow once.
    Uniform,
    /// Flow of rank `k` reported with probability proportional to `1 / k^s`.
    Zipf,
}

/// (destination port, protocol) of the sixteen services. For ICMP the port is
/// `type * 256 + code` (echo request), as flowplane keys it.
const SERVICES: [(u16, u8); 16] = [
    (443, 6),
    (80, 6),
    (53, 17),
    (443, 17),
    (22, 6),
    (25, 6),
    (123, 17),
    (3306, 6),
    (5432, 6),
    (8080, 6),
    (993, 6),
    (853, 6),
    (389, 6),
    (161, 17),
    (179, 6),
    (2048, 1),
];

/// Servers in the population.
const SERVERS: u64 = 1_024;

/// The population of distinct flows.
#[derive(Clone, Debug)]
pub struct FlowSpace {
    flows: u32,
    /// Flows whose hash falls below this (out of 2^16) are IPv6.
    ipv6_below: u64,
}

impl FlowSpace {
    /// `flows` distinct flows (at least 1), `ipv6_share` of them (0 to 1) over IPv6.
    pub fn new(flows: u32, ipv6_share: f64) -> Self {
        Self {
            flows: flows.max(1),
            ipv6_below: (ipv6_share.clamp(0.0, 1.0) * 65_536.0).round() as u64,
        }
    }

    /// Number of distinct flows.
    pub fn len(&self) -> u32 {
        self.flows
    }

    /// Always false: a population has at least one flow.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Flow `i` (taken modulo the population).
    pub fn flow(&self, i: u32) -> Flow {
        let i = i % self.flows;
        let h = mix(u64::from(i));
        let client = i / 4;
        // A client's four flows go to four different servers, so that no two flows share a
        // 5-tuple even where there are no ports (ICMP).
        let server = ((h >> 16) % (SERVERS / 4)) * 4 + u64::from(i % 4);
        let (dst_port, protocol) = SERVICES[((h >> 32) % SERVICES.len() as u64) as usize];
        let ipv6 = (h & 0xffff) < self.ipv6_below;
        let (src, dst) = if ipv6 {
            (
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    1,
                    0,
                    0,
                    0,
                    (client >> 16) as u16,
                    client as u16,
                )),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, server as u16)),
            )
        } else {
            (
                // 10.0.0.0/8 holds 16 M clients; larger populations wrap (and share addresses).
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (client & 0x00ff_ffff))),
                IpAddr::V4(Ipv4Addr::from(0xac10_0000 | server as u32)),
            )
        };
        let packets = 1 + (h >> 48) % 64;
        let octets = packets * (64 + (h >> 20) % 1_400);
        Flow {
            src,
            dst,
            src_port: if protocol == 1 {
                0
            } else {
                32_768 + (i % 28_000) as u16
            },
            dst_port,
            protocol,
            tcp_flags: if protocol == 6 { 0x1b } else { 0 },
            tos: 0,
            input_if: 1 + ((h >> 40) % 8) as u32,
            output_if: 10 + ((h >> 44) % 8) as u32,
            packets,
            octets,
        }
    }

    /// `n` flow indices in the order exporter `exporter` reports them. Uniform: passes over
    /// the whole population, each pass shuffled. Zipf with exponent `s`: independent draws of a
    /// rank, rank `k` being flow `k - 1`. Deterministic for a given exporter.
    pub fn schedule(&self, dist: Distribution, s: f64, exporter: u32, n: usize) -> Vec<u32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0000 + u64::from(exporter));
        match dist {
            Distribution::Uniform => {
                let mut pass: Vec<u32> = (0..self.flows).collect();
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    pass.shuffle(&mut rng);
                    let take = (n - out.len()).min(pass.len());
                    out.extend_from_slice(&pass[..take]);
                }
                out
            }
            Distribution::Zipf => {
                // The exponent is checked by the caller; a population of one is degenerate.
                let zipf = rand_distr::Zipf::new(f64::from(self.flows), s.max(f64::MIN_POSITIVE))
                    .expect("Zipf over at least one flow with a positive exponent");
                (0..n)
                    .map(|_| (zipf.sample(&mut rng) as u32).saturating_sub(1) % self.flows)
                    .collect()
            }
        }
    }
}

/// A 64-bit mixer (SplitMix64's finaliser): spreads consecutive indices over all bits.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn flows_are_distinct_deterministic_and_plausible() {
        let space = FlowSpace::new(100_000, 0.25);
        let keys: HashSet<_> = (0..100_000)
            .map(|i| {
                let f = space.flow(i);
                (f.src, f.dst, f.src_port, f.dst_port, f.protocol)
            })
            .collect();
        assert_eq!(keys.len(), 100_000, "every index is its own 5-tuple");
        assert_eq!(space.flow(7), space.flow(7));
        assert_eq!(space.flow(100_007), space.flow(7), "indices wrap");
        let v6 = (0..100_000)
            .filter(|&i| space.flow(i).src.is_ipv6())
            .count();
        assert!((23_000..27_000).contains(&v6), "{v6} IPv6 flows of 100000");
        for i in 0..1_000 {
            let f = space.flow(i);
            assert!(f.packets >= 1 && f.octets >= 64 * f.packets, "{f:?}");
            assert_eq!(f.src.is_ipv6(), f.dst.is_ipv6());
        }
        assert!((0..1_000).all(|i| FlowSpace::new(1_000, 0.0).flow(i).src.is_ipv4()));
    }

    #[test]
    fn uniform_reports_every_flow_once_per_pass() {
        let space = FlowSpace::new(1_000, 0.0);
        let s = space.schedule(Distribution::Uniform, 1.0, 0, 2_500);
        assert_eq!(s.len(), 2_500);
        let first: HashSet<_> = s[..1_000].iter().collect();
        assert_eq!(first.len(), 1_000);
        assert_ne!(s[..1_000], s[1_000..2_000], "each pass is shuffled anew");
        assert_eq!(s, space.schedule(Distribution::Uniform, 1.0, 0, 2_500));
        assert_ne!(s, space.schedule(Distribution::Uniform, 1.0, 1, 2_500));
    }

    #[test]
    fn zipf_has_heavy_hitters() {
        let space = FlowSpace::new(100_000, 0.0);
        let s = space.schedule(Distribution::Zipf, 1.0, 0, 200_000);
        assert!(s.iter().all(|&i| i < 100_000));
        let top = s.iter().filter(|&&i| i == 0).count();
        // P(rank 1) = 1 / H(100000) ≈ 0.0827 for s = 1.
        assert!((14_000..19_000).contains(&top), "rank 1 drawn {top} times");
        let distinct: HashSet<_> = s.iter().collect();
        assert!(distinct.len() > 20_000, "a long tail: {}", distinct.len());
    }
}
