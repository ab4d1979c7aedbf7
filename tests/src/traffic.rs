//! Ordinary traffic for the exporters to meter: a pcap of UDP flows over IPv4 and IPv6 with
//! known per-flow packet counts and sizes, so that a test knows what every exporter should
//! report before it reports it.
//!
//! Flows are spread over several sources, destinations and destination ports, with packet sizes
//! that differ per flow, and interleaved in time (round robin over the flows, 1 ms apart), as a
//! link carrying many conversations at once would show them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::Result;

use crate::pcap_out::{UdpOut, write_udp_pcap};

/// One generated flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Packets in the flow.
    pub packets: u64,
    /// UDP payload bytes of each packet.
    pub payload: usize,
}

impl Flow {
    /// IP bytes of one packet (what NetFlow counts as octets): IP header + UDP header + payload.
    pub fn packet_ip_bytes(&self) -> u64 {
        let ip = if self.src.is_ipv4() { 20 } else { 40 };
        (ip + 8 + self.payload) as u64
    }

    /// IP bytes of the whole flow.
    pub fn ip_bytes(&self) -> u64 {
        self.packets * self.packet_ip_bytes()
    }
}

/// The traffic of a pcap written by [`write`].
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// Every flow.
    pub flows: Vec<Flow>,
}

impl Traffic {
    /// `n4` IPv4 flows and `n6` IPv6 flows, deterministic for given counts.
    pub fn new(n4: usize, n6: usize) -> Self {
        let mut flows = Vec::with_capacity(n4 + n6);
        for i in 0..n4 + n6 {
            let v6 = i >= n4;
            let j = i as u16;
            let (src, dst) = if v6 {
                (
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1 + j % 7)),
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 1 + j % 3)),
                )
            } else {
                (
                    IpAddr::V4(Ipv4Addr::new(10, 1, (j / 250) as u8, 1 + (j % 11) as u8)),
                    IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1 + (j % 5) as u8)),
                )
            };
            let dst_port = DST_PORTS[i % DST_PORTS.len()];
            flows.push(Flow {
                src: SocketAddr::new(src, 20_000 + j),
                dst: SocketAddr::new(dst, dst_port),
                packets: 1 + (i as u64 * 7) % 23,
                payload: 20 + (i * 97) % 1_200,
            });
        }
        Self { flows }
    }

    /// Only the IPv4 flows (what a NetFlow v5 exporter can report).
    pub fn ipv4_only(&self) -> Self {
        Self {
            flows: self
                .flows
                .iter()
                .filter(|f| f.src.is_ipv4())
                .cloned()
                .collect(),
        }
    }

    /// Total IP bytes and packets.
    pub fn totals(&self) -> (u64, u64) {
        self.flows
            .iter()
            .fold((0, 0), |(b, p), f| (b + f.ip_bytes(), p + f.packets))
    }

    /// IP bytes and packets per destination port.
    pub fn by_dst_port(&self) -> BTreeMap<u16, (u64, u64)> {
        let mut m = BTreeMap::new();
        for f in &self.flows {
            let e: &mut (u64, u64) = m.entry(f.dst.port()).or_default();
            e.0 += f.ip_bytes();
            e.1 += f.packets;
        }
        m
    }

    /// IP bytes and packets per source address.
    pub fn by_src_ip(&self) -> BTreeMap<IpAddr, (u64, u64)> {
        let mut m = BTreeMap::new();
        for f in &self.flows {
            let e: &mut (u64, u64) = m.entry(f.src.ip()).or_default();
            e.0 += f.ip_bytes();
            e.1 += f.packets;
        }
        m
    }
}

/// Writes the traffic as an Ethernet pcap starting at `start_ms`, packets interleaved.
///
/// # Errors
///
/// I/O errors.
pub fn write(path: &Path, t: &Traffic, start_ms: u64) -> Result<()> {
    let payloads: Vec<Vec<u8>> = t
        .flows
        .iter()
        .enumerate()
        .map(|(i, f)| vec![(i % 251) as u8; f.payload])
        .collect();
    let max = t.flows.iter().map(|f| f.packets).max().unwrap_or(0);
    let mut out = Vec::new();
    let mut ts = start_ms;
    for round in 0..max {
        for (f, p) in t.flows.iter().zip(&payloads) {
            if round < f.packets {
                out.push(UdpOut {
                    ts_ms: ts,
                    src: f.src,
                    dst: f.dst,
                    payload: p,
                });
                ts += 1;
            }
        }
    }
    write_udp_pcap(path, out)
}

/// Destination ports the flows use (a few well-known services and one high port).
const DST_PORTS: [u16; 6] = [53, 123, 443, 514, 5353, 33_434];
