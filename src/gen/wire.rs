//! Export datagrams built from [`Flow`]s, byte for byte as the specifications lay them out:
//! NetFlow v5 (Cisco's version 5 export format), NetFlow v9 ([RFC 3954]), IPFIX ([RFC 7011])
//! and sFlow version 5 (sFlow.org, July 2004).
//!
//! An [`Encoder`] stands for one exporter. It builds a template datagram (v9 and IPFIX) and data
//! datagrams; [`stamp`] then writes the fields that change from one send to the next (sequence,
//! export time, uptime) into a prebuilt datagram, so that a generator can build its datagrams
//! once and send them many times.
//!
//! # What the datagrams hold
//!
//! * **NetFlow v5**: one header and one 48-byte record per flow (IPv4 only, at most 30).
//! * **NetFlow v9 / IPFIX**: template 256 describes IPv4 flows, template 257 IPv6 flows (the
//!   fields are listed at [`V9_V4_FIELDS`] and [`IPFIX_V4_FIELDS`]). A data datagram holds one
//!   set for the IPv4 flows, then one for the IPv6 flows, each in the order given.
//! * **sFlow**: one flow sample per flow, carrying a raw packet header record: an Ethernet frame
//!   with an IPv4 or IPv6 header and a TCP, UDP or ICMP header built from the flow. Each sample
//!   stands for one packet of the flow (`packets = 1` once decoded); its frame length is the
//!   flow's mean packet size (see [`frame_length`]).
//!
//! # Flow times
//!
//! Record times follow the send, not the build: [`stamp`] writes, in every record, a start one
//! second before the export time and an end at the export time (v5 and v9 as sysUptime
//! milliseconds, `first = uptime - 1000` saturating at 0, `last = uptime`; IPFIX as
//! flowStartMilliseconds / flowEndMilliseconds). That is 2 writes per record, at most 60 for a
//! full v5 datagram: cheap next to the send. A datagram that was never stamped carries
//! [`BUILD_UNIX_SECS`] and [`BUILD_UPTIME_MS`].
//!
//! [RFC 3954]: https://www.rfc-editor.org/rfc/rfc3954
//! [RFC 7011]: https://www.rfc-editor.org/rfc/rfc7011

use std::net::{IpAddr, Ipv4Addr};

/// Export format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Cisco NetFlow version 5.
    V5,
    /// NetFlow version 9 (RFC 3954).
    V9,
    /// IPFIX (RFC 7011).
    Ipfix,
    /// sFlow version 5.
    Sflow,
}

/// One flow record to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Source address; same family as `dst`.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source transport port (0 for ICMP).
    pub src_port: u16,
    /// Destination transport port; for ICMP `type << 8 | code`, as NetFlow exporters write it.
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Cumulative TCP flags.
    pub tcp_flags: u8,
    /// IPv4 ToS / IPv6 traffic class.
    pub tos: u8,
    /// Input interface index.
    pub input_if: u32,
    /// Output interface index.
    pub output_if: u32,
    /// Packets in the flow.
    pub packets: u64,
    /// Octets in the flow (layer 3, as NetFlow counts them).
    pub octets: u64,
}

/// Why a datagram could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The datagram would be larger than a UDP payload can be.
    #[error("{format:?} datagram of {flows} flows would be {len} bytes, more than {max}")]
    DatagramTooLarge {
        /// Format asked for.
        format: Format,
        /// Flows asked for.
        flows: usize,
        /// Length the datagram would have.
        len: usize,
        /// Largest UDP payload.
        max: usize,
    },
    /// A flow's source and destination are of different address families.
    #[error("flow {index} mixes address families: {src} -> {dst}")]
    MixedFamilies {
        /// Position of the flow in the slice.
        index: usize,
        /// Its source.
        src: IpAddr,
        /// Its destination.
        dst: IpAddr,
    },
    /// `data` was given no flows.
    #[error("a data datagram needs at least one flow")]
    NoFlows,
    /// NetFlow v5 has more room for records than this.
    #[error("NetFlow v5 carries at most {max} records per datagram, {count} were given")]
    TooManyFlows {
        /// Flows given.
        count: usize,
        /// Most records a datagram may hold.
        max: usize,
    },
    /// NetFlow v5 records are IPv4 only.
    #[error("NetFlow v5 carries IPv4 flows only; flow {index} is IPv6")]
    V5Ipv6 {
        /// Position of the flow in the slice.
        index: usize,
    },
    /// A value does not fit its NetFlow v5 field.
    #[error("flow {index}: {field} = {value} does not fit NetFlow v5's {bits}-bit field")]
    V5ValueTooLarge {
        /// Position of the flow in the slice.
        index: usize,
        /// Field name.
        field: &'static str,
        /// Value of the flow.
        value: u64,
        /// Width of the v5 field.
        bits: u32,
    },
}

/// Builds the datagrams of one exporter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoder {
    format: Format,
    /// IPFIX observation domain id and NetFlow v9 source id.
    domain: u32,
    /// NetFlow v5 engine id.
    engine_id: u8,
    /// sFlow agent address.
    agent: Ipv4Addr,
    /// sFlow sub-agent id.
    sub_agent: u32,
    /// 1-in-N rate written in sFlow flow samples.
    sampling_rate: u32,
}

