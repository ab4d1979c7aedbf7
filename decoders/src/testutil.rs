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
