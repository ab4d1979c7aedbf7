//! Writes UDP datagrams into a classic pcap file with Ethernet framing.
//!
//! Used to hand raw datagram dumps (which have no framing) and priming + target sequences to
//! tshark, and to build the ordinary traffic captures the exporters read. Checksums are real
//! (IPv4 header, UDP over IPv4 and IPv6) so that no tool flags the frames as bad.

use std::fs::File;
use std::io::BufWriter;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

/// One UDP datagram to write.
#[derive(Clone, Copy, Debug)]
pub struct UdpOut<'a> {
    /// Capture time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver; must be of the same family as `src`.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: &'a [u8],
}

/// Writes `datagrams` to `path` as an Ethernet pcap (microsecond timestamps).
///
/// # Errors
///
/// I/O errors, mixed address families in one datagram, or a payload too large for UDP.
pub fn write_udp_pcap<'a>(
    path: &Path,
    datagrams: impl IntoIterator<Item = UdpOut<'a>>,
) -> Result<()> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(BufWriter::new(file), header)?;
    for d in datagrams {
        let frame = udp_frame(d.src, d.dst, d.payload)?;
        let ts = Duration::from_millis(d.ts_ms);
        w.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))?;
    }
    Ok(())
}

/// Builds one Ethernet frame holding `payload` in UDP from `src` to `dst`.
///
/// # Errors
///
/// Mixed address families, or a payload that does not fit a UDP datagram.
pub fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    let udp_len = u16::try_from(payload.len() + UDP_HEADER_LEN).context("payload too large")?;
    let mut f = Vec::with_capacity(14 + 40 + usize::from(udp_len));
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);

    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = u16::try_from(20 + usize::from(udp_len)).context("payload too large")?;
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[8] = 64; // TTL
            ip[9] = IPPROTO_UDP;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let sum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ip);

            let pseudo = pseudo_v4(s.octets(), d.octets(), udp_len);
            push_udp(&mut f, src.port(), dst.port(), udp_len, payload, &pseudo);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = 64; // hop limit
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&ip);

            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
            push_udp(&mut f, src.port(), dst.port(), udp_len, payload, &pseudo);
        }
        _ => bail!("mixed address families: {src} -> {dst}"),
    }
    Ok(f)
}

fn pseudo_v4(s: [u8; 4], d: [u8; 4], udp_len: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&s);
    p.extend_from_slice(&d);
    p.extend_from_slice(&[0, IPPROTO_UDP]);
    p.extend_from_slice(&udp_len.to_be_bytes());
    p
}

fn push_udp(f: &mut Vec<u8>, sport: u16, dport: u16, len: u16, payload: &[u8], pseudo: &[u8]) {
    let mut h = [0u8; UDP_HEADER_LEN];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&len.to_be_bytes());
    let mut sum = checksum(&[pseudo, &h, payload]);
    // RFC 768: a computed checksum of zero is sent as all ones.
    if sum == 0 {
        sum = 0xffff;
    }
    h[6..8].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
///
/// Every part but the last must have an even length (true of the headers used here).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const UDP_HEADER_LEN: usize = 8;
const IPPROTO_UDP: u8 = 17;
/// Locally administered MAC addresses (bit 1 of the first octet set).
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = udp_frame(
            "192.0.2.1:40000".parse().unwrap(),
            "192.0.2.2:2055".parse().unwrap(),
            b"abc",
        )
        .unwrap();
        assert_eq!(f.len(), 14 + 20 + 8 + 3);
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(&[&f[14..34]]), 0);
        let pseudo = pseudo_v4([192, 0, 2, 1], [192, 0, 2, 2], 11);
        assert_eq!(checksum(&[&pseudo, &f[34..]]), 0);
    }

    #[test]
    fn refuses_mixed_families() {
        let r = udp_frame(
            "192.0.2.1:1".parse().unwrap(),
            "[2001:db8::1]:2".parse().unwrap(),
            b"",
        );
        assert!(r.is_err());
    }
}