impl Encoder {
    /// The encoder of exporter number `exporter` (0, 1, ...).
    ///
    /// The index picks the identities a collector tells exporters apart by: the IPFIX
    /// observation domain and the v9 source id are `exporter + 1`, the v5 engine id is its low
    /// byte (engine type 0), the sFlow agent address is `127.0.0.(exporter + 2)` (carrying
    /// into the higher bytes of 127/8 from exporter 254 on) and the sFlow sub-agent id is
    /// `exporter`.
    pub fn new(format: Format, exporter: u32) -> Self {
        let agent = 0x7f00_0000 | (exporter.wrapping_add(2) & 0x00ff_ffff);
        Self {
            format,
            domain: exporter.wrapping_add(1),
            engine_id: exporter.to_le_bytes()[0],
            agent: Ipv4Addr::from(agent),
            sub_agent: exporter,
            sampling_rate: 1,
        }
    }

    /// Writes `rate` as the 1-in-N sampling rate of sFlow flow samples (default 1: every packet;
    /// 0 is taken as 1). The other formats export unsampled flows and ignore it.
    #[must_use]
    pub fn with_sampling_rate(self, rate: u32) -> Self {
        Self {
            sampling_rate: rate.max(1),
            ..self
        }
    }

    /// The format this encoder writes.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The template datagram: for v9 one template FlowSet, for IPFIX one template set, each
    /// defining the IPv4 template (256) and the IPv6 template (257). `None` for v5 and sFlow,
    /// which have no templates.
    pub fn template(&self) -> Option<Vec<u8>> {
        let (set_id, v4, v6, header_len): (u16, &Fields, &Fields, usize) = match self.format {
            Format::V5 | Format::Sflow => return None,
            Format::V9 => (0x0000, &V9_V4_FIELDS, &V9_V6_FIELDS, V9_HEADER_LEN),
            Format::Ipfix => (0x0002, &IPFIX_V4_FIELDS, &IPFIX_V6_FIELDS, IPFIX_HEADER_LEN),
        };

        let mut b = vec![0; header_len];
        let set = b.len();
        put16(&mut b, set_id);
        put16(&mut b, 0); // set length, below
        for (id, fields) in [(TEMPLATE_V4, v4), (TEMPLATE_V6, v6)] {
            put16(&mut b, id);
            put16(&mut b, fields.len() as u16);
            for &(ty, len) in fields {
                put16(&mut b, ty);
                put16(&mut b, len);
            }
        }
        // Two template records of whole 4-byte specifiers: the set is 32-bit aligned as is.
        let set_len = (b.len() - set) as u16;
        b[set + 2..set + 4].copy_from_slice(&set_len.to_be_bytes());

        // v9 counts records of every kind, templates included (RFC 3954 § 5.1).
        self.header(&mut b, 2);
        Some(b)
    }

    /// One data datagram holding `flows`.
    ///
    /// v9 and IPFIX put the IPv4 flows in a set of template 256, then the IPv6 flows in a set of
    /// template 257, each in the order given. sFlow writes one flow sample per flow, in order.
    /// The datagram is stamped with sequence 0, [`BUILD_UNIX_SECS`] and [`BUILD_UPTIME_MS`];
    /// call [`stamp`] before sending it.
    ///
    /// # Errors
    ///
    /// [`WireError::NoFlows`] for an empty slice, [`WireError::MixedFamilies`] for a flow from
    /// one address family to the other, [`WireError::DatagramTooLarge`] past 65 507 bytes; for
    /// v5, [`WireError::V5Ipv6`], [`WireError::TooManyFlows`] past 30 flows and
    /// [`WireError::V5ValueTooLarge`] for an interface past 16 bits or counters past 32 bits.
    pub fn data(&self, flows: &[Flow]) -> Result<Vec<u8>, WireError> {
        if flows.is_empty() {
            return Err(WireError::NoFlows);
        }
        for (index, f) in flows.iter().enumerate() {
            if f.src.is_ipv4() != f.dst.is_ipv4() {
                return Err(WireError::MixedFamilies {
                    index,
                    src: f.src,
                    dst: f.dst,
                });
            }
        }

        let mut b = match self.format {
            Format::V5 => self.v5(flows)?,
            Format::V9 => self.templated(flows, V9_HEADER_LEN, &V9_LAYOUT),
            Format::Ipfix => self.templated(flows, IPFIX_HEADER_LEN, &IPFIX_LAYOUT),
            Format::Sflow => self.sflow(flows),
        };
        if b.len() > MAX_UDP_PAYLOAD {
            return Err(WireError::DatagramTooLarge {
                format: self.format,
                flows: flows.len(),
                len: b.len(),
                max: MAX_UDP_PAYLOAD,
            });
        }

        self.header(&mut b, flows.len() as u16);
        stamp(self.format, &mut b, 0, BUILD_UNIX_SECS, BUILD_UPTIME_MS);
        Ok(b)
    }

    /// Flow records in a datagram built by this module: the flows of a data datagram (v5 and
    /// v9 records, IPFIX data records, sFlow flow samples), 0 for a template datagram.
    pub fn records(&self, datagram: &[u8]) -> u32 {
        records(self.format, datagram)
    }

    /// How far the exporter's sequence number moves for sending `datagram` (built by this
    /// module): v5 counts flows, v9 counts datagrams (templates too, RFC 3954 § 5.1), IPFIX
    /// counts data records (RFC 7011 § 3.1), sFlow counts datagrams.
    pub fn sequence_step(&self, datagram: &[u8]) -> u32 {
        match self.format {
            Format::V5 | Format::Ipfix => records(self.format, datagram),
            Format::V9 | Format::Sflow => 1,
        }
    }

