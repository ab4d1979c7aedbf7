//! Shared helpers for flowplane's benchmarks: builders for realistic export datagrams.
//!
//! The builders write the wire layouts of NetFlow v5 (Cisco's version 5 export format) and IPFIX
//! (RFC 7011 § 3) directly, so that benchmarks do not depend on captures being present.

/// IPFIX template id used by [`ipfix_template`] and [`ipfix_data`].
pub const IPFIX_TEMPLATE_ID: u16 = 256;

/// (Information Element id, length) of the IPFIX template: a typical IPv4 5-tuple export.
const IPFIX_FIELDS: [(u16, u16); 13] = [
    (8, 4),   // sourceIPv4Address
    (12, 4),  // destinationIPv4Address
    (7, 2),   // sourceTransportPort
    (11, 2),  // destinationTransportPort
    (4, 1),   // protocolIdentifier
    (6, 1),   // tcpControlBits
    (5, 1),   // ipClassOfService
    (10, 4),  // ingressInterface
    (14, 4),  // egressInterface
    (1, 8),   // octetDeltaCount
    (2, 8),   // packetDeltaCount
    (152, 8), // flowStartMilliseconds
    (153, 8), // flowEndMilliseconds
];

/// Length of one IPFIX data record of the template above.
pub const IPFIX_RECORD_LEN: usize = 55;

/// A NetFlow v5 datagram with `count` records (1..=30). Record `i` of datagram `seed` gets
/// addresses and ports derived from both, so that `distinct_keys` keys repeat across datagrams.
pub fn netflow_v5(seed: u32, count: u16, distinct_keys: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + 48 * usize::from(count));
    b.extend_from_slice(&5u16.to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(&1_000_000u32.to_be_bytes()); // sys_uptime ms
    b.extend_from_slice(&1_764_800_000u32.to_be_bytes()); // unix_secs
    b.extend_from_slice(&0u32.to_be_bytes()); // unix_nsecs
    b.extend_from_slice(&seed.to_be_bytes()); // flow_sequence
    b.extend_from_slice(&[0, 1]); // engine type, id
    b.extend_from_slice(&0u16.to_be_bytes()); // sampling
    for i in 0..u32::from(count) {
        let k = (seed.wrapping_mul(31).wrapping_add(i)) % distinct_keys.max(1);
        b.extend_from_slice(&(0x0a00_0000 | k).to_be_bytes()); // srcaddr 10.x
        b.extend_from_slice(&(0xc000_0200 | (k & 0xff)).to_be_bytes()); // dstaddr 192.0.2.x
        b.extend_from_slice(&0u32.to_be_bytes()); // nexthop
        b.extend_from_slice(&1u16.to_be_bytes()); // input
        b.extend_from_slice(&2u16.to_be_bytes()); // output
        b.extend_from_slice(&10u32.to_be_bytes()); // dPkts
        b.extend_from_slice(&(1500 + k).to_be_bytes()); // dOctets
        b.extend_from_slice(&990_000u32.to_be_bytes()); // first
        b.extend_from_slice(&999_000u32.to_be_bytes()); // last
        b.extend_from_slice(&(1024 + (k % 60_000) as u16).to_be_bytes()); // srcport
        b.extend_from_slice(&[0x01, 0xbb]); // dstport 443
        b.extend_from_slice(&[0, 0x18, 6, 0]); // pad, tcp flags, proto, tos
        b.extend_from_slice(&[0; 8]); // src_as, dst_as, masks, pad
    }
    b
}

fn ipfix_header(b: &mut Vec<u8>, seq: u32) {
    b.extend_from_slice(&10u16.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes()); // length, patched by finish
    b.extend_from_slice(&1_764_800_000u32.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes()); // observation domain
}

fn ipfix_finish(mut b: Vec<u8>) -> Vec<u8> {
    let len = u16::try_from(b.len()).expect("bench datagrams stay below 64 KiB");
    b[2..4].copy_from_slice(&len.to_be_bytes());
    b
}

/// An IPFIX message holding the template set for [`ipfix_data`].
pub fn ipfix_template() -> Vec<u8> {
    let mut b = Vec::new();
    ipfix_header(&mut b, 0);
    let set_len = 4 + 4 + 4 * IPFIX_FIELDS.len();
    b.extend_from_slice(&2u16.to_be_bytes());
    b.extend_from_slice(&(set_len as u16).to_be_bytes());
    b.extend_from_slice(&IPFIX_TEMPLATE_ID.to_be_bytes());
    b.extend_from_slice(&(IPFIX_FIELDS.len() as u16).to_be_bytes());
    for (id, len) in IPFIX_FIELDS {
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
    }
    ipfix_finish(b)
}

/// An IPFIX message with one data set of `count` records for the template of
/// [`ipfix_template`].
pub fn ipfix_data(seed: u32, count: u16, distinct_keys: u32) -> Vec<u8> {
    let mut b = Vec::new();
    ipfix_header(&mut b, seed);
    b.extend_from_slice(&IPFIX_TEMPLATE_ID.to_be_bytes());
    b.extend_from_slice(&((4 + IPFIX_RECORD_LEN * usize::from(count)) as u16).to_be_bytes());
    for i in 0..u32::from(count) {
        let k = (seed.wrapping_mul(31).wrapping_add(i)) % distinct_keys.max(1);
        b.extend_from_slice(&(0x0a00_0000 | k).to_be_bytes());
        b.extend_from_slice(&(0xc000_0200 | (k & 0xff)).to_be_bytes());
        b.extend_from_slice(&(1024 + (k % 60_000) as u16).to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b.extend_from_slice(&[6, 0x18, 0]);
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&u64::from(1500 + k).to_be_bytes());
        b.extend_from_slice(&10u64.to_be_bytes());
        b.extend_from_slice(&1_764_799_999_000u64.to_be_bytes());
        b.extend_from_slice(&1_764_800_000_000u64.to_be_bytes());
    }
    ipfix_finish(b)
}
