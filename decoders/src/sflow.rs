//! sFlow version 5 (sFlow.org, "sFlow Version 5", July 2004): a datagram header, then samples,
//! each sample a list of flow or counter records. Everything is XDR (RFC 4506): big-endian
//! 32-bit words, variable-length opaque data padded to a multiple of 4.
//!
//! ```text
//! datagram                                 sample / record
//!  0..4    version = 5                      0..4  data_format: enterprise (20 bits) << 12
//!  4..8    agent address type (1 v4, 2 v6)                     | format (12 bits)
//!  8..     agent address (4 or 16 bytes)    4..8  length of the data that follows
//!  +0..4   sub_agent_id                     8..   data (length bytes, a multiple of 4)
//!  +4..8   sequence_number
//!  +8..12  uptime (ms)
//!  +12..16 number of samples, then samples
//! ```
//!
//! Samples flowplane reads (enterprise 0): flow sample (1), counter sample (2), expanded flow
//! sample (3), expanded counter sample (4). Inside flow samples: raw packet header (1),
//! Ethernet frame data (2), IPv4 data (3), IPv6 data (4), extended switch (1001), extended
//! router (1002), extended gateway (1003). Inside counter samples: generic interface counters
//! (1) and Ethernet interface counters (2). Any other sample or record, of any enterprise, is
//! skipped by its declared length and counted in [`Tally`]: unknown formats are values, not
//! errors.
//!
//! # Framing rules
//!
//! * A sample or record whose declared length runs past its container, or is not a multiple of
//!   4 (all sFlow structures are XDR, so their encodings are), is
//!   [`DecodeError::BadSampleLength`]; a count larger than its container can hold (8 bytes per
//!   entry at least) is [`DecodeError::BadCount`]. The first error ends the datagram: nothing
//!   resynchronises inside a corrupt datagram, and the sample holding the error is not emitted.
//! * A known record shorter than its fixed layout is [`DecodeError::TruncatedRecord`].
//! * A sample whose records end before its declared length is consumed up to that length (the
//!   rest is ignored); bytes after the last sample of a datagram are ignored too.
//!
//! # From a flow sample to a [`FlowRecord`]
//!
//! One flow sample is one record: `packets = 1`, `bytes` = the frame length of the raw header
//! record (see below), `sampling_rate` = the sample's rate, `start_ms = end_ms` = arrival time,
//! `domain_id` = sub-agent id. When a sample carries both a raw packet header and a sampled
//! IPv4/IPv6 record, the raw header gives the addresses, ports, protocol, flags and ToS: it is
//! what the agent actually saw, while the sampled IP record is the agent's own summary of the
//! same bytes. The IP record is used when there is no raw header, or one that reached no IP
//! header (a link type flowplane does not decode, ARP, a frame cut before its IP header).
//!
//! The frame length: the specification says that for a layer-2 header protocol it is "the
//! total number of octets of data received on the network (excluding framing bits but
//! including FCS octets)". flowplane reports it unchanged, as sFlow collectors and tshark do:
//! for Ethernet, `bytes` includes the 14-byte header, any VLAN tags and the 4-byte FCS, so it
//! is larger than the layer-3 length NetFlow reports for the same packet. Without a raw header,
//! the Ethernet frame data length is used, then the IPv4/IPv6 data length (layer 3).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{CounterRecord, DecodeError, FlowFormat, FlowRecord, addr_to_bytes, v4_to_bytes};

/// A read-only view of an sFlow v5 datagram.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Byte ranges of the datagram header.
pub mod field {
    /// A byte range inside the header.
    pub type Field = core::ops::Range<usize>;

    /// Datagram version, always 5.
    pub const VERSION: Field = 0..4;
    /// Agent address type: [`ADDRESS_TYPE_IPV4`] or [`ADDRESS_TYPE_IPV6`].
    pub const ADDRESS_TYPE: Field = 4..8;
    /// Where the agent address starts.
    pub const AGENT_ADDRESS: usize = 8;
    /// "IP_V4 = 1" (sFlow v5 `address_type`).
    pub const ADDRESS_TYPE_IPV4: u32 = 1;
    /// "IP_V6 = 2".
    pub const ADDRESS_TYPE_IPV6: u32 = 2;
    /// Length of the header up to the agent address.
    pub const PREFIX_LEN: usize = 8;
    /// Shortest header: IPv4 agent, `8 + 4 + 4 * 4`.
    pub const MIN_HEADER_LEN: usize = 28;
    /// Sample and record headers: data format and length.
    pub const ENTRY_HEADER_LEN: usize = 8;

    /// Length of an agent address of the given type, `None` for an unknown type.
    pub const fn address_len(address_type: u32) -> Option<usize> {
        match address_type {
            ADDRESS_TYPE_IPV4 => Some(4),
            ADDRESS_TYPE_IPV6 => Some(16),
            _ => None,
        }
    }

    /// Offset of the sub-agent id, the first field after an address of `addr_len` bytes.
    pub const fn sub_agent_id(addr_len: usize) -> Field {
        let at = AGENT_ADDRESS + addr_len;
        at..at + 4
    }

    /// Offset of the sequence number.
    pub const fn sequence_number(addr_len: usize) -> Field {
        let at = AGENT_ADDRESS + addr_len + 4;
        at..at + 4
    }

    /// Offset of the uptime.
    pub const fn uptime(addr_len: usize) -> Field {
        let at = AGENT_ADDRESS + addr_len + 8;
        at..at + 4
    }

    /// Offset of the sample count.
    pub const fn sample_count(addr_len: usize) -> Field {
        let at = AGENT_ADDRESS + addr_len + 12;
        at..at + 4
    }

    /// Length of the whole header for an address of `addr_len` bytes.
    pub const fn header_len(addr_len: usize) -> usize {
        AGENT_ADDRESS + addr_len + 16
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

    /// Checks that every header accessor stays inside the buffer.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] if the buffer is shorter than the header,
    /// [`DecodeError::BadVersion`] if the version is not 5, [`DecodeError::BadAddressType`] if
    /// the agent address is neither IPv4 nor IPv6, [`DecodeError::BadCount`] if the sample
    /// count is larger than the rest of the datagram can hold (8 bytes per sample at least).
    pub fn check_len(&self) -> Result<(), DecodeError> {
        let len = self.buffer.as_ref().len();
        if len < field::PREFIX_LEN {
            return Err(DecodeError::Truncated);
        }
        if self.version() != 5 {
            return Err(DecodeError::BadVersion);
        }
        let Some(addr_len) = field::address_len(self.address_type()) else {
            return Err(DecodeError::BadAddressType);
        };
        if len < field::header_len(addr_len) {
            return Err(DecodeError::Truncated);
        }
        // usize::try_from cannot fail on the 32- and 64-bit targets flowplane builds for; if it
        // did, the count is certainly larger than the datagram.
        let count = usize::try_from(self.sample_count()).unwrap_or(usize::MAX);
        if count > (len - field::header_len(addr_len)) / field::ENTRY_HEADER_LEN {
            return Err(DecodeError::BadCount);
        }
        Ok(())
    }

    fn u32_at(&self, r: field::Field) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Length of the agent address: 4 or 16 (16 for anything not IPv4; `check_len` has refused
    /// those).
    fn addr_len(&self) -> usize {
        field::address_len(self.address_type()).unwrap_or(16)
    }

    /// Datagram version.
    #[inline]
    pub fn version(&self) -> u32 {
        self.u32_at(field::VERSION)
    }

    /// Agent address type (1 IPv4, 2 IPv6).
    #[inline]
    pub fn address_type(&self) -> u32 {
        self.u32_at(field::ADDRESS_TYPE)
    }

    /// The agent address.
    #[inline]
    pub fn agent_address(&self) -> IpAddr {
        let b = self.buffer.as_ref();
        let at = field::AGENT_ADDRESS;
        if self.addr_len() == 4 {
            IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }

    /// Sub-agent id: distinguishes independent sub-agents of one agent (line cards, ...).
    #[inline]
    pub fn sub_agent_id(&self) -> u32 {
        self.u32_at(field::sub_agent_id(self.addr_len()))
    }

    /// Datagram sequence number, per (agent, sub-agent).
    #[inline]
    pub fn sequence_number(&self) -> u32 {
        self.u32_at(field::sequence_number(self.addr_len()))
    }

    /// Agent uptime in milliseconds.
    #[inline]
    pub fn uptime(&self) -> u32 {
        self.u32_at(field::uptime(self.addr_len()))
    }

    /// Number of samples that follow.
    #[inline]
    pub fn sample_count(&self) -> u32 {
        self.u32_at(field::sample_count(self.addr_len()))
    }

    /// Length of the datagram header (28 with an IPv4 agent, 40 with IPv6).
    #[inline]
    pub fn header_len(&self) -> usize {
        field::header_len(self.addr_len())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The samples, borrowed for the buffer's lifetime.
    pub fn samples(&self) -> Entries<'a> {
        let buf = self.buffer.as_ref();
        let start = self.header_len().min(buf.len());
        Entries {
            buf: &buf[start..],
            pos: 0,
            left: self.sample_count(),
            hit_error: false,
        }
    }
}

/// An sFlow `data_format`: enterprise number in the upper 20 bits, format in the lower 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DataFormat(pub u32);

impl DataFormat {
    /// Flow sample (enterprise 0).
    pub const FLOW_SAMPLE: Self = Self(1);
    /// Counter sample.
    pub const COUNTER_SAMPLE: Self = Self(2);
    /// Expanded flow sample.
    pub const EXPANDED_FLOW_SAMPLE: Self = Self(3);
    /// Expanded counter sample.
    pub const EXPANDED_COUNTER_SAMPLE: Self = Self(4);

    /// Flow record: raw packet header.
    pub const RAW_HEADER: Self = Self(1);
    /// Flow record: Ethernet frame data.
    pub const ETHERNET: Self = Self(2);
    /// Flow record: IPv4 data.
    pub const IPV4: Self = Self(3);
    /// Flow record: IPv6 data.
    pub const IPV6: Self = Self(4);
    /// Flow record: extended switch data.
    pub const EXTENDED_SWITCH: Self = Self(1001);
    /// Flow record: extended router data.
    pub const EXTENDED_ROUTER: Self = Self(1002);
    /// Flow record: extended gateway data.
    pub const EXTENDED_GATEWAY: Self = Self(1003);

    /// Counter record: generic interface counters.
    pub const GENERIC_INTERFACE: Self = Self(1);
    /// Counter record: Ethernet interface counters.
    pub const ETHERNET_INTERFACE: Self = Self(2);

    /// Enterprise number (0 = sFlow.org's standard structures).
    #[inline]
    pub fn enterprise(self) -> u32 {
        self.0 >> 12
    }

    /// Format number within the enterprise.
    #[inline]
    pub fn format(self) -> u32 {
        self.0 & 0x0fff
    }
}

/// One sample or record: its format and its data (without the 8-byte entry header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Enterprise and format.
    pub format: DataFormat,
    /// The data, exactly the declared length.
    pub data: &'a [u8],
}

/// The samples of a datagram, or the records of a sample: `count` entries of
/// `data_format, length, data[length]`. Yields `Err` once and stops after the first error.
#[derive(Clone, Debug)]
pub struct Entries<'a> {
    buf: &'a [u8],
    pos: usize,
    left: u32,
    hit_error: bool,
}

impl<'a> Entries<'a> {
    /// The `count` entries at the start of `buf`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::BadCount`] if `buf` cannot hold `count` entry headers.
    pub fn new(buf: &'a [u8], count: u32) -> Result<Self, DecodeError> {
        let max = buf.len() / field::ENTRY_HEADER_LEN;
        if !usize::try_from(count).is_ok_and(|c| c <= max) {
            return Err(DecodeError::BadCount);
        }
        Ok(Self {
            buf,
            pos: 0,
            left: count,
            hit_error: false,
        })
    }