    /// Writes the per-exporter header fields (those [`stamp`] leaves alone) and the count.
    fn header(&self, b: &mut [u8], count: u16) {
        match self.format {
            Format::V5 => {
                b[0..2].copy_from_slice(&0x0005u16.to_be_bytes());
                b[2..4].copy_from_slice(&count.to_be_bytes());
                // 20: engine type 0; 21: engine id; 22..24: sampling mode and interval 0
                // (unsampled).
                b[21] = self.engine_id;
            }
            Format::V9 => {
                b[0..2].copy_from_slice(&0x0009u16.to_be_bytes());
                b[2..4].copy_from_slice(&count.to_be_bytes());
                b[16..20].copy_from_slice(&self.domain.to_be_bytes());
            }
            Format::Ipfix => {
                b[0..2].copy_from_slice(&0x000au16.to_be_bytes());
                // The message length field is 16 bits; `data` refuses anything longer.
                let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
                b[2..4].copy_from_slice(&len.to_be_bytes());
                b[12..16].copy_from_slice(&self.domain.to_be_bytes());
            }
            Format::Sflow => {
                b[0..4].copy_from_slice(&5u32.to_be_bytes());
                b[4..8].copy_from_slice(&SFLOW_AGENT_IPV4.to_be_bytes());
                b[8..12].copy_from_slice(&self.agent.octets());
                b[12..16].copy_from_slice(&self.sub_agent.to_be_bytes());
                b[24..28].copy_from_slice(&u32::from(count).to_be_bytes());
            }
        }
    }

    /// NetFlow v5 records after a blank header.
    fn v5(&self, flows: &[Flow]) -> Result<Vec<u8>, WireError> {
        if flows.len() > V5_MAX_RECORDS {
            return Err(WireError::TooManyFlows {
                count: flows.len(),
                max: V5_MAX_RECORDS,
            });
        }

        let mut b = Vec::with_capacity(V5_HEADER_LEN + V5_RECORD_LEN * flows.len());
        b.resize(V5_HEADER_LEN, 0);
        for (index, f) in flows.iter().enumerate() {
            let (IpAddr::V4(src), IpAddr::V4(dst)) = (f.src, f.dst) else {
                return Err(WireError::V5Ipv6 { index });
            };
            let too_large = |field, value: u64, bits| WireError::V5ValueTooLarge {
                index,
                field,
                value,
                bits,
            };
            let input = u16::try_from(f.input_if)
                .map_err(|_| too_large("input_if", f.input_if.into(), 16))?;
            let output = u16::try_from(f.output_if)
                .map_err(|_| too_large("output_if", f.output_if.into(), 16))?;
            let packets =
                u32::try_from(f.packets).map_err(|_| too_large("packets", f.packets, 32))?;
            let octets = u32::try_from(f.octets).map_err(|_| too_large("octets", f.octets, 32))?;

            b.extend_from_slice(&src.octets());
            b.extend_from_slice(&dst.octets());
            b.extend_from_slice(&[0; 4]); // nexthop
            put16(&mut b, input);
            put16(&mut b, output);
            put32(&mut b, packets);
            put32(&mut b, octets);
            b.extend_from_slice(&[0; 8]); // first, last: written by `stamp`
            put16(&mut b, f.src_port);
            put16(&mut b, f.dst_port);
            b.extend_from_slice(&[0, f.tcp_flags, f.protocol, f.tos]); // pad1 first
            b.extend_from_slice(&[0; 8]); // src_as, dst_as, src_mask, dst_mask, pad2
        }
        Ok(b)
    }

    /// v9 or IPFIX data sets after a blank header: IPv4 flows, then IPv6 flows.
    fn templated(&self, flows: &[Flow], header_len: usize, layout: &Layout) -> Vec<u8> {
        let mut b = Vec::with_capacity(header_len + 8 + layout.v6_len * flows.len() + 6);
        b.resize(header_len, 0);
        for (id, v4) in [(TEMPLATE_V4, true), (TEMPLATE_V6, false)] {
            let mut family = flows.iter().filter(|f| f.src.is_ipv4() == v4).peekable();
            if family.peek().is_none() {
                continue;
            }
            let set = b.len();
            put16(&mut b, id);
            put16(&mut b, 0); // set length, below
            for f in family {
                put_addr(&mut b, f.src);
                put_addr(&mut b, f.dst);
                put16(&mut b, f.src_port);
                put16(&mut b, f.dst_port);
                b.push(f.protocol);
                if layout.tcp_flags_len == 2 {
                    b.push(0);
                }
                b.push(f.tcp_flags);
                b.push(f.tos);
                put32(&mut b, f.input_if);
                put32(&mut b, f.output_if);
                put64(&mut b, f.octets);
                put64(&mut b, f.packets);
                // Start and end: written by `stamp`.
                b.resize(b.len() + 2 * layout.time_len, 0);
            }
            // "The Exporter SHOULD insert some padding bytes so that the subsequent FlowSet
            // starts at a 4-byte aligned boundary" (RFC 3954 § 5.3). IPFIX makes padding
            // optional (RFC 7011 § 3.3.1) and flowplane's exporters-of-reference send none.
            if layout.pad {
                b.resize(b.len().next_multiple_of(4), 0);
            }
            let set_len = (b.len() - set).min(usize::from(u16::MAX)) as u16;
            b[set + 2..set + 4].copy_from_slice(&set_len.to_be_bytes());
        }
        b
    }

