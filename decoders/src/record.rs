//! The fixed-layout flow record: the contract between `decoders` and `engine`.
//!
//! Every decoded flow, whatever its wire format, becomes one [`FlowRecord`]. The record is
//! `#[repr(C)]`, `Pod`, and has a size fixed at compile time, so that the engine can keep
//! records in flat arrays and copy them without touching the heap.
//!
//! # Warning
//!
//! Reordering, retyping or inserting fields changes the layout. The size assertion at the bottom
//! of this file must be updated on purpose, never to make a build pass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytemuck::{Pod, Zeroable};

/// Wire format a record was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowFormat {
    /// Not set (a zeroed record).
    Unknown = 0,
    /// Cisco NetFlow version 5.
    NetflowV5 = 5,
    /// NetFlow version 9, RFC 3954.
    NetflowV9 = 9,
    /// IPFIX, RFC 7011.
    Ipfix = 10,
    /// sFlow version 5.
    Sflow = 50,
}

impl FlowFormat {
    /// Maps the stored byte back to a format; unknown values become [`FlowFormat::Unknown`].
    pub fn from_u8(v: u8) -> Self {
        match v {
            5 => Self::NetflowV5,
            9 => Self::NetflowV9,
            10 => Self::Ipfix,
            50 => Self::Sflow,
            _ => Self::Unknown,
        }
    }

    /// Short lowercase name, suitable as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::NetflowV5 => "netflow_v5",
            Self::NetflowV9 => "netflow_v9",
            Self::Ipfix => "ipfix",
            Self::Sflow => "sflow",
        }
    }
}

/// One decoded flow.
///
/// Addresses are stored as 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, RFC 4291 § 2.5.5.2). `ip_version` says which family the flow is (4 or 6,
/// 0 when the exporter sent no addresses). Times are absolute milliseconds since the Unix
/// epoch; for NetFlow v5/v9 they are derived from the export header's `unix_secs` and
/// `sys_uptime` (`start = unix_secs*1000 - (sys_uptime - first_switched)`), with unsigned
/// wrap-around of the 32-bit uptime handled.
///
/// `bytes` and `packets` are the raw values the exporter sent; `sampling_rate` is the 1-in-N
/// rate that applies (1 when unsampled or unknown). Scaling is the engine's decision.
///
/// # Warning
///
/// This is a fixed layout. Changing the order or type of any field changes its size and the
/// offsets every consumer relies on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct FlowRecord {
    /// Source address (IPv4-mapped for IPv4).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4-mapped for IPv4).
    pub dst_addr: [u8; 16],
    /// Address of the exporter the datagram came from (IPv4-mapped for IPv4).
    pub exporter: [u8; 16],
    /// Octets in the flow, as exported (not scaled).
    pub bytes: u64,
    /// Packets in the flow, as exported (not scaled).
    pub packets: u64,
    /// Flow start, milliseconds since the Unix epoch (0 when unknown).
    pub start_ms: u64,
    /// Flow end, milliseconds since the Unix epoch (0 when unknown).
    pub end_ms: u64,
    /// 1-in-N sampling rate that applies to this record; 1 when unsampled or unknown.
    pub sampling_rate: u32,
    /// Observation domain (IPFIX), source id (v9), engine type/id (v5: `type << 8 | id`),
    /// or sub-agent id (sFlow).
    pub domain_id: u32,
    /// Input interface index (ifIndex). For sFlow, read it with [`FlowRecord::input_if_format`]:
    /// the value is a discard reason or an interface count when the format says so.
    pub input_if: u32,
    /// Output interface index (ifIndex). For sFlow, read it with
    /// [`FlowRecord::output_if_format`].
    pub output_if: u32,
    /// Source BGP AS number (0 when not exported).
    pub src_as: u32,
    /// Destination BGP AS number (0 when not exported).
    pub dst_as: u32,
    /// Source transport port (ICMP: 0).
    pub src_port: u16,
    /// Destination transport port (ICMP: `type << 8 | code`, as NetFlow exporters encode it).
    pub dst_port: u16,
    /// UDP source port of the exporter.
    pub exporter_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Cumulative TCP flags (low 8 bits).
    pub tcp_flags: u8,
    /// IPv4 ToS / IPv6 traffic class byte (DSCP is the upper six bits).
    pub tos: u8,
    /// 4, 6, or 0 when the flow carried no addresses.
    pub ip_version: u8,
    /// [`FlowFormat`] as its `u8` value.
    pub format: u8,
    /// How to read `input_if` (sFlow; 0 for every other format): 0 = ifIndex
    /// ([`IF_FORMAT_IFINDEX`]), 1 = the packet was discarded and the value is the reason code
    /// ([`IF_FORMAT_DISCARDED`]), 2 = several interfaces and the value is their count, 0 when
    /// unknown ([`IF_FORMAT_MULTIPLE`]). Values above 2 are kept as sent (255 when the
    /// expanded form's 32-bit format does not fit a byte).
    pub input_if_format: u8,
    /// How to read `output_if`; same codes as `input_if_format`.
    pub output_if_format: u8,
    /// Source prefix length (sFlow extended router; 0 when not exported).
    pub src_mask: u8,
    /// Destination prefix length (sFlow extended router; 0 when not exported).
    pub dst_mask: u8,
    /// 1 when a sampled packet header ended (snap length) before a field the decoder looks for
    /// (addresses, ports, TCP flags, ICMP type/code): those fields read 0 because they are
    /// missing, not because they were 0. Always 0 for NetFlow and IPFIX.
    pub truncated: u8,
    /// Source / ingress 802.1Q VLAN id (sFlow extended switch, else the outermost tag of the
    /// sampled header; 0 when unknown).
    pub src_vlan: u16,
    /// Destination / egress 802.1Q VLAN id (sFlow extended switch; 0 when unknown).
    pub dst_vlan: u16,
    /// Explicit padding; always zero.
    pub _pad: [u8; 4],
}

