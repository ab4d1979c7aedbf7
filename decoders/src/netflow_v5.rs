//! Cisco NetFlow version 5: a fixed 24-byte header followed by `count` fixed 48-byte records.
//!
//! There is no template state: every datagram stands alone. The layout is Cisco's published
//! "NetFlow Export Datagram Format" for version 5:
//!
//! ```text
//! header (24 bytes)                      record (48 bytes)
//!  0..2   version = 0x0005                0..4   srcaddr      24..28 first (sysUptime ms)
//!  2..4   count (1..=30)                  4..8   dstaddr      28..32 last  (sysUptime ms)
//!  4..8   sys_uptime (ms)                 8..12  nexthop      32..34 srcport
//!  8..12  unix_secs                      12..14  input        34..36 dstport
//! 12..16  unix_nsecs                     14..16  output       36     pad1
//! 16..20  flow_sequence                  16..20  dPkts        37     tcp_flags
//! 20      engine_type                    20..24  dOctets      38     prot
//! 21      engine_id                                           39     tos
//! 22..24  sampling_interval                                   40..42 src_as
//!         (2 mode bits, 14-bit interval)                      42..44 dst_as
//!                                                             44     src_mask
//!                                                             45     dst_mask
//!                                                             46..48 pad2
//! ```

use crate::{DecodeError, FlowFormat, FlowRecord, v4_to_bytes};

/// A read-only view of a NetFlow v5 datagram.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Byte ranges of the header and of one record.
pub mod field {
    /// A byte range inside a header or record.
    pub type Field = core::ops::Range<usize>;

    /// Export format version, always 5.
    pub const VERSION: Field = 0..2;
    /// Number of records in the datagram.
    pub const COUNT: Field = 2..4;
    /// Milliseconds since the exporter booted, at export time.
    pub const SYS_UPTIME: Field = 4..8;
    /// Export time, seconds since the Unix epoch.
    pub const UNIX_SECS: Field = 8..12;
    /// Residual nanoseconds of the export time.
    pub const UNIX_NSECS: Field = 12..16;
    /// Sequence number of the first record of this datagram.
    pub const FLOW_SEQUENCE: Field = 16..20;
    /// Type of flow-switching engine.
    pub const ENGINE_TYPE: usize = 20;
    /// Slot number of the flow-switching engine.
    pub const ENGINE_ID: usize = 21;
    /// Two bits of sampling mode, fourteen bits of sampling interval.
    pub const SAMPLING_INTERVAL: Field = 22..24;
    /// Length of the fixed header.
    pub const HEADER_LEN: usize = 24;

    /// Length of one flow record.
    pub const RECORD_LEN: usize = 48;
    /// "At most 30 records per datagram" (Cisco's v5 format description).
    pub const MAX_COUNT: usize = 30;

    /// Offsets inside one record.
    pub mod record {
        use super::Field;

        /// Source IPv4 address.
        pub const SRCADDR: Field = 0..4;
        /// Destination IPv4 address.
        pub const DSTADDR: Field = 4..8;
        /// Next-hop router IPv4 address.
        pub const NEXTHOP: Field = 8..12;
        /// SNMP index of the input interface.
        pub const INPUT: Field = 12..14;
        /// SNMP index of the output interface.
        pub const OUTPUT: Field = 14..16;
        /// Packets in the flow.
        pub const DPKTS: Field = 16..20;
        /// Layer-3 octets in the flow.
        pub const DOCTETS: Field = 20..24;
        /// sysUptime at the start of the flow.
        pub const FIRST: Field = 24..28;
        /// sysUptime when the last packet of the flow was seen.
        pub const LAST: Field = 28..32;
        /// Transport source port (0 for ICMP).
        pub const SRCPORT: Field = 32..34;
        /// Transport destination port (ICMP type << 8 | code).
        pub const DSTPORT: Field = 34..36;
        /// Cumulative OR of TCP flags.
        pub const TCP_FLAGS: usize = 37;
        /// IP protocol.
        pub const PROT: usize = 38;
        /// IP type of service.
        pub const TOS: usize = 39;
        /// Source AS (origin or peer).
        pub const SRC_AS: Field = 40..42;
        /// Destination AS (origin or peer).
        pub const DST_AS: Field = 42..44;
    }