    /// sFlow flow samples after a blank header.
    fn sflow(&self, flows: &[Flow]) -> Vec<u8> {
        let mut b = Vec::with_capacity(SFLOW_HEADER_LEN + 220 * flows.len());
        b.resize(SFLOW_HEADER_LEN, 0);
        for (i, f) in flows.iter().enumerate() {
            let i = i as u32;
            // The compact form holds 30-bit interface values; larger ones need the expanded
            // sample (format 3), where format and value are whole words.
            let compact = f.input_if < 1 << 30 && f.output_if < 1 << 30;
            let sample = b.len();
            put32(&mut b, if compact { 1 } else { 3 });
            put32(&mut b, 0); // sample length, below

            put32(&mut b, i + 1); // sample sequence number within the datagram
            // Data source: the input interface (type 0 = ifIndex).
            if compact {
                put32(&mut b, f.input_if & 0x00ff_ffff);
            } else {
                put32(&mut b, 0);
                put32(&mut b, f.input_if);
            }
            put32(&mut b, self.sampling_rate);
            put32(&mut b, self.sampling_rate.wrapping_mul(i + 1)); // sample pool
            put32(&mut b, 0); // drops
            if compact {
                put32(&mut b, f.input_if);
                put32(&mut b, f.output_if);
            } else {
                b.extend_from_slice(&[0; 4]);
                put32(&mut b, f.input_if);
                b.extend_from_slice(&[0; 4]);
                put32(&mut b, f.output_if);
            }
            put32(&mut b, 1); // one flow record

            // Raw packet header record (format 1).
            let record = b.len();
            put32(&mut b, 1);
            put32(&mut b, 0); // record length, below
            let frame_len = frame_length(f);
            put32(&mut b, SFLOW_HEADER_ETHERNET);
            put32(&mut b, frame_len);
            put32(&mut b, ETHERNET_FCS_LEN as u32); // stripped: the FCS
            let header_len = (frame_len as usize - ETHERNET_FCS_LEN).min(SFLOW_MAX_HEADER);
            put32(&mut b, header_len as u32);
            let start = b.len();
            frame(&mut b, f, frame_len, header_len);
            b.resize(start + header_len.next_multiple_of(4), 0); // XDR opaque padding

            let record_len = (b.len() - record - 8) as u32;
            b[record + 4..record + 8].copy_from_slice(&record_len.to_be_bytes());
            let sample_len = (b.len() - sample - 8) as u32;
            b[sample + 4..sample + 8].copy_from_slice(&sample_len.to_be_bytes());
        }
        b
    }
}

/// Writes the per-send header fields of a datagram built by this module, and the record times
/// that follow from them (module documentation).
///
/// * `seq`: v5 flow_sequence (flows sent before this datagram), v9 package sequence
///   (datagrams sent before), IPFIX sequence number (data records sent before), sFlow datagram
///   sequence number.
/// * `unix_secs`: export time (v5, v9, IPFIX; sFlow has none). v5's residual nanoseconds are 0.
/// * `uptime_ms`: v5 and v9 sysUptime, sFlow uptime (IPFIX has none).
///
/// A datagram not built by this module is written where it fits and is never read past its
/// end: this never panics.
pub fn stamp(format: Format, datagram: &mut [u8], seq: u32, unix_secs: u32, uptime_ms: u32) {
    let b = datagram;
    let first = uptime_ms.saturating_sub(FLOW_DURATION_MS as u32);
    match format {
        Format::V5 => {
            set32(b, 4, uptime_ms);
            set32(b, 8, unix_secs);
            set32(b, 12, 0);
            set32(b, 16, seq);
            let count = usize::from(get16(b, 2).unwrap_or(0)).min(V5_MAX_RECORDS);
            for i in 0..count {
                let at = V5_HEADER_LEN + i * V5_RECORD_LEN;
                set32(b, at + 24, first);
                set32(b, at + 28, uptime_ms);
            }
        }
        Format::V9 => {
            set32(b, 4, uptime_ms);
            set32(b, 8, unix_secs);
            set32(b, 12, seq);
            for_each_record(b, V9_HEADER_LEN, &V9_LAYOUT, |r| {
                let n = r.len();
                set32(r, n - 8, first);
                set32(r, n - 4, uptime_ms);
            });
        }
        Format::Ipfix => {
            set32(b, 4, unix_secs);
            set32(b, 8, seq);
            let end = u64::from(unix_secs) * 1_000;
            let start = end.saturating_sub(FLOW_DURATION_MS);
            for_each_record(b, IPFIX_HEADER_LEN, &IPFIX_LAYOUT, |r| {
                let n = r.len();
                set64(r, n - 16, start);
                set64(r, n - 8, end);
            });
        }
        Format::Sflow => {
            // Our agents are IPv4: sequence at 16, uptime at 20. Read the type anyway so that
            // an IPv6 agent's datagram is written in the right place.
            let at = if get32(b, 4) == Some(SFLOW_AGENT_IPV6) {
                28
            } else {
                16
            };
            set32(b, at, seq);
            set32(b, at + 4, uptime_ms);
        }
    }
}

/// The frame length an sFlow sample of `flow` reports: the flow's mean packet size
/// (`octets / packets`, rounded to the nearest, `packets = 0` read as 1) plus the Ethernet
/// header and FCS around it, at least the headers this module writes and 64 bytes (the Ethernet
/// minimum), at most 65 535.
pub fn frame_length(flow: &Flow) -> u32 {
    let packets = flow.packets.max(1);
    let mean = (flow.octets + packets / 2) / packets;
    let frame = mean.saturating_add((ETHERNET_HEADER_LEN + ETHERNET_FCS_LEN) as u64);
    let least = (ETHERNET_HEADER_LEN + l3_len(flow) + l4_len(flow) + ETHERNET_FCS_LEN).max(64);
    frame.clamp(least as u64, u64::from(u16::MAX)) as u32
}

/// Flow records of a datagram built by this module (see [`Encoder::records`]).
fn records(format: Format, b: &[u8]) -> u32 {
    match format {
        Format::V5 => u32::from(get16(b, 2).unwrap_or(0)).min(V5_MAX_RECORDS as u32),
        Format::V9 => count_records(b, V9_HEADER_LEN, &V9_LAYOUT),
        Format::Ipfix => count_records(b, IPFIX_HEADER_LEN, &IPFIX_LAYOUT),
        Format::Sflow => get32(b, 24).unwrap_or(0),
    }
}