/// [`FlowRecord::input_if_format`] / `output_if_format`: the value is an ifIndex. The value
/// `0x3fff_ffff` means the packet came from (input) or went to (output) the device itself.
pub const IF_FORMAT_IFINDEX: u8 = 0;
/// [`FlowRecord::input_if_format`] / `output_if_format`: the packet was discarded; the value is
/// the reason code.
pub const IF_FORMAT_DISCARDED: u8 = 1;
/// [`FlowRecord::input_if_format`] / `output_if_format`: several interfaces; the value is their
/// count (0 = unknown).
pub const IF_FORMAT_MULTIPLE: u8 = 2;

const _: () = assert!(std::mem::size_of::<FlowRecord>() == 128);
const _: () = assert!(std::mem::align_of::<FlowRecord>() == 8);
// The fields carved out of the padding sit where the padding was: nothing before them moved.
const _: () = assert!(std::mem::offset_of!(FlowRecord, input_if_format) == 115);
const _: () = assert!(std::mem::offset_of!(FlowRecord, src_vlan) == 120);
const _: () = assert!(std::mem::offset_of!(FlowRecord, _pad) == 124);

/// Stores an address in the 16-byte form records use.
pub fn addr_to_bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Stores an IPv4 address given as its four octets in the 16-byte form.
#[inline]
pub fn v4_to_bytes(octets: [u8; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[10] = 0xff;
    b[11] = 0xff;
    b[12..].copy_from_slice(&octets);
    b
}

/// Reads an address back from the 16-byte form; IPv4-mapped addresses come back as IPv4.
pub fn bytes_to_addr(b: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl FlowRecord {
    /// Source address as an [`IpAddr`].
    pub fn src_ip(&self) -> IpAddr {
        bytes_to_addr(&self.src_addr)
    }

    /// Destination address as an [`IpAddr`].
    pub fn dst_ip(&self) -> IpAddr {
        bytes_to_addr(&self.dst_addr)
    }

    /// Exporter address as an [`IpAddr`].
    pub fn exporter_ip(&self) -> IpAddr {
        bytes_to_addr(&self.exporter)
    }

    /// The wire format this record came from.
    pub fn flow_format(&self) -> FlowFormat {
        FlowFormat::from_u8(self.format)
    }
}

/// Unspecified IPv4 address in record form, handy for tests.
pub const V4_UNSPECIFIED: [u8; 16] = v4_const(Ipv4Addr::UNSPECIFIED.octets());

const fn v4_const(o: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
    ]
}

/// One interface's counters from an sFlow counter sample (generic interface counters, format 1,
/// and Ethernet interface counters, format 2, of sFlow version 5 § "Counter Data").
///
/// Values are the agent's running totals as sent (SNMP counters: they wrap and reset); rates
/// are the consumer's business. Fields of a counter record the sample did not carry are 0,
/// and [`CounterRecord::has_generic`] / [`CounterRecord::has_ethernet`] say which were present.
///
/// # Warning
///
/// This is a fixed layout. Changing the order or type of any field changes its size and the
/// offsets every consumer relies on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct CounterRecord {
    /// Agent address from the datagram header (IPv4-mapped for IPv4).
    pub agent: [u8; 16],
    /// Address the datagram came from (IPv4-mapped for IPv4).
    pub exporter: [u8; 16],
    /// ifSpeed, bits per second.
    pub if_speed: u64,
    /// ifInOctets (64-bit).
    pub in_octets: u64,
    /// ifOutOctets (64-bit).
    pub out_octets: u64,
    /// Arrival time of the datagram, Unix milliseconds (`now_ms` given to the decoder).
    pub time_ms: u64,
    /// Sub-agent id from the datagram header.
    pub sub_agent_id: u32,
    /// Agent uptime from the datagram header, milliseconds.
    pub uptime_ms: u32,
    /// Sequence number of the counter sample (per source).
    pub sample_sequence: u32,
    /// Data source type (0 = ifIndex, 1 = smonVlanDataSource, 2 = entPhysicalEntry).
    pub source_id_type: u32,
    /// Data source index (an ifIndex when the type is 0).
    pub source_id_index: u32,
    /// ifIndex (from the generic record; the source index when only Ethernet counters came).
    pub if_index: u32,
    /// ifType (IANAifType; 6 = ethernetCsmacd).
    pub if_type: u32,
    /// 0 = unknown, 1 = full-duplex, 2 = half-duplex, 3 = in, 4 = out.
    pub if_direction: u32,
    /// Bit 0 = ifAdminStatus up, bit 1 = ifOperStatus up.
    pub if_status: u32,
    /// ifInUcastPkts.
    pub in_unicast_pkts: u32,
    /// ifInMulticastPkts.
    pub in_multicast_pkts: u32,
    /// ifInBroadcastPkts.
    pub in_broadcast_pkts: u32,
    /// ifInDiscards.
    pub in_discards: u32,
    /// ifInErrors.
    pub in_errors: u32,
    /// ifInUnknownProtos.
    pub in_unknown_protos: u32,
    /// ifOutUcastPkts.
    pub out_unicast_pkts: u32,
    /// ifOutMulticastPkts.
    pub out_multicast_pkts: u32,
    /// ifOutBroadcastPkts.
    pub out_broadcast_pkts: u32,
    /// ifOutDiscards.
    pub out_discards: u32,
    /// ifOutErrors.
    pub out_errors: u32,
    /// ifPromiscuousMode (1 = true, 2 = false, as in the IF-MIB; 0 when unknown).
    pub promiscuous_mode: u32,
    /// dot3StatsAlignmentErrors.
    pub dot3_alignment_errors: u32,
    /// dot3StatsFCSErrors.
    pub dot3_fcs_errors: u32,
    /// dot3StatsSingleCollisionFrames.
    pub dot3_single_collision_frames: u32,
    /// dot3StatsMultipleCollisionFrames.
    pub dot3_multiple_collision_frames: u32,
    /// dot3StatsSQETestErrors.
    pub dot3_sqe_test_errors: u32,
    /// dot3StatsDeferredTransmissions.
    pub dot3_deferred_transmissions: u32,
    /// dot3StatsLateCollisions.
    pub dot3_late_collisions: u32,
    /// dot3StatsExcessiveCollisions.
    pub dot3_excessive_collisions: u32,
    /// dot3StatsInternalMacTransmitErrors.
    pub dot3_internal_mac_transmit_errors: u32,
    /// dot3StatsCarrierSenseErrors.
    pub dot3_carrier_sense_errors: u32,
    /// dot3StatsFrameTooLongs.
    pub dot3_frame_too_longs: u32,
    /// dot3StatsInternalMacReceiveErrors.
    pub dot3_internal_mac_receive_errors: u32,
    /// dot3StatsSymbolErrors.
    pub dot3_symbol_errors: u32,
    /// UDP source port of the exporter.
    pub exporter_port: u16,
    /// 1 when the sample carried generic interface counters (format 1).
    pub has_generic: u8,
    /// 1 when the sample carried Ethernet interface counters (format 2).
    pub has_ethernet: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 4],
}

const _: () = assert!(std::mem::size_of::<CounterRecord>() == 208);
const _: () = assert!(std::mem::align_of::<CounterRecord>() == 8);

impl CounterRecord {
    /// Agent address as an [`IpAddr`].
    pub fn agent_ip(&self) -> IpAddr {
        bytes_to_addr(&self.agent)
    }

    /// Exporter address as an [`IpAddr`].
    pub fn exporter_ip(&self) -> IpAddr {
        bytes_to_addr(&self.exporter)
    }
}