    fn fail(&mut self, e: DecodeError) -> Option<Result<Entry<'a>, DecodeError>> {
        self.hit_error = true;
        Some(Err(e))
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.hit_error || self.left == 0 {
            return None;
        }
        self.left -= 1;

        let mut r = Reader::new(self.buf.get(self.pos..).unwrap_or(&[]));
        // The count was checked against 8 bytes per entry, but earlier entries may have used
        // more: a header that no longer fits means the count was too large.
        let (Ok(format), Ok(len)) = (r.u32(), r.u32()) else {
            return self.fail(DecodeError::BadCount);
        };
        // XDR: every sFlow structure encodes to a multiple of 4 bytes.
        if len % 4 != 0 {
            return self.fail(DecodeError::BadSampleLength);
        }
        let Ok(data) = r.bytes(len) else {
            return self.fail(DecodeError::BadSampleLength);
        };
        // The entry header and data lie inside `buf`, so this cannot overflow.
        self.pos += field::ENTRY_HEADER_LEN + data.len();
        Some(Ok(Entry {
            format: DataFormat(format),
            data,
        }))
    }
}

/// An interface field of a flow sample, split into its format and value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// 0 ifIndex, 1 discarded (value = reason), 2 multiple (value = count, 0 unknown).
    pub format: u32,
    /// The ifIndex, reason or count.
    pub value: u32,
}

impl Interface {
    /// The compact form: "The most significant 2 bits are used to indicate the format of the
    /// 30 bit value."
    pub fn compact(word: u32) -> Self {
        Self {
            format: word >> 30,
            value: word & 0x3fff_ffff,
        }
    }
}

/// The fixed part of a flow sample (format 1) or expanded flow sample (format 3).
#[derive(Clone, Debug)]
pub struct FlowSample<'a> {
    /// Sample sequence number, per source.
    pub sequence_number: u32,
    /// Data source type (0 ifIndex, 1 VLAN, 2 physical entity).
    pub source_id_type: u32,
    /// Data source index.
    pub source_id_index: u32,
    /// 1-in-N sampling rate.
    pub sampling_rate: u32,
    /// Packets that could have been sampled (total seen by the source).
    pub sample_pool: u32,
    /// Samples the agent lost for lack of resources (a running total per source).
    pub drops: u32,
    /// Input interface.
    pub input: Interface,
    /// Output interface.
    pub output: Interface,
    /// The flow records.
    pub records: Entries<'a>,
}

impl<'a> FlowSample<'a> {
    /// Reads the fixed part of a flow sample; `expanded` for format 3.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TruncatedRecord`] if the data is shorter than the fixed part,
    /// [`DecodeError::BadCount`] if the record count cannot fit.
    pub fn parse(data: &'a [u8], expanded: bool) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let sequence_number = r.u32()?;
        let (source_id_type, source_id_index) = if expanded {
            (r.u32()?, r.u32()?)
        } else {
            // sflow_data_source: type in the top 8 bits, index in the lower 24.
            let w = r.u32()?;
            (w >> 24, w & 0x00ff_ffff)
        };
        let sampling_rate = r.u32()?;
        let sample_pool = r.u32()?;
        let drops = r.u32()?;
        let (input, output) = if expanded {
            let input = Interface {
                format: r.u32()?,
                value: r.u32()?,
            };
            let output = Interface {
                format: r.u32()?,
                value: r.u32()?,
            };
            (input, output)
        } else {
            (Interface::compact(r.u32()?), Interface::compact(r.u32()?))
        };
        let count = r.u32()?;
        Ok(Self {
            sequence_number,
            source_id_type,
            source_id_index,
            sampling_rate,
            sample_pool,
            drops,
            input,
            output,
            records: Entries::new(r.rest(), count)?,
        })
    }
}

/// The fixed part of a counter sample (format 2) or expanded counter sample (format 4).
#[derive(Clone, Debug)]
pub struct CounterSample<'a> {
    /// Sample sequence number, per source.
    pub sequence_number: u32,
    /// Data source type.
    pub source_id_type: u32,
    /// Data source index.
    pub source_id_index: u32,
    /// The counter records.
    pub records: Entries<'a>,
}

impl<'a> CounterSample<'a> {
    /// Reads the fixed part of a counter sample; `expanded` for format 4.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TruncatedRecord`] if the data is shorter than the fixed part,
    /// [`DecodeError::BadCount`] if the record count cannot fit.
    pub fn parse(data: &'a [u8], expanded: bool) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let sequence_number = r.u32()?;
        let (source_id_type, source_id_index) = if expanded {
            (r.u32()?, r.u32()?)
        } else {
            let w = r.u32()?;
            (w >> 24, w & 0x00ff_ffff)
        };
        let count = r.u32()?;
        Ok(Self {
            sequence_number,
            source_id_type,
            source_id_index,
            records: Entries::new(r.rest(), count)?,
        })
    }
}

/// What the decoder counts while walking sFlow samples, besides records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Flow samples (formats 1 and 3) decoded into a record.
    pub flow_samples: u32,
    /// Counter samples (formats 2 and 4) decoded into a counter record.
    pub counter_samples: u32,
    /// Samples of a format flowplane does not read (any enterprise), skipped.
    pub unknown_samples: u32,
    /// Flow or counter records of a format flowplane does not read, skipped.
    pub unknown_records: u32,
    /// Raw packet headers of a header protocol flowplane does not decode (anything but
    /// Ethernet, IPv4 and IPv6).
    pub unknown_header_protocols: u32,
}

/// Where a flow sample's results go.
pub(crate) trait Sink {
    /// One decoded flow sample.
    fn flow(&mut self, rec: &FlowRecord);
    /// One decoded counter sample.
    fn counter(&mut self, rec: &CounterRecord);
    /// A flow sample's source and its running total of drops, for loss accounting.
    fn drops(&mut self, source: u64, drops: u32);
}

/// Decodes the samples of a checked datagram.
///
/// `base` carries what the caller knows (exporter address and port); `now_ms` is the arrival
/// time. Records decoded before an error have gone to `sink`.
///
/// # Errors
///
/// The first framing or record error; see the module documentation.
pub(crate) fn parse<S: Sink>(
    packet: &Packet<&[u8]>,
    base: &FlowRecord,
    now_ms: u64,
    tally: &mut Tally,
    sink: &mut S,
) -> Result<(), DecodeError> {
    let mut flow = *base;
    flow.format = FlowFormat::Sflow as u8;
    flow.domain_id = packet.sub_agent_id();
    flow.start_ms = now_ms;
    flow.end_ms = now_ms;
    flow.packets = 1;

    let counter = CounterRecord {
        agent: addr_to_bytes(packet.agent_address()),
        exporter: base.exporter,
        exporter_port: base.exporter_port,
        sub_agent_id: packet.sub_agent_id(),
        uptime_ms: packet.uptime(),
        time_ms: now_ms,
        ..CounterRecord::default()
    };

    for sample in packet.samples() {
        let sample = sample?;
        match sample.format {
            DataFormat::FLOW_SAMPLE | DataFormat::EXPANDED_FLOW_SAMPLE => {
                let expanded = sample.format == DataFormat::EXPANDED_FLOW_SAMPLE;
                let fs = FlowSample::parse(sample.data, expanded)?;
                let source = u64::from(fs.source_id_type) << 32 | u64::from(fs.source_id_index);
                let drops = fs.drops;
                let rec = flow_record(fs, &flow, tally)?;
                sink.drops(source, drops);
                sink.flow(&rec);
                tally.flow_samples += 1;
            }
            DataFormat::COUNTER_SAMPLE | DataFormat::EXPANDED_COUNTER_SAMPLE => {
                let expanded = sample.format == DataFormat::EXPANDED_COUNTER_SAMPLE;
                let cs = CounterSample::parse(sample.data, expanded)?;
                if let Some(rec) = counter_record(cs, &counter, tally)? {
                    sink.counter(&rec);
                    tally.counter_samples += 1;
                }
            }
            _ => tally.unknown_samples += 1,
        }
    }
    Ok(())
}