    /// Offset of record `i` (0-based) in the datagram.
    pub const fn record_offset(i: usize) -> usize {
        HEADER_LEN + i * RECORD_LEN
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking anything. Accessors may panic on a short buffer; use
    /// [`Packet::new_checked`] for bytes from the network.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer and runs [`Packet::check_len`].
    ///
    /// # Errors
    ///
    /// See [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, DecodeError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that every accessor stays inside the buffer.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] if the buffer is shorter than the header,
    /// [`DecodeError::BadVersion`] if the version is not 5, [`DecodeError::BadCount`] if the
    /// count is 0 or above 30, or the length is not exactly `24 + 48 * count`.
    pub fn check_len(&self) -> Result<(), DecodeError> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if self.version() != 5 {
            return Err(DecodeError::BadVersion);
        }
        let count = usize::from(self.count());
        if count == 0 || count > field::MAX_COUNT {
            return Err(DecodeError::BadCount);
        }
        // The format has no length field: the count is the only framing, so a datagram of any
        // other length is either truncated or carries bytes we cannot attribute.
        if len != field::record_offset(count) {
            return Err(DecodeError::BadCount);
        }
        Ok(())
    }

    fn u16_at(&self, r: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn u32_at(&self, r: field::Field) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Export format version.
    #[inline]
    pub fn version(&self) -> u16 {
        self.u16_at(field::VERSION)
    }

    /// Number of records.
    #[inline]
    pub fn count(&self) -> u16 {
        self.u16_at(field::COUNT)
    }

    /// Milliseconds since boot at export time.
    #[inline]
    pub fn sys_uptime(&self) -> u32 {
        self.u32_at(field::SYS_UPTIME)
    }

    /// Export time, Unix seconds.
    #[inline]
    pub fn unix_secs(&self) -> u32 {
        self.u32_at(field::UNIX_SECS)
    }

    /// Export time, residual nanoseconds.
    #[inline]
    pub fn unix_nsecs(&self) -> u32 {
        self.u32_at(field::UNIX_NSECS)
    }

    /// Sequence counter of total flows seen.
    #[inline]
    pub fn flow_sequence(&self) -> u32 {
        self.u32_at(field::FLOW_SEQUENCE)
    }

    /// Type of flow-switching engine.
    #[inline]
    pub fn engine_type(&self) -> u8 {
        self.buffer.as_ref()[field::ENGINE_TYPE]
    }

    /// Slot number of the flow-switching engine.
    #[inline]
    pub fn engine_id(&self) -> u8 {
        self.buffer.as_ref()[field::ENGINE_ID]
    }

    /// The raw 16-bit sampling field.
    #[inline]
    pub fn sampling_interval(&self) -> u16 {
        self.u16_at(field::SAMPLING_INTERVAL)
    }

    /// Sampling mode: the top two bits of the sampling field.
    #[inline]
    pub fn sampling_mode(&self) -> u8 {
        (self.sampling_interval() >> 14) as u8
    }

    /// The 1-in-N rate: the low fourteen bits of the sampling field, with 0 meaning unsampled.
    ///
    /// The interval is used whatever the mode bits say: some exporters (Juniper among them)
    /// set an interval with mode 0.
    #[inline]
    pub fn sampling_rate(&self) -> u32 {
        match u32::from(self.sampling_interval() & 0x3fff) {
            0 => 1,
            n => n,
        }
    }

    /// Export time in Unix milliseconds.
    #[inline]
    pub fn export_ms(&self) -> u64 {
        u64::from(self.unix_secs()) * 1_000 + u64::from(self.unix_nsecs() / 1_000_000)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The bytes of record `i`, borrowed for the buffer's lifetime; `None` past `count`.
    #[inline]
    pub fn record(&self, i: usize) -> Option<&'a [u8]> {
        if i >= usize::from(self.count()) {
            return None;
        }
        let start = field::record_offset(i);
        self.buffer.as_ref().get(start..start + field::RECORD_LEN)
    }
}

/// Decodes a checked datagram and calls `emit` once per record; returns the record count.
///
/// `base` carries what the caller knows (exporter address and port); the rest is filled here.
pub(crate) fn parse<F: FnMut(&FlowRecord)>(
    packet: &Packet<&[u8]>,
    base: &FlowRecord,
    emit: &mut F,
) -> u32 {
    let mut rec = *base;
    rec.format = FlowFormat::NetflowV5 as u8;
    rec.domain_id = u32::from(packet.engine_type()) << 8 | u32::from(packet.engine_id());
    rec.sampling_rate = packet.sampling_rate();
    rec.ip_version = 4;
    let uptime = packet.sys_uptime();
    let export_ms = packet.export_ms();

    let mut n = 0;
    let mut i = 0;
    while let Some(r) = packet.record(i) {
        i += 1;
        use field::record as f;
        let u16_at = |r2: field::Field| u16::from_be_bytes([r[r2.start], r[r2.start + 1]]);
        let u32_at = |r2: field::Field| {
            u32::from_be_bytes([
                r[r2.start],
                r[r2.start + 1],
                r[r2.start + 2],
                r[r2.start + 3],
            ])
        };

        rec.src_addr = v4_to_bytes(u32_at(f::SRCADDR).to_be_bytes());
        rec.dst_addr = v4_to_bytes(u32_at(f::DSTADDR).to_be_bytes());
        rec.input_if = u32::from(u16_at(f::INPUT));
        rec.output_if = u32::from(u16_at(f::OUTPUT));
        rec.packets = u64::from(u32_at(f::DPKTS));
        rec.bytes = u64::from(u32_at(f::DOCTETS));
        rec.start_ms = uptime_to_unix_ms(export_ms, uptime, u32_at(f::FIRST));
        rec.end_ms = uptime_to_unix_ms(export_ms, uptime, u32_at(f::LAST));
        rec.src_port = u16_at(f::SRCPORT);
        rec.dst_port = u16_at(f::DSTPORT);
        rec.tcp_flags = r[f::TCP_FLAGS];
        rec.protocol = r[f::PROT];
        rec.tos = r[f::TOS];
        rec.src_as = u32::from(u16_at(f::SRC_AS));
        rec.dst_as = u32::from(u16_at(f::DST_AS));
        emit(&rec);
        n += 1;
    }
    n
}

/// Converts a sysUptime timestamp into Unix milliseconds, given the export time and the
/// sysUptime at export.
///
/// The uptime is a 32-bit millisecond counter that wraps every ~49.7 days. A flow that started
/// before the wrap has `at > uptime`; the unsigned wrapping difference is still the true age
/// (as long as the flow is younger than one wrap period), so no special case is needed.
#[inline]
pub(crate) fn uptime_to_unix_ms(export_ms: u64, uptime: u32, at: u32) -> u64 {
    export_ms.saturating_sub(u64::from(uptime.wrapping_sub(at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two records, engine 1/2, sampling mode 1 interval 100, uptime 10 000 ms at
    /// 2023-11-14 22:13:20.500 UTC.
    static TWO_RECORDS: [u8; 24 + 2 * 48] = [
        0x00, 0x05, 0x00, 0x02, // version, count
        0x00, 0x00, 0x27, 0x10, // sys_uptime 10000
        0x65, 0x53, 0xf1, 0x00, // unix_secs 1_700_000_000
        0x1d, 0xcd, 0x65, 0x00, // unix_nsecs 500_000_000
        0x00, 0x00, 0x00, 0x07, // flow_sequence 7
        0x01, 0x02, // engine type 1, id 2
        0x40, 0x64, // sampling: mode 1, interval 100
        // record 0
        10, 0, 0, 1, // src
        10, 0, 0, 2, // dst
        10, 0, 0, 254, // nexthop
        0x00, 0x03, 0x00, 0x04, // input 3, output 4
        0x00, 0x00, 0x00, 0x0a, // packets 10
        0x00, 0x00, 0x05, 0xdc, // octets 1500
        0x00, 0x00, 0x13, 0x88, // first 5000
        0x00, 0x00, 0x23, 0x28, // last 9000
        0x04, 0xd2, 0x00, 0x50, // ports 1234 -> 80
        0x00, 0x1b, 0x06, 0x10, // pad, flags 0x1b, tcp, tos 0x10
        0xfd, 0xe8, 0x00, 0x0f, // src as 65000, dst as 15
        24, 16, 0, 0, // masks, pad
        // record 1: ICMP echo request, first switched before the uptime wrapped
        192, 168, 1, 1, //
        192, 168, 1, 2, //
        0, 0, 0, 0, //
        0x00, 0x01, 0x00, 0x02, //
        0x00, 0x00, 0x00, 0x01, //
        0x00, 0x00, 0x00, 0x54, //
        0xff, 0xff, 0xfc, 0x18, // first = 2^32 - 1000
        0x00, 0x00, 0x03, 0xe8, // last 1000
        0x00, 0x00, 0x08, 0x00, // icmp type 8 code 0 in dst port
        0x00, 0x00, 0x01, 0x00, //
        0x00, 0x00, 0x00, 0x00, //
        0, 0, 0, 0,
    ];

    fn collect(bytes: &[u8]) -> Result<Vec<FlowRecord>, DecodeError> {
        let p = Packet::new_checked(bytes)?;
        let mut out = Vec::new();
        let n = parse(&p, &FlowRecord::default(), &mut |r: &FlowRecord| {
            out.push(*r)
        });
        assert_eq!(n as usize, out.len());
        Ok(out)
    }

    #[test]
    fn reads_every_header_field() {
        let p = Packet::new_checked(&TWO_RECORDS[..]).unwrap();
        assert_eq!(p.version(), 5);
        assert_eq!(p.count(), 2);
        assert_eq!(p.sys_uptime(), 10_000);
        assert_eq!(p.unix_secs(), 1_700_000_000);
        assert_eq!(p.unix_nsecs(), 500_000_000);
        assert_eq!(p.flow_sequence(), 7);
        assert_eq!(p.engine_type(), 1);
        assert_eq!(p.engine_id(), 2);
        assert_eq!(p.sampling_mode(), 1);
        assert_eq!(p.sampling_rate(), 100);
        assert_eq!(p.export_ms(), 1_700_000_000_500);
        assert!(p.record(2).is_none());
    }

    #[test]
    fn parses_records() {
        let recs = collect(&TWO_RECORDS).unwrap();
        assert_eq!(recs.len(), 2);
        let r = &recs[0];
        assert_eq!(r.src_ip().to_string(), "10.0.0.1");
        assert_eq!(r.dst_ip().to_string(), "10.0.0.2");
        assert_eq!((r.input_if, r.output_if), (3, 4));
        assert_eq!((r.packets, r.bytes), (10, 1500));
        assert_eq!((r.src_port, r.dst_port), (1234, 80));
        assert_eq!((r.tcp_flags, r.protocol, r.tos), (0x1b, 6, 0x10));
        assert_eq!((r.src_as, r.dst_as), (65_000, 15));
        assert_eq!(r.domain_id, 0x0102);
        assert_eq!(r.sampling_rate, 100);
        assert_eq!(r.ip_version, 4);
        assert_eq!(r.flow_format(), FlowFormat::NetflowV5);
        // Export at ...500 ms with uptime 10 000: first 5000 is 5 s earlier.
        assert_eq!(r.start_ms, 1_700_000_000_500 - 5_000);
        assert_eq!(r.end_ms, 1_700_000_000_500 - 1_000);
    }

    #[test]
    fn handles_uptime_wrap() {
        let recs = collect(&TWO_RECORDS).unwrap();
        let r = &recs[1];
        // first = 2^32 - 1000 was 11 000 ms before an uptime of 10 000 (1000 before the wrap).
        assert_eq!(r.start_ms, 1_700_000_000_500 - 11_000);
        assert_eq!(r.end_ms, 1_700_000_000_500 - 9_000);
        assert_eq!(r.dst_port, 0x0800);
        assert_eq!(r.protocol, 1);
    }

    #[test]
    fn sampling_interval_zero_means_unsampled() {
        let mut b = TWO_RECORDS;
        b[22] = 0x80;
        b[23] = 0x00;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.sampling_mode(), 2);
        assert_eq!(p.sampling_rate(), 1);
        // Mode bits are not part of the interval.
        b[22] = 0xc0 | 0x01;
        b[23] = 0x00;
        assert_eq!(Packet::new_checked(&b[..]).unwrap().sampling_rate(), 256);
    }

    #[test]
    fn refuses_bad_lengths_and_counts() {
        assert_eq!(
            collect(&TWO_RECORDS[..23]).unwrap_err(),
            DecodeError::Truncated
        );
        assert_eq!(
            collect(&TWO_RECORDS[..24 + 48]).unwrap_err(),
            DecodeError::BadCount
        );
        let mut longer = TWO_RECORDS.to_vec();
        longer.push(0);
        assert_eq!(collect(&longer).unwrap_err(), DecodeError::BadCount);
        let mut zero = TWO_RECORDS[..24].to_vec();
        zero[3] = 0;
        assert_eq!(collect(&zero).unwrap_err(), DecodeError::BadCount);
        let mut big = vec![0u8; 24 + 31 * 48];
        big[1] = 5;
        big[3] = 31;
        assert_eq!(collect(&big).unwrap_err(), DecodeError::BadCount);
        let mut v = TWO_RECORDS;
        v[1] = 6;
        assert_eq!(collect(&v).unwrap_err(), DecodeError::BadVersion);
    }
}