/// A template's (field type, length) pairs.
type Fields = [(u16, u16)];

/// Data record lengths and time encoding of one of the two templated formats.
struct Layout {
    v4_len: usize,
    v6_len: usize,
    tcp_flags_len: usize,
    /// Length of each of the two time fields at the end of a record.
    time_len: usize,
    /// Data sets are padded to 4 bytes.
    pad: bool,
}

impl Layout {
    /// Record length of a data set id, `None` for template sets and unknown ids.
    fn record_len(&self, set_id: u16) -> Option<usize> {
        match set_id {
            TEMPLATE_V4 => Some(self.v4_len),
            TEMPLATE_V6 => Some(self.v6_len),
            _ => None,
        }
    }
}

/// One set of a datagram: where its records are (`body`), their length when the set is a data
/// set of our two templates, and where the next set starts. `None` past the last set, or at a
/// set whose header does not fit.
struct SetSpan {
    body: std::ops::Range<usize>,
    record_len: Option<usize>,
    next: usize,
}

fn next_set(b: &[u8], at: usize, layout: &Layout) -> Option<SetSpan> {
    let (id, len) = (get16(b, at)?, usize::from(get16(b, at + 2)?));
    if len < SET_HEADER_LEN || at + len > b.len() {
        return None;
    }
    Some(SetSpan {
        body: at + SET_HEADER_LEN..at + len,
        record_len: layout.record_len(id),
        next: at + len,
    })
}

/// Calls `f` on every data record of our two templates, in place.
fn for_each_record(b: &mut [u8], header_len: usize, layout: &Layout, mut f: impl FnMut(&mut [u8])) {
    let mut at = header_len;
    while let Some(set) = next_set(b, at, layout) {
        if let Some(rec) = set.record_len {
            b[set.body].chunks_exact_mut(rec).for_each(&mut f);
        }
        at = set.next;
    }
}

/// Data records of our two templates in a datagram.
fn count_records(b: &[u8], header_len: usize, layout: &Layout) -> u32 {
    let mut n = 0;
    let mut at = header_len;
    while let Some(set) = next_set(b, at, layout) {
        if let Some(rec) = set.record_len {
            n += (set.body.len() / rec) as u32;
        }
        at = set.next;
    }
    n
}

/// Writes the first `keep` bytes of the frame of `f`, `frame_len` bytes long with its FCS:
/// Ethernet, IP and transport headers, then zero payload.
fn frame(b: &mut Vec<u8>, f: &Flow, frame_len: u32, keep: usize) {
    let start = b.len();
    let ip_len = frame_len as usize - ETHERNET_HEADER_LEN - ETHERNET_FCS_LEN;
    let l4_len = ip_len - l3_len(f);

    b.extend_from_slice(&DST_MAC);
    b.extend_from_slice(&SRC_MAC);
    match (f.src, f.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            put16(b, 0x0800);
            // RFC 791: version 4, IHL 5; total length; identification; DF, offset 0; TTL 64.
            let ip = b.len();
            b.extend_from_slice(&[0x45, f.tos]);
            put16(b, ip_len as u16);
            put16(b, 0);
            put16(b, 0x4000);
            b.extend_from_slice(&[64, f.protocol, 0, 0]);
            b.extend_from_slice(&src.octets());
            b.extend_from_slice(&dst.octets());
            let sum = checksum(&b[ip..ip + 20]);
            b[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
        }
        (src, dst) => {
            put16(b, 0x86dd);
            // RFC 8200: version 6, traffic class, flow label 0; payload length; next header;
            // hop limit 64.
            put32(b, 6 << 28 | u32::from(f.tos) << 20);
            put16(b, l4_len as u16);
            b.extend_from_slice(&[f.protocol, 64]);
            put_addr(b, src);
            put_addr(b, dst);
        }
    }
    match f.protocol {
        // RFC 9293: ports, sequence, acknowledgment, data offset 5, flags, window; checksum
        // and urgent pointer 0.
        PROTO_TCP => {
            put16(b, f.src_port);
            put16(b, f.dst_port);
            put32(b, 1);
            put32(b, 1);
            b.extend_from_slice(&[5 << 4, f.tcp_flags]);
            put16(b, 0xffff);
            put32(b, 0);
        }
        // RFC 768: ports, length, checksum 0 ("no checksum" for IPv4).
        PROTO_UDP => {
            put16(b, f.src_port);
            put16(b, f.dst_port);
            put16(b, l4_len as u16);
            put16(b, 0);
        }
        // ICMP / ICMPv6: type and code from the destination port, checksum 0, 4 bytes of rest.
        PROTO_ICMP | PROTO_ICMPV6 => {
            b.extend_from_slice(&f.dst_port.to_be_bytes());
            put16(b, 0);
            put32(b, 0);
        }
        _ => {}
    }
    // `frame_length` makes room for every header, so `keep` never cuts into them.
    b.resize(start + keep, 0);
}

/// IP header length of the flow's family.
fn l3_len(f: &Flow) -> usize {
    if f.src.is_ipv4() { 20 } else { 40 }
}

/// Transport header length this module writes for the flow's protocol.
fn l4_len(f: &Flow) -> usize {
    match f.protocol {
        PROTO_TCP => 20,
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => 8,
        _ => 0,
    }
}

/// The Internet checksum (RFC 1071) of an even-length header.
fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put_addr(b: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
    }
}