/// What a flow sample's records said about the packet, before the record is assembled.
#[derive(Default)]
struct Gathered {
    /// From the raw packet header, when its header protocol was decoded.
    raw: Option<(u32, L34, L2)>,
    /// Frame length of a raw header record of a protocol flowplane does not decode.
    raw_frame_length: Option<u32>,
    ethernet_length: Option<u32>,
    sampled_ip: Option<(u32, L34)>,
    switch: Option<(u16, u16)>,
    masks: Option<(u8, u8)>,
    gateway: Option<(u32, u32)>,
}

/// Turns one flow sample into a record.
fn flow_record(
    fs: FlowSample<'_>,
    base: &FlowRecord,
    tally: &mut Tally,
) -> Result<FlowRecord, DecodeError> {
    let mut rec = *base;
    // A rate of 0 is meaningless ("1 in 0"); the record contract says 1 when unknown.
    rec.sampling_rate = fs.sampling_rate.max(1);
    rec.input_if = fs.input.value;
    rec.output_if = fs.output.value;
    rec.input_if_format = if_format(fs.input.format);
    rec.output_if_format = if_format(fs.output.format);

    let mut g = Gathered::default();
    for r in fs.records {
        let r = r?;
        let mut rd = Reader::new(r.data);
        match r.format {
            DataFormat::RAW_HEADER => {
                let protocol = rd.u32()?;
                let frame_length = rd.u32()?;
                let _stripped = rd.u32()?;
                let header = rd.opaque()?;
                // The first raw header of a sample is the packet; agents send one.
                if g.raw.is_some() || g.raw_frame_length.is_some() {
                    continue;
                }
                match decode_header(protocol, header) {
                    Some((l34, l2)) => g.raw = Some((frame_length, l34, l2)),
                    None => {
                        tally.unknown_header_protocols += 1;
                        g.raw_frame_length = Some(frame_length);
                    }
                }
            }
            DataFormat::ETHERNET => {
                // length, src_mac (6, padded to 8), dst_mac (8), type.
                let length = rd.u32()?;
                rd.bytes(20)?;
                g.ethernet_length.get_or_insert(length);
            }
            DataFormat::IPV4 | DataFormat::IPV6 => {
                let v6 = r.format == DataFormat::IPV6;
                let length = rd.u32()?;
                let l34 = sampled_ip(&mut rd, v6)?;
                g.sampled_ip.get_or_insert((length, l34));
            }
            DataFormat::EXTENDED_SWITCH => {
                let src_vlan = rd.u32()?;
                let _src_priority = rd.u32()?;
                let dst_vlan = rd.u32()?;
                let _dst_priority = rd.u32()?;
                g.switch = Some((vlan_id(src_vlan), vlan_id(dst_vlan)));
            }
            DataFormat::EXTENDED_ROUTER => {
                rd.address()?;
                let src = rd.u32()?;
                let dst = rd.u32()?;
                g.masks = Some((mask(src), mask(dst)));
            }
            DataFormat::EXTENDED_GATEWAY => g.gateway = Some(gateway(&mut rd)?),
            _ => tally.unknown_records += 1,
        }
    }

    // The 5-tuple: raw header first (module documentation), then the sampled IP record; a raw
    // header that reached no IP header (ARP, a cut frame) yields to a sampled IP record.
    let l34 = match (&g.raw, &g.sampled_ip) {
        (Some((_, raw, _)), _) if raw.ip_version != 0 => Some(*raw),
        (_, Some((_, sampled))) => Some(*sampled),
        (Some((_, raw, _)), None) => Some(*raw),
        (None, None) => None,
    };
    if let Some(l) = l34 {
        l.apply(&mut rec);
    }
    rec.bytes = u64::from(
        g.raw
            .as_ref()
            .map(|(len, _, _)| *len)
            .or(g.raw_frame_length)
            .or(g.ethernet_length)
            .or(g.sampled_ip.as_ref().map(|(len, _)| *len))
            .unwrap_or(0),
    );
    // VLANs: the agent's extended switch record knows both; otherwise the sampled frame's
    // outermost tag is the VLAN the packet arrived on.
    if let Some((src, dst)) = g.switch {
        rec.src_vlan = src;
        rec.dst_vlan = dst;
    } else if let Some((_, _, l2)) = &g.raw {
        rec.src_vlan = l2.outer_vlan;
    }
    if let Some((src, dst)) = g.masks {
        rec.src_mask = src;
        rec.dst_mask = dst;
    }
    if let Some((src, dst)) = g.gateway {
        rec.src_as = src;
        rec.dst_as = dst;
    }
    Ok(rec)
}

/// Keeps an interface format in the record's byte. Formats 0..=2 are defined; a larger value
/// from the expanded form's 32-bit field is kept when it fits and saturates at 255 otherwise
/// (consumers treat anything above 2 as unknown).
fn if_format(format: u32) -> u8 {
    u8::try_from(format).unwrap_or(u8::MAX)
}

/// An 802.1Q VLAN id is 12 bits; the extended switch record carries it in a 32-bit word. A
/// larger value is not a VLAN id: agents send `0xffff_ffff` for "unknown" (seen from an Arista
/// switch in akvorado's `data-1140.pcap`), so it becomes 0, the record's "unknown".
fn vlan_id(word: u32) -> u16 {
    u16::try_from(word)
        .ok()
        .filter(|v| *v <= 0x0fff)
        .unwrap_or(0)
}

/// A prefix length is at most 128; a larger value from the 32-bit field saturates at 255.
fn mask(word: u32) -> u8 {
    u8::try_from(word).unwrap_or(u8::MAX)
}

/// Reads a sampled IPv4 (format 3) or IPv6 (format 4) record after its length field.
fn sampled_ip(rd: &mut Reader<'_>, v6: bool) -> Result<L34, DecodeError> {
    let protocol = rd.u32()?;
    let (src, dst) = if v6 {
        (rd.array16()?, rd.array16()?)
    } else {
        (v4_to_bytes(rd.array4()?), v4_to_bytes(rd.array4()?))
    };
    let src_port = rd.u32()?;
    let dst_port = rd.u32()?;
    let tcp_flags = rd.u32()?;
    let tos = rd.u32()?;
    // The record widens 8- and 16-bit protocol fields to 32 bits; the upper bits are zero on
    // the wire for any real packet, and are dropped.
    Ok(L34 {
        ip_version: if v6 { 6 } else { 4 },
        src,
        dst,
        protocol: (protocol & 0xff) as u8,
        tos: (tos & 0xff) as u8,
        src_port: (src_port & 0xffff) as u16,
        dst_port: (dst_port & 0xffff) as u16,
        tcp_flags: (tcp_flags & 0xff) as u8,
        truncated: false,
    })
}

/// Reads an extended gateway record; returns (src_as, dst_as).
///
/// ```text
/// next_hop (address), as, src_as, src_peer_as,
/// dst_as_path: count, then per segment: type (1 AS_SET, 2 AS_SEQUENCE), count, ASNs
/// communities: count, values; localpref
/// ```
///
/// The destination AS is the last AS of the path (the origin), as NetFlow reports it; 0 when
/// the path is empty (a destination in the router's own AS, which NetFlow reports as 0 too).
fn gateway(rd: &mut Reader<'_>) -> Result<(u32, u32), DecodeError> {
    rd.address()?;
    let _router_as = rd.u32()?;
    let src_as = rd.u32()?;
    let _src_peer_as = rd.u32()?;
    let segments = rd.u32()?;
    // Each segment takes 8 bytes at least: refuse a count the record cannot hold before
    // looping on it.
    rd.check_count(segments, 8)?;
    let mut dst_as = 0;
    for _ in 0..segments {
        let _type = rd.u32()?;
        let n = rd.u32()?;
        rd.check_count(n, 4)?;
        for _ in 0..n {
            dst_as = rd.u32()?;
        }
    }
    let communities = rd.u32()?;
    rd.check_count(communities, 4)?;
    for _ in 0..communities {
        rd.u32()?;
    }
    let _localpref = rd.u32()?;
    Ok((src_as, dst_as))
}

