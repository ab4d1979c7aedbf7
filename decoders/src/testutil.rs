//! Builders for test datagrams, following the RFC layouts field by field.

use std::net::SocketAddr;

use crate::{DatagramResult, Decoder, FlowRecord};

/// A set / FlowSet: id, length (header included), body.
pub(crate) fn set(id: u16, body: &[u8]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(&(u16::try_from(body.len() + 4).unwrap()).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A NetFlow v9 datagram.
pub(crate) fn v9(source_id: u32, uptime: u32, secs: u32, count: u16, sets: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![0x00, 0x09];
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(&uptime.to_be_bytes());
    v.extend_from_slice(&secs.to_be_bytes());
    v.extend_from_slice(&7u32.to_be_bytes());
    v.extend_from_slice(&source_id.to_be_bytes());
    sets.iter().for_each(|s| v.extend_from_slice(s));
    v
}

/// An IPFIX message with a correct length field.
pub(crate) fn ipfix(domain: u32, export_secs: u32, sets: &[Vec<u8>]) -> Vec<u8> {
    let len: usize = 16 + sets.iter().map(Vec::len).sum::<usize>();
    let mut v = vec![0x00, 0x0a];
    v.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    v.extend_from_slice(&export_secs.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&domain.to_be_bytes());
    sets.iter().for_each(|s| v.extend_from_slice(s));
    v
}

fn specs(v: &mut Vec<u8>, fields: &[(u16, u16)]) {
    for (id, len) in fields {
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
    }
}

/// A template record (same layout in v9 and IPFIX when no enterprise bit is used).
pub(crate) fn tpl(id: u16, fields: &[(u16, u16)]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(&u16::try_from(fields.len()).unwrap().to_be_bytes());
    specs(&mut v, fields);
    v
}

/// A NetFlow v9 options template record: scope and option lengths are in bytes.
pub(crate) fn v9_opt_tpl(id: u16, scope: &[(u16, u16)], opts: &[(u16, u16)]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(&u16::try_from(scope.len() * 4).unwrap().to_be_bytes());
    v.extend_from_slice(&u16::try_from(opts.len() * 4).unwrap().to_be_bytes());
    specs(&mut v, scope);
    specs(&mut v, opts);
    v
}

/// An IPFIX options template record: field count, then scope field count.
pub(crate) fn ipfix_opt_tpl(id: u16, scope: &[(u16, u16)], opts: &[(u16, u16)]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(
        &u16::try_from(scope.len() + opts.len())
            .unwrap()
            .to_be_bytes(),
    );
    v.extend_from_slice(&u16::try_from(scope.len()).unwrap().to_be_bytes());
    specs(&mut v, scope);
    specs(&mut v, opts);
    v
}

/// Concatenates byte pieces.
pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The default test exporter.
pub(crate) fn exporter() -> SocketAddr {
    "192.0.2.9:2055".parse().unwrap()
}

/// Decodes one datagram and collects the records.
pub(crate) fn run(
    dec: &mut Decoder,
    from: SocketAddr,
    now_ms: u64,
    dg: &[u8],
) -> (DatagramResult, Vec<FlowRecord>) {
    let mut out = Vec::new();
    let r = dec.decode(from, now_ms, dg, |rec| out.push(*rec));
    assert_eq!(r.records as usize, out.len());
    (r, out)
}

/// sFlow v5 builders, following the structures of the sFlow version 5 specification.
pub(crate) mod sflow {
    /// A datagram with an IPv4 (4 bytes) or IPv6 (16 bytes) agent address.
    pub(crate) fn datagram(agent: &[u8], sub_agent: u32, seq: u32, samples: &[Vec<u8>]) -> Vec<u8> {
        let mut v = 5u32.to_be_bytes().to_vec();
        let kind: u32 = if agent.len() == 4 { 1 } else { 2 };
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(agent);
        v.extend_from_slice(&sub_agent.to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&123_456u32.to_be_bytes());
        v.extend_from_slice(&u32::try_from(samples.len()).unwrap().to_be_bytes());
        samples.iter().for_each(|s| v.extend_from_slice(s));
        v
    }

    /// A sample or record: data format, length, data (a multiple of 4 bytes).
    pub(crate) fn entry(format: u32, data: &[u8]) -> Vec<u8> {
        assert_eq!(data.len() % 4, 0, "XDR data is a multiple of 4");
        let mut v = format.to_be_bytes().to_vec();
        v.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    /// Big-endian words.
    pub(crate) fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    /// A compact flow sample (format 1).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn flow_sample(
        seq: u32,
        source: u32,
        rate: u32,
        pool: u32,
        drops: u32,
        input: u32,
        output: u32,
        records: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut d = words(&[seq, source, rate, pool, drops, input, output]);
        d.extend_from_slice(&u32::try_from(records.len()).unwrap().to_be_bytes());
        records.iter().for_each(|r| d.extend_from_slice(r));
        entry(1, &d)
    }

    /// An expanded flow sample (format 3): interfaces as (format, value).
    pub(crate) fn flow_sample_expanded(
        seq: u32,
        source: (u32, u32),
        rate: u32,
        input: (u32, u32),
        output: (u32, u32),
        records: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut d = words(&[
            seq, source.0, source.1, rate, 1_000, 0, input.0, input.1, output.0, output.1,
        ]);
        d.extend_from_slice(&u32::try_from(records.len()).unwrap().to_be_bytes());
        records.iter().for_each(|r| d.extend_from_slice(r));
        entry(3, &d)
    }

    /// A counter sample, compact (format 2) or expanded (format 4).
    pub(crate) fn counter_sample(
        expanded: bool,
        seq: u32,
        source: (u32, u32),
        records: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut d = if expanded {
            words(&[seq, source.0, source.1])
        } else {
            words(&[seq, source.0 << 24 | source.1])
        };
        d.extend_from_slice(&u32::try_from(records.len()).unwrap().to_be_bytes());
        records.iter().for_each(|r| d.extend_from_slice(r));
        entry(if expanded { 4 } else { 2 }, &d)
    }

    /// A raw packet header record (flow record 1), padded as XDR requires.
    pub(crate) fn raw_header(protocol: u32, frame_length: u32, header: &[u8]) -> Vec<u8> {
        let mut d = words(&[
            protocol,
            frame_length,
            4,
            u32::try_from(header.len()).unwrap(),
        ]);
        d.extend_from_slice(header);
        while !d.len().is_multiple_of(4) {
            d.push(0);
        }
        entry(1, &d)
    }

    /// An Ethernet frame: tags as (TPID, TCI), then the EtherType and payload.
    pub(crate) fn eth(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (tpid, tci) in tags {
            v.extend_from_slice(&tpid.to_be_bytes());
            v.extend_from_slice(&tci.to_be_bytes());
        }
        v.extend_from_slice(&ethertype.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// An IPv4 header (with `options` words of options) and payload.
    pub(crate) fn ipv4_pkt(
        protocol: u8,
        src: [u8; 4],
        dst: [u8; 4],
        tos: u8,
        frag: u16,
        options: usize,
        payload: &[u8],
    ) -> Vec<u8> {
        let ihl = 5 + u8::try_from(options).unwrap();
        let total = u16::try_from(usize::from(ihl) * 4 + payload.len()).unwrap();
        let mut v = vec![0x40 | ihl, tos];
        v.extend_from_slice(&total.to_be_bytes());
        v.extend_from_slice(&[0, 1]);
        v.extend_from_slice(&frag.to_be_bytes());
        v.extend_from_slice(&[64, protocol, 0, 0]);
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend(std::iter::repeat_n(1u8, options * 4));
        v.extend_from_slice(payload);
        v
    }

    /// An IPv6 header and payload (extension headers included in the payload).
    pub(crate) fn ipv6_pkt(
        next: u8,
        src: [u8; 16],
        dst: [u8; 16],
        tclass: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut v = vec![0x60 | tclass >> 4, (tclass & 0x0f) << 4, 0, 0];
        v.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        v.extend_from_slice(&[next, 64]);
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend_from_slice(payload);
        v
    }

    /// A 20-byte TCP header.
    pub(crate) fn tcp(src: u16, dst: u16, flags: u8) -> Vec<u8> {
        let mut v = src.to_be_bytes().to_vec();
        v.extend_from_slice(&dst.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        v
    }

    /// An 8-byte UDP header.
    pub(crate) fn udp(src: u16, dst: u16) -> Vec<u8> {
        let mut v = src.to_be_bytes().to_vec();
        v.extend_from_slice(&dst.to_be_bytes());
        v.extend_from_slice(&[0, 8, 0, 0]);
        v
    }

    /// Generic interface counters (counter record 1) with recognisable values.
    pub(crate) fn generic_counters(if_index: u32) -> Vec<u8> {
        let mut d = words(&[if_index, 6]);
        d.extend_from_slice(&10_000_000_000u64.to_be_bytes());
        d.extend_from_slice(&words(&[1, 3]));
        d.extend_from_slice(&0x1_0000_0001u64.to_be_bytes());
        d.extend_from_slice(&words(&[11, 12, 13, 14, 15, 16]));
        d.extend_from_slice(&0x2_0000_0002u64.to_be_bytes());
        d.extend_from_slice(&words(&[21, 22, 23, 24, 25, 2]));
        assert_eq!(d.len(), 88);
        entry(1, &d)
    }

    /// Ethernet interface counters (counter record 2): 101..=113.
    pub(crate) fn ethernet_counters() -> Vec<u8> {
        let w: Vec<u32> = (101..=113).collect();
        entry(2, &words(&w))
    }
}