fn get16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn get32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Writes `v` at `at` if it fits.
fn set32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Writes `v` at `at` if it fits.
fn set64(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Export time written by [`Encoder::data`] until [`stamp`] writes the real one
/// (2026-01-01T00:00:00Z).
pub const BUILD_UNIX_SECS: u32 = 1_767_225_600;
/// Exporter uptime written by [`Encoder::data`] until [`stamp`] writes the real one (one hour).
pub const BUILD_UPTIME_MS: u32 = 3_600_000;

/// Template id of IPv4 flows (the first id free for data, RFC 7011 § 3.4.1).
pub const TEMPLATE_V4: u16 = 256;
/// Template id of IPv6 flows.
pub const TEMPLATE_V6: u16 = 257;

/// NetFlow v9 IPv4 template: (field type, length). Types from RFC 3954 § 8: IPV4_SRC_ADDR,
/// IPV4_DST_ADDR, L4_SRC_PORT, L4_DST_PORT, PROTOCOL, TCP_FLAGS, SRC_TOS, INPUT_SNMP,
/// OUTPUT_SNMP, IN_BYTES, IN_PKTS, FIRST_SWITCHED, LAST_SWITCHED.
pub const V9_V4_FIELDS: [(u16, u16); 13] = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (5, 1),
    (10, 4),
    (14, 4),
    (1, 8),
    (2, 8),
    (22, 4),
    (21, 4),
];
/// NetFlow v9 IPv6 template: [`V9_V4_FIELDS`] with IPV6_SRC_ADDR (27) and IPV6_DST_ADDR (28).
pub const V9_V6_FIELDS: [(u16, u16); 13] = with_ipv6_addresses(V9_V4_FIELDS);
/// IPFIX IPv4 template: (Information Element id, length). sourceIPv4Address,
/// destinationIPv4Address, sourceTransportPort, destinationTransportPort, protocolIdentifier,
/// tcpControlBits (unsigned16 since RFC 7125), ipClassOfService, ingressInterface,
/// egressInterface, octetDeltaCount, packetDeltaCount, flowStartMilliseconds,
/// flowEndMilliseconds.
pub const IPFIX_V4_FIELDS: [(u16, u16); 13] = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 2),
    (5, 1),
    (10, 4),
    (14, 4),
    (1, 8),
    (2, 8),
    (152, 8),
    (153, 8),
];
/// IPFIX IPv6 template: [`IPFIX_V4_FIELDS`] with sourceIPv6Address (27) and
/// destinationIPv6Address (28).
pub const IPFIX_V6_FIELDS: [(u16, u16); 13] = with_ipv6_addresses(IPFIX_V4_FIELDS);

/// An IPv4 template (source and destination address first) made IPv6: the same fields after
/// the addresses, which become sourceIPv6Address (27) and destinationIPv6Address (28), the
/// same numbers in v9 and IPFIX.
const fn with_ipv6_addresses(mut fields: [(u16, u16); 13]) -> [(u16, u16); 13] {
    fields[0] = (27, 16);
    fields[1] = (28, 16);
    fields
}

const V9_LAYOUT: Layout = Layout {
    v4_len: record_len(&V9_V4_FIELDS),
    v6_len: record_len(&V9_V6_FIELDS),
    tcp_flags_len: 1,
    time_len: 4,
    pad: true,
};
const IPFIX_LAYOUT: Layout = Layout {
    v4_len: record_len(&IPFIX_V4_FIELDS),
    v6_len: record_len(&IPFIX_V6_FIELDS),
    tcp_flags_len: 2,
    time_len: 8,
    pad: false,
};

const fn record_len(fields: &[(u16, u16)]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < fields.len() {
        n += fields[i].1 as usize;
        i += 1;
    }
    n
}

/// Length of the flows' time span written by [`stamp`].
const FLOW_DURATION_MS: u64 = 1_000;

const V5_HEADER_LEN: usize = 24;
const V5_RECORD_LEN: usize = 48;
/// "At most 30 records per datagram" (Cisco's v5 format description).
const V5_MAX_RECORDS: usize = 30;
const V9_HEADER_LEN: usize = 20;
const IPFIX_HEADER_LEN: usize = 16;
const SET_HEADER_LEN: usize = 4;
/// version, address type, IPv4 agent address, sub-agent id, sequence, uptime, sample count.
const SFLOW_HEADER_LEN: usize = 28;
const SFLOW_AGENT_IPV4: u32 = 1;
const SFLOW_AGENT_IPV6: u32 = 2;
/// header_protocol "ETHERNET-ISO88023".
const SFLOW_HEADER_ETHERNET: u32 = 1;
/// Sampled header bytes kept at most, hsflowd's default.
const SFLOW_MAX_HEADER: usize = 128;
/// Largest UDP payload over IPv4: 65 535 - 20 (IPv4 header) - 8 (UDP header).
const MAX_UDP_PAYLOAD: usize = 65_507;