/// Turns a counter sample into a record, or `None` when it carries neither generic nor
/// Ethernet interface counters.
fn counter_record(
    cs: CounterSample<'_>,
    base: &CounterRecord,
    tally: &mut Tally,
) -> Result<Option<CounterRecord>, DecodeError> {
    let mut c = *base;
    c.sample_sequence = cs.sequence_number;
    c.source_id_type = cs.source_id_type;
    c.source_id_index = cs.source_id_index;
    c.if_index = cs.source_id_index;

    for r in cs.records {
        let r = r?;
        let mut rd = Reader::new(r.data);
        match r.format {
            DataFormat::GENERIC_INTERFACE => {
                c.has_generic = 1;
                c.if_index = rd.u32()?;
                c.if_type = rd.u32()?;
                c.if_speed = rd.u64()?;
                c.if_direction = rd.u32()?;
                c.if_status = rd.u32()?;
                c.in_octets = rd.u64()?;
                c.in_unicast_pkts = rd.u32()?;
                c.in_multicast_pkts = rd.u32()?;
                c.in_broadcast_pkts = rd.u32()?;
                c.in_discards = rd.u32()?;
                c.in_errors = rd.u32()?;
                c.in_unknown_protos = rd.u32()?;
                c.out_octets = rd.u64()?;
                c.out_unicast_pkts = rd.u32()?;
                c.out_multicast_pkts = rd.u32()?;
                c.out_broadcast_pkts = rd.u32()?;
                c.out_discards = rd.u32()?;
                c.out_errors = rd.u32()?;
                c.promiscuous_mode = rd.u32()?;
            }
            DataFormat::ETHERNET_INTERFACE => {
                c.has_ethernet = 1;
                c.dot3_alignment_errors = rd.u32()?;
                c.dot3_fcs_errors = rd.u32()?;
                c.dot3_single_collision_frames = rd.u32()?;
                c.dot3_multiple_collision_frames = rd.u32()?;
                c.dot3_sqe_test_errors = rd.u32()?;
                c.dot3_deferred_transmissions = rd.u32()?;
                c.dot3_late_collisions = rd.u32()?;
                c.dot3_excessive_collisions = rd.u32()?;
                c.dot3_internal_mac_transmit_errors = rd.u32()?;
                c.dot3_carrier_sense_errors = rd.u32()?;
                c.dot3_frame_too_longs = rd.u32()?;
                c.dot3_internal_mac_receive_errors = rd.u32()?;
                c.dot3_symbol_errors = rd.u32()?;
            }
            _ => tally.unknown_records += 1,
        }
    }
    Ok((c.has_generic == 1 || c.has_ethernet == 1).then_some(c))
}

// ---------------------------------------------------------------------------------------------
// The sampled packet header.

/// Layer 3 and 4 fields of one packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L34 {
    /// 4, 6, or 0 when no IP header was reached.
    pub ip_version: u8,
    /// Source address, record form.
    pub src: [u8; 16],
    /// Destination address, record form.
    pub dst: [u8; 16],
    /// IP protocol (IPv6: the last next-header reached).
    pub protocol: u8,
    /// IPv4 ToS / IPv6 traffic class.
    pub tos: u8,
    /// Transport source port.
    pub src_port: u16,
    /// Transport destination port; ICMP: `type << 8 | code`.
    pub dst_port: u16,
    /// TCP flags (low 8 bits of the flags field).
    pub tcp_flags: u8,
    /// The header ended before a field this decoder looks for.
    pub truncated: bool,
}

impl L34 {
    fn apply(&self, rec: &mut FlowRecord) {
        rec.ip_version = self.ip_version;
        rec.src_addr = self.src;
        rec.dst_addr = self.dst;
        rec.protocol = self.protocol;
        rec.tos = self.tos;
        rec.src_port = self.src_port;
        rec.dst_port = self.dst_port;
        rec.tcp_flags = self.tcp_flags;
        rec.truncated = u8::from(self.truncated);
    }
}

/// Layer 2 facts of one sampled frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2 {
    /// VLAN id of the outermost 802.1Q / 802.1ad tag (0 when untagged).
    pub outer_vlan: u16,
    /// VLAN id of the second tag (QinQ customer VLAN; 0 when fewer than two tags).
    pub inner_vlan: u16,
    /// VLAN tags seen.
    pub vlan_tags: u8,
    /// Label of the top MPLS stack entry (0 when no MPLS).
    pub mpls_top_label: u32,
    /// MPLS stack entries seen.
    pub mpls_depth: u8,
}

/// `header_protocol` values of the raw packet header record.
pub mod header_protocol {
    /// "ETHERNET-ISO88023".
    pub const ETHERNET: u32 = 1;
    /// "IPv4".
    pub const IPV4: u32 = 11;
    /// "IPv6".
    pub const IPV6: u32 = 12;
}

/// EtherTypes the header walk follows.
mod ethertype {
    pub(super) const IPV4: u16 = 0x0800;
    pub(super) const IPV6: u16 = 0x86dd;
    pub(super) const VLAN: u16 = 0x8100;
    pub(super) const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ outer tag, still sent by some switches.
    pub(super) const QINQ_OLD: u16 = 0x9100;
    pub(super) const MPLS_UNICAST: u16 = 0x8847;
    pub(super) const MPLS_MULTICAST: u16 = 0x8848;
}

/// More VLAN tags or MPLS entries than this is not a real frame; the walk stops there. Each
/// tag or entry consumes 4 bytes, so the walk advances anyway; the bound only keeps nonsense
/// short.
const MAX_STACK: u8 = 8;
/// IPv6 extension headers followed before giving up.
const MAX_IPV6_EXTENSIONS: u8 = 8;

/// Decodes a sampled packet header down to the transport header.
///
/// Returns `None` for a header protocol flowplane does not decode. A header cut by the snap
/// length yields what it holds, with [`L34::truncated`] set.
pub fn decode_header(protocol: u32, header: &[u8]) -> Option<(L34, L2)> {
    let mut l2 = L2::default();
    let l34 = match protocol {
        header_protocol::ETHERNET => ethernet(header, &mut l2),
        header_protocol::IPV4 => ipv4(header),
        header_protocol::IPV6 => ipv6(header),
        _ => return None,
    };
    Some((l34, l2))
}

fn ethernet(frame: &[u8], l2: &mut L2) -> L34 {
    let truncated = L34 {
        truncated: true,
        ..L34::default()
    };
    let Some(mut ethertype) = be16(frame, 12) else {
        return truncated;
    };
    let mut at = 14;

    // 802.1Q / 802.1ad tags: TCI (PCP 3 bits, DEI 1, VID 12), then the next EtherType.
    while matches!(
        ethertype,
        ethertype::VLAN | ethertype::QINQ | ethertype::QINQ_OLD
    ) && l2.vlan_tags < MAX_STACK
    {
        let (Some(tci), Some(next)) = (be16(frame, at), be16(frame, at + 2)) else {
            return truncated;
        };
        let vid = tci & 0x0fff;
        match l2.vlan_tags {
            0 => l2.outer_vlan = vid,
            1 => l2.inner_vlan = vid,
            _ => {}
        }
        l2.vlan_tags += 1;
        ethertype = next;
        at += 4;
    }

    match ethertype {
        ethertype::IPV4 => ipv4(frame.get(at..).unwrap_or(&[])),
        ethertype::IPV6 => ipv6(frame.get(at..).unwrap_or(&[])),
        ethertype::MPLS_UNICAST | ethertype::MPLS_MULTICAST => mpls(frame, at, l2),
        // 802.3 lengths with LLC, ARP, and everything else: not IP.
        _ => L34::default(),
    }
}

/// Walks an MPLS label stack (RFC 3032 § 2.1: label 20 bits, TC 3, S 1, TTL 8), then guesses
/// the payload from its first nibble, as routers do for an explicit-null-free stack: 4 is
/// IPv4, 6 is IPv6, anything else (a pseudowire control word, Ethernet) stops the walk.
fn mpls(frame: &[u8], mut at: usize, l2: &mut L2) -> L34 {
    let truncated = L34 {
        truncated: true,
        ..L34::default()
    };
    loop {
        let Some(entry) = be32(frame, at) else {
            return truncated;
        };
        if l2.mpls_depth == 0 {
            l2.mpls_top_label = entry >> 12;
        }
        l2.mpls_depth += 1;
        at += 4;
        let bottom = entry & 0x100 != 0;
        if bottom {
            break;
        }
        if l2.mpls_depth >= MAX_STACK {
            return L34::default();
        }
    }
    let payload = frame.get(at..).unwrap_or(&[]);
    match payload.first().map(|b| b >> 4) {
        Some(4) => ipv4(payload),
        Some(6) => ipv6(payload),
        Some(_) => L34::default(),
        None => truncated,
    }
}

/// IPv4 (RFC 791): IHL, ToS, fragment offset, protocol, addresses; then the transport header
/// unless this is a non-first fragment.
fn ipv4(p: &[u8]) -> L34 {
    let mut l = L34 {
        truncated: true,
        ..L34::default()
    };
    let Some(hdr) = p.get(..20) else {
        return l;
    };
    if hdr[0] >> 4 != 4 {
        // Not IPv4 after all (an IPv4 EtherType over something else): nothing to read.
        return L34::default();
    }
    l.ip_version = 4;
    l.tos = hdr[1];
    l.protocol = hdr[9];
    l.src = v4_to_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
    l.dst = v4_to_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
    l.truncated = false;

    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    // A header length below the minimum is malformed: keep the addresses, skip the transport.
    if ihl < 20 {
        return l;
    }
    // "Fragment offset ... measured in units of 8 octets": a non-first fragment carries no
    // transport header.
    let fragment_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return l;
    }
    match p.get(ihl..) {
        Some(t) => transport(&mut l, t),
        None => l.truncated = true,
    }
    l
}

/// IPv6 (RFC 8200): traffic class, addresses, then the extension header chain to the
/// transport protocol.
fn ipv6(p: &[u8]) -> L34 {
    let mut l = L34 {
        truncated: true,
        ..L34::default()
    };
    let Some(hdr) = p.get(..40) else {
        return l;
    };
    if hdr[0] >> 4 != 6 {
        return L34::default();
    }
    l.ip_version = 6;
    l.tos = (hdr[0] & 0x0f) << 4 | hdr[1] >> 4;
    let mut next = hdr[6];
    l.src.copy_from_slice(&hdr[8..24]);
    l.dst.copy_from_slice(&hdr[24..40]);
    l.protocol = next;
    l.truncated = false;

    let mut at = 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        // Every extension header starts with next header and a length byte.
        let len = match next {
            // Hop-by-hop, routing, destination options: (Hdr Ext Len + 1) * 8 (RFC 8200 § 4.3).
            0 | 43 | 60 => {
                let Some(&n) = p.get(at + 1) else {
                    l.truncated = true;
                    return l;
                };
                (usize::from(n) + 1) * 8
            }
            // Fragment: 8 bytes; a non-first fragment carries no transport header (§ 4.5).
            44 => {
                let (Some(&nh), Some(off)) = (p.get(at), be16(p, at + 2)) else {
                    l.truncated = true;
                    return l;
                };
                l.protocol = nh;
                if off >> 3 != 0 {
                    return l;
                }
                8
            }
            // AH: (Payload Len + 2) * 4 (RFC 4302 § 2.2).
            51 => {
                let Some(&n) = p.get(at + 1) else {
                    l.truncated = true;
                    return l;
                };
                (usize::from(n) + 2) * 4
            }
            _ => break,
        };
        let Some(&nh) = p.get(at) else {
            l.truncated = true;
            return l;
        };
        next = nh;
        l.protocol = next;
        at += len;
    }
    match p.get(at..) {
        Some(t) => transport(&mut l, t),
        None => l.truncated = true,
    }
    l
}

/// Ports, TCP flags, ICMP type and code from the start of the transport header.
fn transport(l: &mut L34, t: &[u8]) {
    match l.protocol {
        // TCP: ports, then flags at offset 13 (RFC 9293 § 3.1).
        6 => {
            ports(l, t);
            match t.get(13) {
                Some(&f) => l.tcp_flags = f,
                None => l.truncated = true,
            }
        }
        // UDP, DCCP, SCTP, UDP-Lite: ports in the first four bytes.
        17 | 33 | 132 | 136 => ports(l, t),
        // ICMP, ICMPv6: type and code, in the destination port as NetFlow exporters do.
        1 | 58 => match t.get(..2) {
            Some(tc) => l.dst_port = u16::from_be_bytes([tc[0], tc[1]]),
            None => l.truncated = true,
        },
        _ => {}
    }
}