const ETHERNET_HEADER_LEN: usize = 14;
const ETHERNET_FCS_LEN: usize = 4;
/// Locally administered unicast addresses (the 0x02 bit of the first octet).
const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, SocketAddr};

    use flowplane_decoders::{
        Decoder, DecoderLimits, FlowFormat, FlowRecord, IpfixPacket, NetflowV5Packet,
        NetflowV9Packet, SflowPacket,
    };

    use super::*;

    const ALL: [Format; 4] = [Format::V5, Format::V9, Format::Ipfix, Format::Sflow];
    const EXPORTER: u32 = 3;

    fn from() -> SocketAddr {
        "192.0.2.200:40000".parse().unwrap()
    }

    /// Flow `i` of a family: TCP, UDP, ICMP and GRE in turn, with every field varying.
    fn flow(i: u32, v6: bool) -> Flow {
        let (src, dst) = if v6 {
            let s = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16);
            let d = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, (i % 7 + 1) as u16);
            (IpAddr::V6(s), IpAddr::V6(d))
        } else {
            let s = Ipv4Addr::from(0x0a00_0000 | i);
            let d = Ipv4Addr::from(0xc633_6400 | (i % 250 + 1));
            (IpAddr::V4(s), IpAddr::V4(d))
        };
        let (protocol, src_port, dst_port, tcp_flags) = match i % 4 {
            0 => (PROTO_TCP, 1_024 + i as u16, 443, 0x1b),
            1 => (PROTO_UDP, 5_353, 53 + i as u16, 0),
            2 if v6 => (PROTO_ICMPV6, 0, 0x8000, 0), // echo request
            2 => (PROTO_ICMP, 0, 0x0800, 0),
            _ => (47, 0, 0, 0), // GRE: no ports
        };
        let packets = u64::from(i % 9 + 1);
        Flow {
            src,
            dst,
            src_port,
            dst_port,
            protocol,
            tcp_flags,
            tos: (i % 64) as u8 * 4,
            input_if: 1 + i % 48,
            output_if: 100 + i % 7,
            packets,
            octets: packets * u64::from(60 + i % 1_400),
        }
    }

    fn flows(n: u32, v4: bool, v6: bool) -> Vec<Flow> {
        (0..n)
            .map(|i| match (v4, v6) {
                (true, true) => flow(i, i % 2 == 1),
                (_, v6) => flow(i, v6),
            })
            .collect()
    }

    fn decode(dec: &mut Decoder, now_ms: u64, dg: &[u8]) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        let r = dec.decode(from(), now_ms, dg, |rec| out.push(*rec));
        assert_eq!(r.error, None, "decode error");
        assert_eq!(r.sets_held + r.sets_without_template, 0);
        out
    }

    /// The records a decoder must produce for `flows` sent at `unix_secs`.
    fn expected(enc: &Encoder, flows: &[Flow], unix_secs: u32, now_ms: u64) -> Vec<FlowRecord> {
        let mut ordered: Vec<Flow> = flows.to_vec();
        if matches!(enc.format, Format::V9 | Format::Ipfix) {
            ordered.sort_by_key(|f| f.src.is_ipv6()); // stable: IPv4 set, then IPv6 set
        }
        let export_ms = u64::from(unix_secs) * 1_000;
        ordered
            .iter()
            .map(|f| {
                let mut r = FlowRecord {
                    src_addr: flowplane_decoders::addr_to_bytes(f.src),
                    dst_addr: flowplane_decoders::addr_to_bytes(f.dst),
                    exporter: flowplane_decoders::addr_to_bytes(from().ip()),
                    exporter_port: from().port(),
                    bytes: f.octets,
                    packets: f.packets,
                    start_ms: export_ms - 1_000,
                    end_ms: export_ms,
                    sampling_rate: 1,
                    input_if: f.input_if,
                    output_if: f.output_if,
                    src_port: f.src_port,
                    dst_port: f.dst_port,
                    protocol: f.protocol,
                    tcp_flags: f.tcp_flags,
                    tos: f.tos,
                    ip_version: if f.src.is_ipv4() { 4 } else { 6 },
                    ..FlowRecord::default()
                };
                match enc.format {
                    Format::V5 => {
                        r.format = FlowFormat::NetflowV5 as u8;
                        r.domain_id = EXPORTER;
                    }
                    Format::V9 => {
                        r.format = FlowFormat::NetflowV9 as u8;
                        r.domain_id = EXPORTER + 1;
                    }
                    Format::Ipfix => {
                        r.format = FlowFormat::Ipfix as u8;
                        r.domain_id = EXPORTER + 1;
                    }
                    Format::Sflow => {
                        r.format = FlowFormat::Sflow as u8;
                        r.domain_id = EXPORTER;
                        r.packets = 1;
                        r.bytes = u64::from(frame_length(f));
                        r.sampling_rate = enc.sampling_rate;
                        r.start_ms = now_ms;
                        r.end_ms = now_ms;
                    }
                }
                r
            })
            .collect()
    }

    /// Primes a decoder with the template, if any, then decodes a stamped data datagram and
    /// compares every record field by field.
    fn round_trip(format: Format, flows: &[Flow]) {
        let enc = Encoder::new(format, EXPORTER);
        let mut dec = Decoder::new(DecoderLimits::default());
        let now_ms = 1_767_300_000_123;
        let (unix_secs, uptime) = (1_767_300_000, 86_400_000);
        if let Some(mut t) = enc.template() {
            stamp(format, &mut t, 0, unix_secs, uptime);
            assert!(decode(&mut dec, now_ms, &t).is_empty());
            assert_eq!(dec.stats().templates_learned, 2, "{format:?}");
            assert_eq!(enc.records(&t), 0);
        }

        let mut dg = enc.data(flows).unwrap();
        stamp(format, &mut dg, 1, unix_secs, uptime);
        let got = decode(&mut dec, now_ms, &dg);
        let want = expected(&enc, flows, unix_secs, now_ms);
        assert_eq!(got.len(), want.len(), "{format:?}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{format:?} record {i}");
        }
        assert_eq!(enc.records(&dg) as usize, flows.len());
    }

    #[test]
    fn every_field_round_trips_through_the_decoder() {
        for format in ALL {
            for n in [1, 24, 30] {
                round_trip(format, &flows(n, true, false));
                if format != Format::V5 {
                    round_trip(format, &flows(n, false, true));
                    round_trip(format, &flows(n, true, true));
                }
            }
        }
    }

    #[test]
    fn sflow_writes_the_sampling_rate_and_wide_interfaces() {
        let enc = Encoder::new(Format::Sflow, EXPORTER).with_sampling_rate(512);
        let mut wide = flows(4, true, true);
        wide[1].input_if = 1 << 31; // needs the expanded flow sample
        wide[2].output_if = u32::MAX;
        wide[3].octets = 10_000_000; // a frame length past the maximum is clamped
        let mut dec = Decoder::new(DecoderLimits::default());
        let got = decode(&mut dec, 1, &enc.data(&wide).unwrap());
        let want = expected(&enc, &wide, BUILD_UNIX_SECS, 1);
        assert_eq!(got, want);
        assert_eq!(got[0].sampling_rate, 512);
        assert_eq!(got[3].bytes, 65_535);
        assert_eq!(dec.sflow_stats().flow_samples, 4);
        assert_eq!(dec.sflow_stats().unknown_records, 0);
    }

    #[test]
    fn stamp_moves_only_the_sequence_and_times() {
        for format in ALL {
            let enc = Encoder::new(format, EXPORTER);
            let batch = flows(24, true, format != Format::V5);
            let built = enc.data(&batch).unwrap();
            let mut dec = Decoder::new(DecoderLimits::default());
            let mut seq = 0u32;
            if let Some(t) = enc.template() {
                decode(&mut dec, 0, &t);
                seq = seq.wrapping_add(enc.sequence_step(&t));
            }

            let step = enc.sequence_step(&built);
            assert_eq!(
                step,
                match format {
                    Format::V5 | Format::Ipfix => 24,
                    Format::V9 | Format::Sflow => 1,
                }
            );
            for k in 0..5u32 {
                let mut dg = built.clone();
                let (unix_secs, uptime) = (BUILD_UNIX_SECS + 10 + k, 5_000 + k * 1_000);
                stamp(format, &mut dg, seq, unix_secs, uptime);
                assert_eq!(sequence_of(format, &dg), seq, "{format:?}");
                assert_eq!(dg.len(), built.len());

                let now_ms = u64::from(unix_secs) * 1_000;
                let got = decode(&mut dec, now_ms, &dg);
                assert_eq!(got, expected(&enc, &batch, unix_secs, now_ms), "{format:?}");
                seq = seq.wrapping_add(step);
            }
            assert_eq!(dec.sflow_stats().sequence_gaps, 0);
            assert_eq!(dec.sflow_stats().sequence_late, 0);
            assert_eq!(dec.sflow_stats().sequence_resets, 0);
        }
    }

    fn sequence_of(format: Format, dg: &[u8]) -> u32 {
        match format {
            Format::V5 => NetflowV5Packet::new_checked(dg).unwrap().flow_sequence(),
            Format::V9 => NetflowV9Packet::new_checked(dg).unwrap().sequence(),
            Format::Ipfix => IpfixPacket::new_checked(dg).unwrap().sequence_number(),
            Format::Sflow => SflowPacket::new_checked(dg).unwrap().sequence_number(),
        }
    }

    #[test]
    fn stamp_never_panics_on_short_or_foreign_buffers() {
        for format in ALL {
            for len in 0..64 {
                stamp(format, &mut vec![0xff; len], 1, 2, 3);
            }
        }
    }

    #[test]
    fn v5_refuses_what_it_cannot_carry() {
        let enc = Encoder::new(Format::V5, 0);
        assert_eq!(
            enc.data(&flows(2, false, true)),
            Err(WireError::V5Ipv6 { index: 0 })
        );
        assert_eq!(
            enc.data(&flows(31, true, false)),
            Err(WireError::TooManyFlows { count: 31, max: 30 })
        );
        let mut wide = flows(1, true, false);
        wide[0].input_if = 70_000;
        assert!(matches!(
            enc.data(&wide),
            Err(WireError::V5ValueTooLarge {
                field: "input_if",
                ..
            })
        ));
        assert_eq!(enc.data(&[]), Err(WireError::NoFlows));
    }

    #[test]
    fn refuses_mixed_families_and_oversized_datagrams() {
        let mut mixed = flows(1, true, false);
        mixed[0].dst = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(matches!(
            Encoder::new(Format::Ipfix, 0).data(&mixed),
            Err(WireError::MixedFamilies { index: 0, .. })
        ));
        assert!(matches!(
            Encoder::new(Format::Ipfix, 0).data(&flows(1_000, false, true)),
            Err(WireError::DatagramTooLarge { .. })
        ));
    }

    #[test]
    fn exporter_index_picks_the_identities() {
        let enc = Encoder::new(Format::Sflow, 0);
        assert_eq!(enc.agent, Ipv4Addr::new(127, 0, 0, 2));
        let dg = enc.data(&flows(1, true, false)).unwrap();
        let p = SflowPacket::new_checked(&dg[..]).unwrap();
        assert_eq!(p.agent_address(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(p.sub_agent_id(), 0);
        assert_eq!(
            Encoder::new(Format::Sflow, 300).agent,
            Ipv4Addr::new(127, 0, 1, 46)
        );

        let t = Encoder::new(Format::Ipfix, 6).template().unwrap();
        assert_eq!(
            IpfixPacket::new_checked(&t[..])
                .unwrap()
                .observation_domain_id(),
            7
        );
        let t = Encoder::new(Format::V9, 6).template().unwrap();
        assert_eq!(NetflowV9Packet::new_checked(&t[..]).unwrap().source_id(), 7);
        assert_eq!(NetflowV9Packet::new_checked(&t[..]).unwrap().count(), 2);
    }
}