fn ports(l: &mut L34, t: &[u8]) {
    match (be16(t, 0), be16(t, 2)) {
        (Some(s), Some(d)) => {
            l.src_port = s;
            l.dst_port = d;
        }
        _ => l.truncated = true,
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

// ---------------------------------------------------------------------------------------------
// XDR reading.

/// A bounds-checked XDR reader over one record's data. Every read either returns the bytes or
/// [`DecodeError::TruncatedRecord`]; nothing indexes without a check.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn bytes(&mut self, n: u32) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(n).map_err(|_| DecodeError::TruncatedRecord)?;
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::TruncatedRecord)?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::TruncatedRecord)?;
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from(self.u32()?) << 32 | u64::from(self.u32()?))
    }

    fn array4(&mut self) -> Result<[u8; 4], DecodeError> {
        let b = self.bytes(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    fn array16(&mut self) -> Result<[u8; 16], DecodeError> {
        let mut o = [0u8; 16];
        o.copy_from_slice(self.bytes(16)?);
        Ok(o)
    }

    /// An sFlow `address`: type, then 4 or 16 bytes.
    fn address(&mut self) -> Result<[u8; 16], DecodeError> {
        match self.u32()? {
            field::ADDRESS_TYPE_IPV4 => Ok(v4_to_bytes(self.array4()?)),
            field::ADDRESS_TYPE_IPV6 => self.array16(),
            _ => Err(DecodeError::BadAddressType),
        }
    }

    /// XDR variable-length opaque: length, data, zero padding to a multiple of 4 (RFC 4506
    /// § 4.10). A length past the record is [`DecodeError::BadSampleLength`]; missing padding
    /// at the very end of the record is accepted (the data is whole).
    fn opaque(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()?;
        let data = self.bytes(n).map_err(|_| DecodeError::BadSampleLength)?;
        let pad = (4 - data.len() % 4) % 4;
        self.pos = self.pos.saturating_add(pad).min(self.buf.len());
        Ok(data)
    }

    /// Refuses a count of items of at least `size` bytes each that the rest cannot hold.
    fn check_count(&self, count: u32, size: usize) -> Result<(), DecodeError> {
        let left = self.buf.len() - self.pos;
        match usize::try_from(count) {
            Ok(c) if c <= left / size => Ok(()),
            _ => Err(DecodeError::BadCount),
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::sflow::*;
    use crate::{IF_FORMAT_DISCARDED, IF_FORMAT_IFINDEX, IF_FORMAT_MULTIPLE};

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    #[derive(Default)]
    struct Collect {
        flows: Vec<FlowRecord>,
        counters: Vec<CounterRecord>,
        drops: Vec<(u64, u32)>,
    }

    impl Sink for Collect {
        fn flow(&mut self, rec: &FlowRecord) {
            self.flows.push(*rec);
        }
        fn counter(&mut self, rec: &CounterRecord) {
            self.counters.push(*rec);
        }
        fn drops(&mut self, source: u64, drops: u32) {
            self.drops.push((source, drops));
        }
    }

    fn base() -> FlowRecord {
        FlowRecord {
            exporter: v4_to_bytes([192, 0, 2, 9]),
            exporter_port: 6343,
            sampling_rate: 1,
            ..FlowRecord::default()
        }
    }

    fn run(dg: &[u8]) -> (Result<(), DecodeError>, Collect, Tally) {
        let mut c = Collect::default();
        let mut t = Tally::default();
        let out = Packet::new_checked(dg).and_then(|p| parse(&p, &base(), 777, &mut t, &mut c));
        (out, c, t)
    }

    /// One compact flow sample around one raw header record.
    fn one_raw(protocol: u32, header: &[u8]) -> Vec<u8> {
        let fs = flow_sample(
            1,
            3,
            512,
            9_000,
            0,
            3,
            4,
            &[raw_header(protocol, 1518, header)],
        );
        datagram(&A, 7, 100, &[fs])
    }

    fn one_flow(protocol: u32, header: &[u8]) -> FlowRecord {
        let (out, c, _) = run(&one_raw(protocol, header));
        assert_eq!(out, Ok(()));
        assert_eq!(c.flows.len(), 1);
        c.flows[0]
    }

    fn tcp_v4_frame() -> Vec<u8> {
        eth(
            &[],
            0x0800,
            &ipv4_pkt(6, A, B, 0xb8, 0x4000, 0, &tcp(40_000, 443, 0x18)),
        )
    }

    #[test]
    fn reads_every_header_field() {
        let dg = datagram(&A, 7, 100, &[]);
        let p = Packet::new_checked(&dg[..]).unwrap();
        assert_eq!(p.version(), 5);
        assert_eq!(p.address_type(), 1);
        assert_eq!(p.agent_address().to_string(), "10.0.0.1");
        assert_eq!(p.sub_agent_id(), 7);
        assert_eq!(p.sequence_number(), 100);
        assert_eq!(p.uptime(), 123_456);
        assert_eq!(p.sample_count(), 0);
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.samples().count(), 0);

        let v6: [u8; 16] = "2001:db8::5".parse::<Ipv6Addr>().unwrap().octets();
        let dg = datagram(&v6, 1, 2, &[]);
        let p = Packet::new_checked(&dg[..]).unwrap();
        assert_eq!(p.agent_address().to_string(), "2001:db8::5");
        assert_eq!((p.sub_agent_id(), p.sequence_number()), (1, 2));
        assert_eq!(p.header_len(), 40);
    }

    #[test]
    fn parses_a_flow_sample_with_an_ethernet_tcp_header() {
        let r = one_flow(1, &tcp_v4_frame());
        assert_eq!(r.flow_format(), FlowFormat::Sflow);
        assert_eq!(
            (r.src_ip().to_string(), r.dst_ip().to_string()),
            ("10.0.0.1".into(), "10.0.0.2".into())
        );
        assert_eq!((r.ip_version, r.protocol, r.tos), (4, 6, 0xb8));
        assert_eq!((r.src_port, r.dst_port, r.tcp_flags), (40_000, 443, 0x18));
        assert_eq!((r.bytes, r.packets, r.sampling_rate), (1518, 1, 512));
        assert_eq!((r.input_if, r.output_if), (3, 4));
        assert_eq!(
            (r.input_if_format, r.output_if_format),
            (IF_FORMAT_IFINDEX, IF_FORMAT_IFINDEX)
        );
        assert_eq!((r.domain_id, r.start_ms, r.end_ms), (7, 777, 777));
        assert_eq!(
            (r.exporter_ip().to_string(), r.exporter_port),
            ("192.0.2.9".into(), 6343)
        );
        assert_eq!((r.src_vlan, r.dst_vlan, r.truncated), (0, 0, 0));
    }

    #[test]
    fn reads_compact_interface_formats() {
        let h = raw_header(1, 64, &tcp_v4_frame());
        for (input, output, want) in [
            // Discarded, reason 258 (ACL); multiple, 7 interfaces; internal (0x3fff_ffff).
            (
                5,
                0x4000_0102,
                ((IF_FORMAT_IFINDEX, 5), (IF_FORMAT_DISCARDED, 258)),
            ),
            (
                5,
                0x8000_0007,
                ((IF_FORMAT_IFINDEX, 5), (IF_FORMAT_MULTIPLE, 7)),
            ),
            (
                0x3fff_ffff,
                9,
                ((IF_FORMAT_IFINDEX, 0x3fff_ffff), (IF_FORMAT_IFINDEX, 9)),
            ),
        ] {
            let fs = flow_sample(1, 0, 1, 1, 0, input, output, std::slice::from_ref(&h));
            let (out, c, _) = run(&datagram(&A, 0, 1, &[fs]));
            assert_eq!(out, Ok(()));
            let r = &c.flows[0];
            let got = (
                (r.input_if_format, r.input_if),
                (r.output_if_format, r.output_if),
            );
            assert_eq!(got, want);
        }
    }

    #[test]
    fn parses_an_expanded_flow_sample() {
        let h = raw_header(1, 100, &tcp_v4_frame());
        let fs = flow_sample_expanded(9, (0, 70_000), 4096, (0, 70_000), (2, 3), &[h]);
        let data = &fs[8..];
        let s = FlowSample::parse(data, true).unwrap();
        assert_eq!(
            (s.sequence_number, s.source_id_type, s.source_id_index),
            (9, 0, 70_000)
        );
        assert_eq!((s.sampling_rate, s.sample_pool, s.drops), (4096, 1_000, 0));
        assert_eq!(
            s.output,
            Interface {
                format: 2,
                value: 3
            }
        );

        let (out, c, t) = run(&datagram(&A, 0, 1, &[fs]));
        assert_eq!(out, Ok(()));
        let r = &c.flows[0];
        // The expanded form holds interface indices above 2^30 - 1 without losing bits.
        assert_eq!(
            (r.input_if, r.output_if, r.output_if_format),
            (70_000, 3, IF_FORMAT_MULTIPLE)
        );
        assert_eq!((r.sampling_rate, r.bytes), (4096, 100));
        assert_eq!(t.flow_samples, 1);
        assert_eq!(c.drops, vec![(70_000, 0)]);
    }

    #[test]
    fn saturates_an_unknown_expanded_interface_format() {
        let h = raw_header(1, 100, &tcp_v4_frame());
        let fs = flow_sample_expanded(1, (0, 1), 1, (7, 1), (0x1_0000, 2), &[h]);
        let (_, c, _) = run(&datagram(&A, 0, 1, &[fs]));
        assert_eq!(
            (c.flows[0].input_if_format, c.flows[0].output_if_format),
            (7, 255)
        );
    }

    #[test]
    fn walks_vlan_tags() {
        let ip = ipv4_pkt(17, A, B, 0, 0, 0, &udp(53, 5353));
        for (tags, outer, inner) in [
            (vec![(0x8100, 0x2064)], 100, 0),
            (vec![(0x88a8, 0x0010), (0x8100, 0x0020)], 16, 32),
            (vec![(0x9100, 0x0fff), (0x8100, 0x0001)], 4095, 1),
        ] {
            let frame = eth(&tags, 0x0800, &ip);
            let (l34, l2) = decode_header(1, &frame).unwrap();
            assert_eq!((l2.outer_vlan, l2.inner_vlan), (outer, inner));
            assert_eq!(usize::from(l2.vlan_tags), tags.len());
            assert_eq!((l34.src_port, l34.dst_port, l34.protocol), (53, 5353, 17));
            // Without an extended switch record, the outer tag is the source VLAN.
            assert_eq!(one_flow(1, &frame).src_vlan, outer);
        }
    }

    #[test]
    fn walks_mpls_label_stacks() {
        let ip4 = ipv4_pkt(6, A, B, 0, 0, 0, &tcp(1, 2, 0x02));
        // Two entries: label 16 (TC 0, S 0, TTL 64), label 0xfffff (S 1).
        let mut stack = vec![0x00, 0x01, 0x00, 0x40, 0xff, 0xff, 0xf1, 0x40];
        stack.extend_from_slice(&ip4);
        let (l34, l2) = decode_header(1, &eth(&[], 0x8847, &stack)).unwrap();
        assert_eq!((l2.mpls_top_label, l2.mpls_depth), (16, 2));
        assert_eq!((l34.ip_version, l34.src_port, l34.tcp_flags), (4, 1, 0x02));

        let v6 = ipv6_pkt(17, [1; 16], [2; 16], 0, &udp(7, 8));
        let mut stack = vec![0x00, 0x02, 0x01, 0x40];
        stack.extend_from_slice(&v6);
        let (l34, l2) = decode_header(1, &eth(&[(0x8100, 5)], 0x8848, &stack)).unwrap();
        assert_eq!((l2.mpls_top_label, l2.outer_vlan), (32, 5));
        assert_eq!((l34.ip_version, l34.dst_port), (6, 8));

        // A pseudowire control word (first nibble 0) is not guessed as IP.
        let stack = [0x00, 0x02, 0x01, 0x40, 0x00, 0x00, 0x00, 0x00];
        let (l34, _) = decode_header(1, &eth(&[], 0x8847, &stack)).unwrap();
        assert_eq!((l34.ip_version, l34.truncated), (0, false));
        // A stack that never reaches its bottom within the frame is truncated.
        let (l34, l2) = decode_header(1, &eth(&[], 0x8847, &[0, 1, 0, 0x40])).unwrap();
        assert_eq!((l34.truncated, l2.mpls_depth), (true, 1));
        // A stack deeper than the bound stops without reading further.
        let deep: Vec<u8> = std::iter::repeat_n([0u8, 1, 0, 0x40], 20)
            .flatten()
            .collect();
        let (l34, l2) = decode_header(1, &eth(&[], 0x8847, &deep)).unwrap();
        assert_eq!((l34.ip_version, l2.mpls_depth), (0, MAX_STACK));
    }

    #[test]
    fn reads_ipv4_options_and_fragments() {
        let with_options = ipv4_pkt(17, A, B, 0, 0, 2, &udp(1000, 2000));
        let (l, _) = decode_header(11, &with_options).unwrap();
        assert_eq!((l.src_port, l.dst_port, l.truncated), (1000, 2000, false));

        // First fragment (MF set, offset 0): ports present.
        let (l, _) = decode_header(11, &ipv4_pkt(17, A, B, 0, 0x2000, 0, &udp(1, 2))).unwrap();
        assert_eq!((l.src_port, l.dst_port), (1, 2));
        // Non-first fragment: no transport header, and nothing is missing.
        let (l, _) = decode_header(11, &ipv4_pkt(17, A, B, 0, 0x00b9, 0, &udp(1, 2))).unwrap();
        assert_eq!(
            (l.protocol, l.src_port, l.dst_port, l.truncated),
            (17, 0, 0, false)
        );
        // IHL below 5 is malformed: addresses kept, transport not read.
        let mut bad = ipv4_pkt(17, A, B, 0, 0, 0, &udp(1, 2));
        bad[0] = 0x44;
        let (l, _) = decode_header(11, &bad).unwrap();
        assert_eq!((l.ip_version, l.src_port), (4, 0));
        // A version nibble that is not 4 is not IPv4.
        bad[0] = 0x65;
        assert_eq!(decode_header(11, &bad).unwrap().0, L34::default());
    }

    #[test]
    fn walks_ipv6_extension_headers() {
        let src: [u8; 16] = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let dst: [u8; 16] = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        // hop-by-hop (8) -> routing (16) -> fragment (8, offset 0) -> dest opts (8) -> AH (16)
        // -> TCP.
        let mut ext = vec![43, 0, 0, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&[44, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 1]);
        ext.extend_from_slice(&[51, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[6, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&tcp(22, 50_000, 0x10));
        let pkt = ipv6_pkt(0, src, dst, 0xa4, &ext);
        let (l, _) = decode_header(12, &pkt).unwrap();
        assert_eq!((l.ip_version, l.tos, l.protocol), (6, 0xa4, 6));
        assert_eq!(
            (l.src_port, l.dst_port, l.tcp_flags, l.truncated),
            (22, 50_000, 0x10, false)
        );
        assert_eq!((l.src, l.dst), (src, dst));

        // Non-first fragment: the fragment header's next header, no ports.
        let mut frag = vec![17, 0, 0x01, 0x00, 0, 0, 0, 1];
        frag.extend_from_slice(&udp(1, 2));
        let (l, _) = decode_header(12, &ipv6_pkt(44, src, dst, 0, &frag)).unwrap();
        assert_eq!((l.protocol, l.src_port, l.truncated), (17, 0, false));

        // An extension header cut by the snap length.
        let pkt = ipv6_pkt(0, src, dst, 0, &[43]);
        let (l, _) = decode_header(12, &pkt).unwrap();
        assert_eq!((l.protocol, l.truncated), (0, true));
    }

    #[test]
    fn encodes_icmp_type_and_code_in_the_destination_port() {
        let echo = [8u8, 0, 0xf7, 0xff, 0, 1, 0, 1];
        let r = one_flow(1, &eth(&[], 0x0800, &ipv4_pkt(1, A, B, 0, 0, 0, &echo)));
        assert_eq!((r.protocol, r.src_port, r.dst_port), (1, 0, 0x0800));
        let unreachable = [1u8, 4, 0, 0, 0, 0, 0, 0];
        let v6 = ipv6_pkt(58, [1; 16], [2; 16], 0, &unreachable);
        let r = one_flow(1, &eth(&[], 0x86dd, &v6));
        assert_eq!((r.ip_version, r.protocol, r.dst_port), (6, 58, 0x0104));
    }

    #[test]
    fn decodes_ip_header_protocols_and_skips_others() {
        let r = one_flow(11, &ipv4_pkt(17, A, B, 0, 0, 0, &udp(1, 2)));
        assert_eq!((r.ip_version, r.src_port, r.bytes), (4, 1, 1518));
        let r = one_flow(12, &ipv6_pkt(6, [1; 16], [2; 16], 0, &tcp(3, 4, 0x01)));
        assert_eq!((r.ip_version, r.dst_port, r.tcp_flags), (6, 4, 0x01));

        // PPP (7): not decoded, counted; the sample is still a record with its frame length.
        let (out, c, t) = run(&one_raw(7, &[0xff, 0x03, 0x00, 0x21]));
        assert_eq!(out, Ok(()));
        assert_eq!(t.unknown_header_protocols, 1);
        assert_eq!((c.flows[0].bytes, c.flows[0].ip_version), (1518, 0));
        // Not IP at all (ARP): no addresses, nothing missing.
        let r = one_flow(1, &eth(&[], 0x0806, &[0; 28]));
        assert_eq!((r.ip_version, r.truncated), (0, 0));
    }

    #[test]
    fn a_header_cut_by_the_snap_length_yields_what_it_holds() {
        let full = eth(
            &[(0x8100, 10)],
            0x0800,
            &ipv4_pkt(6, A, B, 4, 0, 0, &tcp(80, 81, 0x12)),
        );
        let want = one_flow(1, &full);
        assert_eq!(want.truncated, 0);
        // The flags byte is the last field read: byte 13 of the TCP header.
        let flags_end = 18 + 20 + 14;
        for n in flags_end..full.len() {
            assert_eq!(one_flow(1, &full[..n]), want, "cut at {n}");
        }
        for n in 0..flags_end {
            let r = one_flow(1, &full[..n]);
            // Everything the header holds is read; what it does not reach stays 0.
            assert_eq!(r.truncated, 1, "cut at {n}");
            assert_eq!(r.bytes, 1518);
            if n >= 18 + 20 {
                assert_eq!(
                    (r.src_addr, r.dst_addr, r.protocol),
                    (want.src_addr, want.dst_addr, 6)
                );
            } else {
                assert_eq!(r.ip_version, 0, "cut at {n}");
            }
            if n >= 18 + 20 + 4 {
                assert_eq!((r.src_port, r.dst_port), (80, 81));
            } else {
                assert_eq!((r.src_port, r.dst_port), (0, 0));
            }
            assert_eq!(r.tcp_flags, 0);
        }
    }

    #[test]
    fn prefers_the_raw_header_to_the_sampled_ip_record() {
        let v4 = entry(
            3,
            &words(&[
                1000,
                17,
                u32::from_be_bytes([9, 9, 9, 9]),
                u32::from_be_bytes([8, 8, 8, 8]),
                5,
                6,
                0,
                0x20,
            ]),
        );
        let raw = raw_header(1, 1518, &tcp_v4_frame());
        let fs = flow_sample(1, 0, 10, 0, 0, 1, 2, &[v4.clone(), raw]);
        let (_, c, _) = run(&datagram(&A, 0, 1, &[fs]));
        let r = &c.flows[0];
        assert_eq!(
            (r.src_ip().to_string(), r.protocol, r.dst_port, r.bytes),
            ("10.0.0.1".into(), 6, 443, 1518)
        );

        // A raw header that reached no IP header (ARP) yields to the sampled IPv4 record.
        let arp = raw_header(1, 60, &eth(&[], 0x0806, &[0; 28]));
        let fs = flow_sample(1, 0, 10, 0, 0, 1, 2, &[arp, v4.clone()]);
        let (_, c, _) = run(&datagram(&A, 0, 1, &[fs]));
        let r = &c.flows[0];
        assert_eq!((r.src_ip().to_string(), r.bytes), ("9.9.9.9".into(), 60));

        // Alone, the sampled IPv4 record gives the flow, with its (layer-3) length as bytes.
        let fs = flow_sample(1, 0, 10, 0, 0, 1, 2, &[v4]);
        let (_, c, _) = run(&datagram(&A, 0, 1, &[fs]));
        let r = &c.flows[0];
        assert_eq!(
            (r.src_ip().to_string(), r.dst_ip().to_string()),
            ("9.9.9.9".into(), "8.8.8.8".into())
        );
        assert_eq!(
            (
                r.protocol,
                r.src_port,
                r.dst_port,
                r.tcp_flags,
                r.tos,
                r.bytes
            ),
            (17, 5, 6, 0, 0x20, 1000)
        );

        // Sampled IPv6; Ethernet frame data gives the length when there is no raw header.
        let mut d = words(&[1400, 6]);
        d.extend_from_slice(&[1; 16]);
        d.extend_from_slice(&[2; 16]);
        d.extend_from_slice(&words(&[443, 1234, 0x11, 0x28]));
        let v6 = entry(4, &d);
        let ethernet = entry(
            2,
            &words(&[
                1418,
                0x0200_0000,
                0x0001_0000,
                0x0200_0000,
                0x0002_0000,
                0x86dd,
            ]),
        );
        let fs = flow_sample(1, 0, 10, 0, 0, 1, 2, &[v6, ethernet]);
        let (_, c, _) = run(&datagram(&A, 0, 1, &[fs]));
        let r = &c.flows[0];
        assert_eq!(
            (
                r.ip_version,
                r.src_addr,
                r.protocol,
                r.tcp_flags,
                r.tos,
                r.bytes
            ),
            (6, [1; 16], 6, 0x11, 0x28, 1418)
        );
    }

    #[test]
    fn reads_extended_switch_router_and_gateway() {
        let switch = entry(1001, &words(&[100, 3, 200, 5]));
        let router = entry(
            1002,
            &words(&[1, u32::from_be_bytes([10, 0, 0, 254]), 24, 16]),
        );
        // Next hop IPv6; path: AS_SET {1, 2}, AS_SEQUENCE [3, 4, 65_001]; 2 communities.
        let mut g = words(&[2]);
        g.extend_from_slice(&[0xfe; 16]);
        g.extend_from_slice(&words(&[
            64_500, 64_501, 64_502, 2, 1, 2, 1, 2, 2, 3, 3, 4, 65_001, 2, 7, 8, 100,
        ]));
        let gateway = entry(1003, &g);
        let raw = raw_header(
            1,
            90,
            &eth(
                &[(0x8100, 7)],
                0x0800,
                &ipv4_pkt(6, A, B, 0, 0, 0, &tcp(1, 2, 0)),
            ),
        );
        let fs = flow_sample(1, 0, 1, 0, 0, 1, 2, &[switch, raw, gateway, router]);
        let (out, c, t) = run(&datagram(&A, 0, 1, &[fs]));
        assert_eq!((out, t.unknown_records), (Ok(()), 0));
        let r = &c.flows[0];
        // The extended switch record wins over the frame's tag.
        assert_eq!((r.src_vlan, r.dst_vlan), (100, 200));
        assert_eq!((r.src_mask, r.dst_mask), (24, 16));
        assert_eq!((r.src_as, r.dst_as), (64_501, 65_001));

        // VLAN "unknown" (0xffff_ffff) and out-of-range ids are 0, not 4095.
        let switch = entry(1001, &words(&[u32::MAX, 0, 0x1001, 0]));
        let fs = flow_sample(1, 0, 1, 0, 0, 1, 2, &[switch]);
        let (_, c, _) = run(&datagram(&A, 0, 1, &[fs]));
        assert_eq!((c.flows[0].src_vlan, c.flows[0].dst_vlan), (0, 0));

        // An empty path: dst_as 0.
        let g = entry(1003, &words(&[1, 0, 1, 2, 3, 0, 0, 0]));
        let fs = flow_sample(1, 0, 1, 0, 0, 1, 2, &[g]);
        let (out, c, _) = run(&datagram(&A, 0, 1, &[fs]));
        assert_eq!(out, Ok(()));
        assert_eq!((c.flows[0].src_as, c.flows[0].dst_as), (2, 0));
    }

    #[test]
    fn refuses_gateway_counts_the_record_cannot_hold() {
        for w in [
            // 1000 segments in a record that holds none.
            vec![1, 0, 1, 2, 3, 1000, 0, 0],
            // One segment claiming 2^30 ASNs.
            vec![1, 0, 1, 2, 3, 1, 2, 0x4000_0000, 0, 0],
            // 2^32 - 1 communities.
            vec![1, 0, 1, 2, 3, 0, u32::MAX, 0],
        ] {
            let fs = flow_sample(1, 0, 1, 0, 0, 1, 2, &[entry(1003, &words(&w))]);
            let (out, c, _) = run(&datagram(&A, 0, 1, &[fs]));
            assert_eq!(out, Err(DecodeError::BadCount), "{w:?}");
            assert!(c.flows.is_empty());
        }
        // A next hop of an unknown address type.
        let fs = flow_sample(1, 0, 1, 0, 0, 1, 2, &[entry(1002, &words(&[3, 0, 0, 0]))]);
        assert_eq!(
            run(&datagram(&A, 0, 1, &[fs])).0,
            Err(DecodeError::BadAddressType)
        );
    }

    #[test]
    fn parses_counter_samples() {
        let unknown = entry(2001, &words(&[1, 2]));
        let cs = counter_sample(
            false,
            17,
            (0, 5),
            &[generic_counters(5), unknown, ethernet_counters()],
        );
        let xcs = counter_sample(true, 18, (0, 70_000), &[ethernet_counters()]);
        let only_unknown = counter_sample(false, 19, (0, 6), &[entry(4_413 << 12 | 5, &[0; 8])]);
        let (out, c, t) = run(&datagram(&A, 3, 1, &[cs, xcs, only_unknown]));
        assert_eq!(out, Ok(()));
        assert_eq!(
            (t.counter_samples, t.unknown_records, c.counters.len()),
            (2, 2, 2)
        );

        let g = &c.counters[0];
        assert_eq!(g.agent_ip().to_string(), "10.0.0.1");
        assert_eq!(g.exporter_ip().to_string(), "192.0.2.9");
        assert_eq!(
            (g.sub_agent_id, g.uptime_ms, g.time_ms, g.exporter_port),
            (3, 123_456, 777, 6343)
        );
        assert_eq!(
            (g.sample_sequence, g.source_id_type, g.source_id_index),
            (17, 0, 5)
        );
        assert_eq!((g.if_index, g.if_type, g.if_speed), (5, 6, 10_000_000_000));
        assert_eq!((g.if_direction, g.if_status), (1, 3));
        assert_eq!((g.in_octets, g.out_octets), (0x1_0000_0001, 0x2_0000_0002));
        assert_eq!(
            [
                g.in_unicast_pkts,
                g.in_multicast_pkts,
                g.in_broadcast_pkts,
                g.in_discards,
                g.in_errors,
                g.in_unknown_protos
            ],
            [11, 12, 13, 14, 15, 16]
        );
        assert_eq!(
            [
                g.out_unicast_pkts,
                g.out_multicast_pkts,
                g.out_broadcast_pkts,
                g.out_discards,
                g.out_errors,
                g.promiscuous_mode
            ],
            [21, 22, 23, 24, 25, 2]
        );
        assert_eq!((g.dot3_alignment_errors, g.dot3_symbol_errors), (101, 113));
        assert_eq!(
            (g.dot3_frame_too_longs, g.dot3_internal_mac_receive_errors),
            (111, 112)
        );
        assert_eq!((g.has_generic, g.has_ethernet), (1, 1));

        // Ethernet counters only: the ifIndex is the source index.
        let e = &c.counters[1];
        assert_eq!(
            (e.source_id_index, e.if_index, e.has_generic, e.has_ethernet),
            (70_000, 70_000, 0, 1)
        );
        assert_eq!((e.sample_sequence, e.in_octets), (18, 0));
    }

    #[test]
    fn skips_and_counts_unknown_samples_and_records() {
        let unknown_sample = entry(4_413 << 12 | 1, &[0xee; 12]);
        let foreign_record = entry(8_800 << 12 | 1, &[0xee; 8]);
        let fs = flow_sample(
            1,
            0,
            1,
            0,
            0,
            1,
            2,
            &[foreign_record, raw_header(1, 60, &tcp_v4_frame())],
        );
        let (out, c, t) = run(&datagram(&A, 0, 1, &[unknown_sample, fs]));
        assert_eq!(out, Ok(()));
        assert_eq!(
            (t.unknown_samples, t.unknown_records, t.flow_samples),
            (1, 1, 1)
        );
        assert_eq!(c.flows[0].dst_port, 443);
    }

    #[test]
    fn consumes_a_sample_up_to_its_declared_length() {
        // A flow sample with 12 bytes of trailing junk after its records, then another sample.
        let mut fs = flow_sample(1, 0, 1, 0, 0, 1, 2, &[raw_header(1, 60, &tcp_v4_frame())]);
        fs.extend_from_slice(&[0xab; 12]);
        let len = u32::try_from(fs.len() - 8).unwrap();
        fs[4..8].copy_from_slice(&len.to_be_bytes());
        let second = flow_sample(2, 0, 1, 0, 0, 1, 2, &[]);
        let (out, c, _) = run(&datagram(&A, 0, 1, &[fs, second]));
        assert_eq!(out, Ok(()));
        assert_eq!(c.flows.len(), 2);
        // Bytes after the last sample are ignored as well.
        let mut dg = datagram(&A, 0, 1, &[flow_sample(2, 0, 1, 0, 0, 1, 2, &[])]);
        dg.extend_from_slice(&[0; 5]);
        assert_eq!(run(&dg).0, Ok(()));
    }

    #[test]
    fn refuses_malformed_framing() {
        let good = flow_sample(1, 0, 1, 0, 0, 1, 2, &[raw_header(1, 60, &tcp_v4_frame())]);
        let dg = |samples: &[Vec<u8>]| datagram(&A, 0, 1, samples);

        // Sample length past the datagram.
        let mut long = good.clone();
        long[7] = long[7].wrapping_add(8);
        assert_eq!(run(&dg(&[long])).0, Err(DecodeError::BadSampleLength));
        // Sample length not a multiple of 4.
        let mut odd = good.clone();
        odd[7] = odd[7].wrapping_sub(1);
        assert_eq!(run(&dg(&[odd])).0, Err(DecodeError::BadSampleLength));
        // Sample count larger than the datagram can hold.
        let mut many = dg(std::slice::from_ref(&good));
        many[27] = 9;
        assert_eq!(run(&many).0, Err(DecodeError::BadCount));
        many[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(run(&many).0, Err(DecodeError::BadCount));
        // Two samples announced, one 40-byte sample present: the second header is missing.
        let mut two = dg(&[flow_sample(1, 0, 1, 0, 0, 1, 2, &[])]);
        two[27] = 2;
        two.extend_from_slice(&[0; 4]);
        assert_eq!(run(&two).0, Err(DecodeError::BadCount));
        // Agent address type 0 (unknown) or 3.
        for t in [0u8, 3] {
            let mut bad = dg(&[]);
            bad[7] = t;
            assert_eq!(run(&bad).0, Err(DecodeError::BadAddressType));
        }
        // Record count larger than the sample can hold.
        let fs = entry(1, &words(&[1, 0, 1, 0, 0, 1, 2, 5]));
        assert_eq!(run(&dg(&[fs])).0, Err(DecodeError::BadCount));
        // Flow sample shorter than its fixed part.
        assert_eq!(
            run(&dg(&[entry(1, &words(&[1, 2, 3]))])).0,
            Err(DecodeError::TruncatedRecord)
        );
        // Sampled header longer than its record.
        let mut raw = raw_header(1, 60, &[0; 8]);
        raw[23] = 200;
        let fs = flow_sample(1, 0, 1, 0, 0, 1, 2, &[raw]);
        assert_eq!(run(&dg(&[fs])).0, Err(DecodeError::BadSampleLength));
        // Known records shorter than their layout.
        for rec in [
            entry(1001, &words(&[1, 2, 3])),
            entry(3, &words(&[1; 7])),
            entry(4, &words(&[1; 13])),
            entry(2, &words(&[1; 5])),
        ] {
            let fs = flow_sample(1, 0, 1, 0, 0, 1, 2, &[rec]);
            assert_eq!(run(&dg(&[fs])).0, Err(DecodeError::TruncatedRecord));
        }
        let cs = counter_sample(false, 1, (0, 1), &[entry(1, &words(&[1; 21]))]);
        assert_eq!(run(&dg(&[cs])).0, Err(DecodeError::TruncatedRecord));
        let cs = counter_sample(true, 1, (0, 1), &[entry(2, &words(&[1; 12]))]);
        assert_eq!(run(&dg(&[cs])).0, Err(DecodeError::TruncatedRecord));
    }

    #[test]
    fn an_error_ends_the_datagram_after_the_samples_before_it() {
        let good = flow_sample(1, 0, 1, 0, 0, 1, 2, &[raw_header(1, 60, &tcp_v4_frame())]);
        let bad = flow_sample(2, 0, 1, 0, 0, 1, 2, &[entry(1001, &words(&[1]))]);
        let (out, c, t) = run(&datagram(&A, 0, 1, &[good.clone(), bad, good]));
        assert_eq!(out, Err(DecodeError::TruncatedRecord));
        assert_eq!((c.flows.len(), t.flow_samples), (1, 1));
    }

    #[test]
    fn every_truncation_of_a_valid_datagram_is_an_error_or_fewer_records() {
        let v6: [u8; 16] = "2001:db8::5".parse::<Ipv6Addr>().unwrap().octets();
        let fs = flow_sample(
            1,
            0,
            64,
            0,
            0,
            1,
            2,
            &[
                entry(1001, &words(&[1, 0, 2, 0])),
                raw_header(1, 60, &tcp_v4_frame()),
            ],
        );
        let xfs = flow_sample_expanded(
            2,
            (0, 3),
            64,
            (0, 3),
            (1, 4),
            &[raw_header(
                12,
                80,
                &ipv6_pkt(17, [1; 16], [2; 16], 0, &udp(1, 2)),
            )],
        );
        let cs = counter_sample(true, 3, (0, 9), &[generic_counters(9), ethernet_counters()]);
        for dg in [
            datagram(&A, 0, 1, &[fs.clone(), xfs.clone(), cs.clone()]),
            datagram(&v6, 0, 1, &[cs, xfs, fs]),
        ] {
            let (out, full, _) = run(&dg);
            assert_eq!(out, Ok(()));
            let total = full.flows.len() + full.counters.len();
            assert_eq!(total, 3);
            for n in 0..dg.len() {
                let (out, c, _) = run(&dg[..n]);
                let got = c.flows.len() + c.counters.len();
                assert!(
                    out.is_err() || got < total,
                    "cut at {n}: {out:?}, {got} records"
                );
                assert!(got < total, "cut at {n}");
                // What was emitted is a prefix of the full decode.
                assert_eq!(c.flows[..], full.flows[..c.flows.len()]);
            }
        }
    }
}
