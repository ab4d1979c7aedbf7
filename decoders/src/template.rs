//! What NetFlow v9 and IPFIX share: set framing, field specifiers, the mapping from
//! Information Elements to [`FlowRecord`] fields, learned templates, and record decoding.
//!
//! NetFlow v9 (RFC 3954) field types 1..=127 and IPFIX (RFC 7011) Information Elements with the
//! same numbers mean the same thing (RFC 7012 § 4 keeps the v9 numbers), so one mapping serves
//! both. Numbers follow the IANA "IPFIX Information Elements" registry.
//!
//! # Decoding a record
//!
//! A learned [`Template`] keeps one [`Role`] per field, resolved once when the template is
//! learned. A data template without variable-length fields is also compiled into a plan (see
//! `plan.rs`): fixed-offset reads of the fields that matter and the fallbacks chosen once, used
//! by [`Template::decode_flows`]. The general path, for the other templates and for options
//! data, gathers each record into an [`Accum`] (a stack value) and turns it into a
//! [`FlowRecord`] with [`Accum::finish`]. Neither allocates per record.

use crate::{DecodeError, FlowRecord, v4_to_bytes};

mod plan;

/// Length value that marks a variable-length field ([RFC 7011 § 7]).
///
/// [RFC 7011 § 7]: https://www.rfc-editor.org/rfc/rfc7011#section-7
pub const VARLEN: u16 = 0xffff;

/// A set (IPFIX) or FlowSet (NetFlow v9) header: the same four bytes in both formats.
///
/// ```text
///  0..2  set id (v9: 0 template, 1 options template; IPFIX: 2 template, 3 options template;
///        both: 256.. data, for the template with that id)
///  2..4  length of the set including this header
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SetHeader<T: AsRef<[u8]>> {
    buffer: T,
}

/// Byte ranges of a set header.
pub mod field {
    /// A byte range.
    pub type Field = core::ops::Range<usize>;

    /// Set id.
    pub const SET_ID: Field = 0..2;
    /// Set length, header included.
    pub const LENGTH: Field = 2..4;
    /// Length of the set header.
    pub const HEADER_LEN: usize = 4;
}

impl<T: AsRef<[u8]>> SetHeader<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that starts with a set and runs [`SetHeader::check_len`].
    ///
    /// # Errors
    ///
    /// See [`SetHeader::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, DecodeError> {
        let s = Self::new_unchecked(buffer);
        s.check_len()?;
        Ok(s)
    }

    /// Checks the set header and its declared length against the buffer.
    ///
    /// # Errors
    ///
    /// [`DecodeError::BadSetLength`] if the buffer is shorter than a set header, or the declared
    /// length is shorter than the header (0 included) or runs past the buffer.
    pub fn check_len(&self) -> Result<(), DecodeError> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(DecodeError::BadSetLength);
        }
        let declared = usize::from(self.length());
        if declared < field::HEADER_LEN {
            return Err(DecodeError::BadSetLength);
        }
        if declared > len {
            return Err(DecodeError::BadSetLength);
        }
        Ok(())
    }

    /// Set id.
    #[inline]
    pub fn set_id(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Declared length, header included.
    #[inline]
    pub fn length(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> SetHeader<&'a T> {
    /// The set body (after the header, up to the declared length).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        &b[field::HEADER_LEN..usize::from(self.length())]
    }
}

/// Iterates over the sets of a message body, yielding `(set id, body)`.
///
/// Stops after the first error; never tries to resynchronise inside a corrupt message.
#[derive(Debug, Clone)]
pub struct Sets<'a> {
    rest: &'a [u8],
    allow_short_tail: bool,
    done: bool,
}

impl<'a> Sets<'a> {
    /// Sets packed one after another in `body`. With `allow_short_tail`, 1 to 3 trailing bytes
    /// that cannot hold a set header, or trailing bytes that are all zero, are accepted as
    /// padding (NetFlow v9 has no message length, and some exporters pad the datagram).
    pub fn new(body: &'a [u8], allow_short_tail: bool) -> Self {
        Self {
            rest: body,
            allow_short_tail,
            done: false,
        }
    }
}

impl<'a> Iterator for Sets<'a> {
    type Item = Result<(u16, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        // NetFlow v9 only (no message length): a short tail, or a tail of zero bytes, is
        // datagram padding. Cisco ACI sends its templates in a zero-filled 256-byte datagram;
        // a zero tail cannot hold a set (set length 0), so nothing is lost by stopping.
        if self.allow_short_tail
            && (self.rest.len() < field::HEADER_LEN || self.rest.iter().all(|b| *b == 0))
        {
            self.done = true;
            return None;
        }
        match SetHeader::new_checked(self.rest) {
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
            Ok(set) => {
                let id = set.set_id();
                let body = set.payload();
                // check_len proved 4 <= length <= rest.len(), so this always advances.
                self.rest = &self.rest[usize::from(set.length())..];
                Some(Ok((id, body)))
            }
        }
    }
}

/// One field specifier of a template, as it came off the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    /// Information Element id (enterprise bit cleared) or v9 field type.
    pub id: u16,
    /// Private Enterprise Number; 0 for IANA elements.
    pub enterprise: u32,
    /// Field length in bytes, or [`VARLEN`].
    pub len: u16,
}

/// What flowplane does with a field. Resolved once per template field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Not used by flowplane: skipped by length.
    Skip,
    /// octetDeltaCount (1) / v9 IN_BYTES.
    OctetDelta,
    /// octetTotalCount (85) / v9 IN_PERMANENT_BYTES.
    OctetTotal,
    /// postOctetDeltaCount (23) / v9 OUT_BYTES.
    PostOctetDelta,
    /// packetDeltaCount (2) / v9 IN_PKTS.
    PacketDelta,
    /// packetTotalCount (86) / v9 IN_PERMANENT_PKTS.
    PacketTotal,
    /// postPacketDeltaCount (24) / v9 OUT_PKTS.
    PostPacketDelta,
    /// protocolIdentifier (4).
    Protocol,
    /// ipClassOfService (5).
    Tos,
    /// tcpControlBits (6).
    TcpFlags,
    /// sourceTransportPort (7).
    SrcPort,
    /// destinationTransportPort (11).
    DstPort,
    /// sourceIPv4Address (8).
    SrcV4,
    /// destinationIPv4Address (12).
    DstV4,
    /// sourceIPv6Address (27).
    SrcV6,
    /// destinationIPv6Address (28).
    DstV6,
    /// ingressInterface (10).
    InputIf,
    /// egressInterface (14).
    OutputIf,
    /// ingressPhysicalInterface (252).
    IngressPhys,
    /// egressPhysicalInterface (253).
    EgressPhys,
    /// bgpSourceAsNumber (16).
    SrcAs,
    /// bgpDestinationAsNumber (17).
    DstAs,
    /// icmpTypeCodeIPv4 (32): type * 256 + code.
    IcmpTypeCodeV4,
    /// icmpTypeCodeIPv6 (139).
    IcmpTypeCodeV6,
    /// icmpTypeIPv4 (176).
    IcmpTypeV4,
    /// icmpCodeIPv4 (177).
    IcmpCodeV4,
    /// icmpTypeIPv6 (178).
    IcmpTypeV6,
    /// icmpCodeIPv6 (179).
    IcmpCodeV6,
    /// flowEndSysUpTime (21) / v9 LAST_SWITCHED: milliseconds of sysUptime.
    EndSysUpTime,
    /// flowStartSysUpTime (22) / v9 FIRST_SWITCHED.
    StartSysUpTime,
    /// flowStartSeconds (150).
    StartSeconds,
    /// flowEndSeconds (151).
    EndSeconds,
    /// flowStartMilliseconds (152).
    StartMillis,
    /// flowEndMilliseconds (153).
    EndMillis,
    /// flowStartMicroseconds (154) or flowStartNanoseconds (156): NTP timestamp format.
    StartNtp,
    /// flowEndMicroseconds (155) or flowEndNanoseconds (157): NTP timestamp format.
    EndNtp,
    /// flowStartDeltaMicroseconds (158): microseconds before the export time.
    StartDeltaMicros,
    /// flowEndDeltaMicroseconds (159).
    EndDeltaMicros,
    /// systemInitTimeMilliseconds (160): absolute time the sysUptime counter started.
    SystemInitMillis,
    /// samplingInterval (34) / v9 SAMPLING_INTERVAL.
    SamplingInterval,
    /// samplerRandomInterval (50) / v9 FLOW_SAMPLER_RANDOM_INTERVAL.
    SamplerRandomInterval,
    /// samplingPacketInterval (305).
    SamplingPacketInterval,
    /// samplingPacketSpace (306).
    SamplingPacketSpace,
    /// samplingSize (309): packets selected out of each population.
    SamplingSize,
    /// samplingPopulation (310): packets in each population.
    SamplingPopulation,
    /// samplerId (48) / v9 FLOW_SAMPLER_ID.
    SamplerId,
    /// selectorId (302).
    SelectorId,
}

impl Role {
    /// The role of an IANA element or v9 field type; enterprise-specific elements are skipped
    /// (flowplane maps none yet).
    pub fn of(id: u16, enterprise: u32) -> Self {
        if enterprise != 0 {
            // Known gap: RFC 5103 reverse elements (PEN 29305) of biflow exporters such as
            // ipfixprobe and YAF are skipped, so the reverse direction's octets and packets are
            // not counted anywhere.
            return Self::Skip;
        }
        match id {
            1 => Self::OctetDelta,
            2 => Self::PacketDelta,
            4 => Self::Protocol,
            5 => Self::Tos,
            6 => Self::TcpFlags,
            7 => Self::SrcPort,
            8 => Self::SrcV4,
            10 => Self::InputIf,
            11 => Self::DstPort,
            12 => Self::DstV4,
            14 => Self::OutputIf,
            16 => Self::SrcAs,
            17 => Self::DstAs,
            21 => Self::EndSysUpTime,
            22 => Self::StartSysUpTime,
            23 => Self::PostOctetDelta,
            24 => Self::PostPacketDelta,
            27 => Self::SrcV6,
            28 => Self::DstV6,
            32 => Self::IcmpTypeCodeV4,
            34 => Self::SamplingInterval,
            48 => Self::SamplerId,
            50 => Self::SamplerRandomInterval,
            85 => Self::OctetTotal,
            86 => Self::PacketTotal,
            139 => Self::IcmpTypeCodeV6,
            150 => Self::StartSeconds,
            151 => Self::EndSeconds,
            152 => Self::StartMillis,
            153 => Self::EndMillis,
            154 | 156 => Self::StartNtp,
            155 | 157 => Self::EndNtp,
            158 => Self::StartDeltaMicros,
            159 => Self::EndDeltaMicros,
            160 => Self::SystemInitMillis,
            176 => Self::IcmpTypeV4,
            177 => Self::IcmpCodeV4,
            178 => Self::IcmpTypeV6,
            179 => Self::IcmpCodeV6,
            252 => Self::IngressPhys,
            253 => Self::EgressPhys,
            302 => Self::SelectorId,
            305 => Self::SamplingPacketInterval,
            306 => Self::SamplingPacketSpace,
            309 => Self::SamplingSize,
            310 => Self::SamplingPopulation,
            _ => Self::Skip,
        }
    }
}

/// Whether a template describes flow records or option records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TemplateKind {
    /// Flow records (v9 FlowSet 0, IPFIX set 2).
    Data,
    /// Option records (v9 FlowSet 1, IPFIX set 3): read for sampling and system-init time.
    Options,
}

/// Why a template definition was not learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// The definition is invalid ([`DecodeError::BadTemplate`]).
    Invalid,
    /// Valid, but beyond what this decoder keeps (more than [`MAX_TEMPLATE_FIELDS`] fields):
    /// refused and counted, not an error of the exporter.
    TooLarge,
}

/// Most fields a learned template may have. Real templates carry tens of fields; the bound
/// keeps a template's memory (4 bytes per field, twice) small and predictable.
pub const MAX_TEMPLATE_FIELDS: usize = 1_024;

/// Shortest remainder of a set that cannot be alignment padding (which is at most 3 bytes for
/// a 32-bit boundary).
const MAX_ALIGN_PADDING: usize = 4;

/// Largest record a set can hold: a set length is 16 bits and includes a 4-byte header.
const MAX_RECORD_LEN: usize = u16::MAX as usize - field::HEADER_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TField {
    len: u16,
    role: Role,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapped {
    offset: u16,
    len: u16,
    role: Role,
}

/// A learned template, ready to decode records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    kind: TemplateKind,
    fields: Box<[TField]>,
    /// Mapped fields with their offsets, when no field is variable-length.
    fixed: Option<Box<[Mapped]>>,
    /// The compiled form of a data template without variable-length fields.
    plan: Option<plan::Plan>,
    min_len: usize,
}

impl Template {
    /// Builds a template from its field specifiers. The first `skip_first` fields are skipped
    /// whatever their type (NetFlow v9 options scope fields, whose types are scope types, not
    /// field types).
    ///
    /// # Errors
    ///
    /// [`TemplateError::Invalid`] when no field is given or the record length would be 0, or
    /// when the minimum record cannot fit in any set; [`TemplateError::TooLarge`] beyond
    /// [`MAX_TEMPLATE_FIELDS`].
    pub fn new(
        kind: TemplateKind,
        specs: &[FieldSpec],
        skip_first: usize,
    ) -> Result<Self, TemplateError> {
        if specs.is_empty() {
            return Err(TemplateError::Invalid);
        }
        if specs.len() > MAX_TEMPLATE_FIELDS {
            return Err(TemplateError::TooLarge);
        }

        let mut min_len = 0usize;
        let mut varlen = false;
        let mut fields = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let role = if i < skip_first {
                Role::Skip
            } else {
                Role::of(s.id, s.enterprise)
            };
            fields.push(TField { len: s.len, role });
            if s.len == VARLEN {
                // A variable-length field takes at least its 1-byte length prefix.
                varlen = true;
                min_len += 1;
            } else {
                min_len += usize::from(s.len);
            }
        }
        // RFC 7011 § 3.4.1 / RFC 3954 § 5.1: a record of length 0 would make a set of records
        // impossible to delimit.
        if min_len == 0 || min_len > MAX_RECORD_LEN {
            return Err(TemplateError::Invalid);
        }

        let fixed = (!varlen).then(|| {
            let mut off = 0usize;
            let mut mapped = Vec::new();
            for f in &fields {
                if f.role != Role::Skip {
                    // off + len <= min_len <= MAX_RECORD_LEN < 2^16, so the casts are exact.
                    mapped.push(Mapped {
                        offset: off as u16,
                        len: f.len,
                        role: f.role,
                    });
                }
                off += usize::from(f.len);
            }
            mapped.into_boxed_slice()
        });

        // Options records are few and feed the sampler tables: they keep the general path.
        let plan = match kind {
            TemplateKind::Data => plan::Plan::compile(fields.iter().map(|f| (f.len, f.role))),
            TemplateKind::Options => None,
        };
        debug_assert!(plan.as_ref().is_none_or(|p| p.record_len() == min_len));

        Ok(Self {
            kind,
            fields: fields.into_boxed_slice(),
            fixed,
            plan,
            min_len,
        })
    }

    /// Data or options.
    pub fn kind(&self) -> TemplateKind {
        self.kind
    }

    /// Shortest possible record: the fixed fields plus one length byte per variable field.
    pub fn min_len(&self) -> usize {
        self.min_len
    }

    /// Number of fields.
    pub fn field_count(&self) -> usize {
        self.fields.len()
    }

    /// Approximate heap bytes held by this template, for accounting.
    pub fn heap_bytes(&self) -> usize {
        self.fields.len() * size_of::<TField>()
            + self
                .fixed
                .as_ref()
                .map_or(0, |m| m.len() * size_of::<Mapped>())
            + self.plan.as_ref().map_or(0, plan::Plan::heap_bytes)
    }

    /// Decodes every flow record of a data set body into copies of `base`, calling `emit` with
    /// each. `rate` gives the option-announced 1-in-N rate of a sampler; a rate in the record
    /// itself wins, and 1 applies when neither is known. Returns the number of records.
    ///
    /// Templates without variable-length fields run their compiled plan; the others gather
    /// each record field by field ([`Accum`]). Both give the same records.
    ///
    /// # Errors
    ///
    /// As [`Template::for_each_record`]; records before the error were emitted, and the
    /// count of them is what `emit` saw.
    pub fn decode_flows<R, F>(
        &self,
        body: &[u8],
        base: &FlowRecord,
        time: &TimeBase,
        mut rate: R,
        mut emit: F,
    ) -> Result<u32, DecodeError>
    where
        R: FnMut(SamplerRef) -> Option<u32>,
        F: FnMut(&FlowRecord),
    {
        let Some(plan) = &self.plan else {
            return self.decode_flows_general(body, base, time, rate, emit);
        };
        let (n, tail) = plan.decode(body, base, time, &mut rate, &mut emit);
        // The same padding rule as for_each_record.
        if n == 0 && tail >= MAX_ALIGN_PADDING {
            return Err(DecodeError::TruncatedRecord);
        }
        Ok(n)
    }

    /// [`Template::decode_flows`] through [`Accum`]: the path of variable-length templates, and
    /// the reference the compiled plan is tested against.
    fn decode_flows_general<R, F>(
        &self,
        body: &[u8],
        base: &FlowRecord,
        time: &TimeBase,
        mut rate: R,
        mut emit: F,
    ) -> Result<u32, DecodeError>
    where
        R: FnMut(SamplerRef) -> Option<u32>,
        F: FnMut(&FlowRecord),
    {
        self.for_each_record(body, |acc: &Accum| {
            let mut rec = *base;
            acc.finish(&mut rec, time, rate(acc.sampler_ref()));
            emit(&rec);
        })
    }

    /// Decodes every record of a data set body, calling `f` with each gathered record.
    ///
    /// Trailing bytes shorter than [`Template::min_len`] are padding ([RFC 7011 § 3.3.1]) and
    /// are ignored. Returns the number of records.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TruncatedRecord`] when a variable-length field runs past the set, or the
    /// set holds no whole record but 4 bytes or more. Records before it were delivered.
    ///
    /// [RFC 7011 § 3.3.1]: https://www.rfc-editor.org/rfc/rfc7011#section-3.3.1
    pub fn for_each_record<F: FnMut(&Accum)>(
        &self,
        body: &[u8],
        mut f: F,
    ) -> Result<u32, DecodeError> {
        let mut rest = body;
        let mut n = 0u32;
        while rest.len() >= self.min_len {
            let mut acc = Accum::default();
            let used = match &self.fixed {
                Some(mapped) => {
                    let rec = &rest[..self.min_len];
                    for m in mapped.iter() {
                        let start = usize::from(m.offset);
                        acc.apply(m.role, &rec[start..start + usize::from(m.len)]);
                    }
                    self.min_len
                }
                None => self.walk_varlen(rest, &mut acc)?,
            };
            f(&acc);
            n += 1;
            // used >= min_len >= 1: the loop always advances.
            rest = &rest[used..];
        }
        // What is left is shorter than a record. After at least one record it is padding:
        // RFC 3954 § 5.3 pads to a 32-bit boundary, RFC 7011 § 3.3.1 to any alignment, and
        // nProbe leaves longer stray bytes after its last record (accepted: the records before
        // are whole). A set holding no whole record but more than alignment padding, though,
        // is a record cut short.
        if n == 0 && rest.len() >= MAX_ALIGN_PADDING {
            return Err(DecodeError::TruncatedRecord);
        }
        Ok(n)
    }

    /// Walks one record with variable-length fields; returns its length.
    fn walk_varlen(&self, rec: &[u8], acc: &mut Accum) -> Result<usize, DecodeError> {
        let mut off = 0usize;
        for f in self.fields.iter() {
            let len = if f.len == VARLEN {
                // RFC 7011 § 7: one length byte, or 255 followed by a 2-byte length.
                let first = *rec.get(off).ok_or(DecodeError::TruncatedRecord)?;
                off += 1;
                if first < 255 {
                    usize::from(first)
                } else {
                    let b = rec.get(off..off + 2).ok_or(DecodeError::TruncatedRecord)?;
                    off += 2;
                    usize::from(u16::from_be_bytes([b[0], b[1]]))
                }
            } else {
                usize::from(f.len)
            };
            let value = rec
                .get(off..off + len)
                .ok_or(DecodeError::TruncatedRecord)?;
            if f.role != Role::Skip {
                acc.apply(f.role, value);
            }
            off += len;
        }
        Ok(off)
    }
}

/// One record's values, gathered field by field. A plain stack value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Accum {
    octets: [Option<u64>; 3],
    packets: [Option<u64>; 3],
    protocol: Option<u8>,
    tos: Option<u8>,
    tcp_flags: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    src_v4: Option<[u8; 4]>,
    dst_v4: Option<[u8; 4]>,
    src_v6: Option<[u8; 16]>,
    dst_v6: Option<[u8; 16]>,
    input_if: Option<u32>,
    output_if: Option<u32>,
    ingress_phys: Option<u32>,
    egress_phys: Option<u32>,
    src_as: Option<u32>,
    dst_as: Option<u32>,
    icmp_type_code: Option<u16>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    start_uptime: Option<u32>,
    end_uptime: Option<u32>,
    start_abs_ms: Option<u64>,
    end_abs_ms: Option<u64>,
    start_delta_us: Option<u64>,
    end_delta_us: Option<u64>,
    sys_init_ms: Option<u64>,
    sampling_interval: Option<u64>,
    random_interval: Option<u64>,
    packet_interval: Option<u64>,
    packet_space: Option<u64>,
    sampling_size: Option<u64>,
    sampling_population: Option<u64>,
    sampler_id: Option<u64>,
    selector_id: Option<u64>,
}

/// Where a record's export header puts it in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeBase {
    /// Export time of the message, Unix milliseconds.
    pub export_ms: u64,
    /// NetFlow v9: sysUptime at export (ms), for FIRST_SWITCHED / LAST_SWITCHED.
    pub sys_uptime: Option<u32>,
    /// IPFIX: systemInitTimeMilliseconds announced in options data for this domain, for
    /// flowStartSysUpTime / flowEndSysUpTime.
    pub sys_init_ms: Option<u64>,
}

/// Which sampler a record names, for looking up an option-announced rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerRef {
    /// No sampler named: the rate announced for the whole (exporter, domain) scope.
    Scope,
    /// samplerId (48) / v9 FLOW_SAMPLER_ID.
    Sampler(u64),
    /// selectorId (302).
    Selector(u64),
}

impl Accum {
    /// Stores one field value. Values of an unexpected length are ignored, never misread:
    /// integers accept 1..=8 bytes (reduced-size encoding, RFC 7011 § 6.2), addresses only
    /// their exact size.
    #[inline]
    pub fn apply(&mut self, role: Role, v: &[u8]) {
        let uint = || read_uint(v);
        match role {
            Role::Skip => {}
            Role::OctetDelta => self.octets[0] = uint(),
            Role::OctetTotal => self.octets[1] = uint(),
            Role::PostOctetDelta => self.octets[2] = uint(),
            Role::PacketDelta => self.packets[0] = uint(),
            Role::PacketTotal => self.packets[1] = uint(),
            Role::PostPacketDelta => self.packets[2] = uint(),
            Role::Protocol => self.protocol = uint().map(|x| x as u8),
            Role::Tos => self.tos = uint().map(|x| x as u8),
            Role::TcpFlags => self.tcp_flags = uint().map(|x| x as u8),
            Role::SrcPort => self.src_port = uint().map(|x| x as u16),
            Role::DstPort => self.dst_port = uint().map(|x| x as u16),
            Role::SrcV4 => self.src_v4 = v.try_into().ok(),
            Role::DstV4 => self.dst_v4 = v.try_into().ok(),
            Role::SrcV6 => self.src_v6 = v.try_into().ok(),
            Role::DstV6 => self.dst_v6 = v.try_into().ok(),
            Role::InputIf => self.input_if = uint().map(|x| x as u32),
            Role::OutputIf => self.output_if = uint().map(|x| x as u32),
            Role::IngressPhys => self.ingress_phys = uint().map(|x| x as u32),
            Role::EgressPhys => self.egress_phys = uint().map(|x| x as u32),
            Role::SrcAs => self.src_as = uint().map(|x| x as u32),
            Role::DstAs => self.dst_as = uint().map(|x| x as u32),
            Role::IcmpTypeCodeV4 | Role::IcmpTypeCodeV6 => {
                self.icmp_type_code = uint().map(|x| x as u16);
            }
            Role::IcmpTypeV4 | Role::IcmpTypeV6 => self.icmp_type = uint().map(|x| x as u8),
            Role::IcmpCodeV4 | Role::IcmpCodeV6 => self.icmp_code = uint().map(|x| x as u8),
            Role::EndSysUpTime => self.end_uptime = uint().map(|x| x as u32),
            Role::StartSysUpTime => self.start_uptime = uint().map(|x| x as u32),
            Role::StartSeconds => self.start_abs_ms = uint().map(|s| s.saturating_mul(1_000)),
            Role::EndSeconds => self.end_abs_ms = uint().map(|s| s.saturating_mul(1_000)),
            Role::StartMillis => self.start_abs_ms = uint(),
            Role::EndMillis => self.end_abs_ms = uint(),
            Role::StartNtp => self.start_abs_ms = ntp_to_unix_ms(v),
            Role::EndNtp => self.end_abs_ms = ntp_to_unix_ms(v),
            Role::StartDeltaMicros => self.start_delta_us = uint(),
            Role::EndDeltaMicros => self.end_delta_us = uint(),
            Role::SystemInitMillis => self.sys_init_ms = uint(),
            Role::SamplingInterval => self.sampling_interval = uint(),
            Role::SamplerRandomInterval => self.random_interval = uint(),
            Role::SamplingPacketInterval => self.packet_interval = uint(),
            Role::SamplingPacketSpace => self.packet_space = uint(),
            Role::SamplingSize => self.sampling_size = uint(),
            Role::SamplingPopulation => self.sampling_population = uint(),
            Role::SamplerId => self.sampler_id = uint(),
            Role::SelectorId => self.selector_id = uint(),
        }
    }

    /// The 1-in-N rate carried in the record itself, if any, from the first of:
    ///
    /// 1. samplingInterval (34) or samplerRandomInterval (50): N directly;
    /// 2. samplingPopulation (310) / samplingSize (309): `size` packets selected out of every
    ///    `population` (RFC 5477 § 8.2.4, n-out-of-N sampling; Cisco exports this);
    /// 3. samplingPacketInterval (305) with samplingPacketSpace (306): `interval` packets
    ///    selected, then `space` skipped (RFC 5477 § 8.2.2), so `N = (interval + space) /
    ///    interval`, rounded to the nearest integer.
    ///
    /// Zero values announce nothing.
    pub fn sampling_rate(&self) -> Option<u32> {
        sampling_rate_of(
            self.sampling_interval,
            self.random_interval,
            self.sampling_size,
            self.sampling_population,
            self.packet_interval,
            self.packet_space,
        )
    }

    /// The sampler this record names, if any.
    pub fn sampler_ref(&self) -> SamplerRef {
        sampler_ref_of(self.sampler_id, self.selector_id)
    }

    /// systemInitTimeMilliseconds (160) carried in this record.
    pub fn sys_init_ms(&self) -> Option<u64> {
        self.sys_init_ms
    }

    /// Fills `rec` (which already holds the exporter, format and domain) from this record.
    ///
    /// `sampling` is the rate announced elsewhere (options data) for this record's sampler or
    /// scope; a rate in the record itself wins.
    pub fn finish(&self, rec: &mut FlowRecord, time: &TimeBase, sampling: Option<u32>) {
        // Counters: the delta counters are what flowplane aggregates; total and post counters
        // are fallbacks for exporters that send only those.
        rec.bytes = self.octets.iter().find_map(|x| *x).unwrap_or(0);
        rec.packets = self.packets.iter().find_map(|x| *x).unwrap_or(0);

        // Addresses: IPv6 only when the record has no usable IPv4 pair (some templates carry
        // both families, with the unused one zeroed).
        let v4_used = matches!((self.src_v4, self.dst_v4), (Some(s), Some(d)) if s != [0; 4] || d != [0; 4])
            || (self.src_v4.is_some() && self.src_v6.is_none() && self.dst_v6.is_none());
        if v4_used || (self.src_v6.is_none() && self.dst_v6.is_none()) {
            rec.src_addr = self.src_v4.map_or([0; 16], v4_to_bytes);
            rec.dst_addr = self.dst_v4.map_or([0; 16], v4_to_bytes);
            let any = self.src_v4.is_some() || self.dst_v4.is_some();
            rec.ip_version = if any { 4 } else { 0 };
        } else {
            rec.src_addr = self.src_v6.unwrap_or([0; 16]);
            rec.dst_addr = self.dst_v6.unwrap_or([0; 16]);
            rec.ip_version = 6;
        }

        rec.protocol = self.protocol.unwrap_or(0);
        rec.tos = self.tos.unwrap_or(0);
        rec.tcp_flags = self.tcp_flags.unwrap_or(0);
        rec.src_port = self.src_port.unwrap_or(0);
        // ICMP type and code go where NetFlow exporters put them, the destination port, but
        // only when the template has no destination port of its own.
        let icmp = self
            .icmp_type_code
            .or(match (self.icmp_type, self.icmp_code) {
                (None, None) => None,
                (t, c) => Some(u16::from(t.unwrap_or(0)) << 8 | u16::from(c.unwrap_or(0))),
            });
        rec.dst_port = self.dst_port.or(icmp).unwrap_or(0);

        rec.input_if = self.input_if.or(self.ingress_phys).unwrap_or(0);
        rec.output_if = self.output_if.or(self.egress_phys).unwrap_or(0);
        rec.src_as = self.src_as.unwrap_or(0);
        rec.dst_as = self.dst_as.unwrap_or(0);

        let init = self.sys_init_ms.or(time.sys_init_ms);
        rec.start_ms = flow_time(
            self.start_abs_ms,
            self.start_delta_us,
            self.start_uptime,
            time,
            init,
        );
        rec.end_ms = flow_time(
            self.end_abs_ms,
            self.end_delta_us,
            self.end_uptime,
            time,
            init,
        );

        rec.sampling_rate = self.sampling_rate().or(sampling).unwrap_or(1);
    }
}

/// [`Accum::sampling_rate`] from the record's sampling fields.
fn sampling_rate_of(
    interval: Option<u64>,
    random_interval: Option<u64>,
    size: Option<u64>,
    population: Option<u64>,
    packet_interval: Option<u64>,
    packet_space: Option<u64>,
) -> Option<u32> {
    let nonzero = |v: Option<u64>| v.filter(|n| *n > 0);
    let rate = if let Some(n) = nonzero(interval) {
        n
    } else if let Some(n) = nonzero(random_interval) {
        n
    } else if let (Some(size), Some(pop)) = (nonzero(size), nonzero(population)) {
        pop.saturating_add(size / 2) / size
    } else if let Some(i) = nonzero(packet_interval) {
        let space = packet_space.unwrap_or(0);
        i.saturating_add(space).saturating_add(i / 2) / i
    } else {
        return None;
    };
    Some(u32::try_from(rate).unwrap_or(u32::MAX).max(1))
}

/// [`Accum::sampler_ref`]: samplerId wins over selectorId.
fn sampler_ref_of(sampler_id: Option<u64>, selector_id: Option<u64>) -> SamplerRef {
    match (sampler_id, selector_id) {
        (Some(id), _) => SamplerRef::Sampler(id),
        (None, Some(id)) => SamplerRef::Selector(id),
        (None, None) => SamplerRef::Scope,
    }
}

/// One flow timestamp from whichever form the exporter used, in order of precision: absolute,
/// delta to the export time, or sysUptime (v9: relative to the header; IPFIX: relative to
/// systemInitTimeMilliseconds). 0 when none applies.
fn flow_time(
    abs: Option<u64>,
    delta_us: Option<u64>,
    uptime: Option<u32>,
    time: &TimeBase,
    init: Option<u64>,
) -> u64 {
    if let Some(ms) = abs {
        return ms;
    }
    if let Some(us) = delta_us {
        return time.export_ms.saturating_sub(us / 1_000);
    }
    match (uptime, time.sys_uptime, init) {
        (Some(at), Some(now_up), _) => {
            crate::netflow_v5::uptime_to_unix_ms(time.export_ms, now_up, at)
        }
        (Some(at), None, Some(init)) => init.saturating_add(u64::from(at)),
        // Known gap: IPFIX sysUpTime-relative times with no systemInitTimeMilliseconds in the
        // record or in options data stay unknown (0); the exporter's boot time could also be
        // estimated from its Exporting Process Reliability Statistics.
        _ => 0,
    }
}

/// Reads a big-endian unsigned integer of 1 to 8 bytes.
#[inline]
pub fn read_uint(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
}

/// Seconds between the NTP epoch (1900-01-01) and the Unix epoch (1970-01-01): 70 years with
/// 17 leap days, `(70 * 365 + 17) * 86_400`.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// RFC 7011 § 6.1.9 / § 6.1.10: dateTimeMicroseconds and dateTimeNanoseconds are 64-bit NTP
/// timestamps, 32 bits of seconds since 1900 and 32 bits of fraction. Anything else, or a time
/// before 1970, is ignored.
fn ntp_to_unix_ms(v: &[u8]) -> Option<u64> {
    ntp_raw_to_unix_ms(u64::from_be_bytes(v.try_into().ok()?))
}

/// [`ntp_to_unix_ms`] of the 8 bytes read as one big-endian integer.
fn ntp_raw_to_unix_ms(raw: u64) -> Option<u64> {
    let secs = (raw >> 32).checked_sub(NTP_UNIX_OFFSET)?;
    let frac_ms = ((raw & 0xffff_ffff) * 1_000) >> 32;
    Some(secs * 1_000 + frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u16, len: u16) -> FieldSpec {
        FieldSpec {
            id,
            enterprise: 0,
            len,
        }
    }

    #[test]
    fn iterates_sets_and_stops_on_error() {
        let body = [0, 2, 0, 6, 0xaa, 0xbb, 1, 0, 0, 4, 0, 9, 0, 0];
        let mut it = Sets::new(&body, false);
        assert_eq!(it.next(), Some(Ok((2, &[0xaa, 0xbb][..]))));
        assert_eq!(it.next(), Some(Ok((256, &[][..]))));
        assert_eq!(it.next(), Some(Err(DecodeError::BadSetLength)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn refuses_zero_and_overlong_set_lengths() {
        for body in [
            &[0u8, 2, 0, 0][..],
            &[0, 2, 0, 3],
            &[0, 2, 0, 9, 0, 0],
            &[0, 2],
        ] {
            let mut it = Sets::new(body, false);
            assert_eq!(it.next(), Some(Err(DecodeError::BadSetLength)), "{body:?}");
            assert_eq!(it.next(), None);
        }
        // v9 accepts a short tail, or a zero tail, as datagram padding.
        assert_eq!(Sets::new(&[0, 0], true).next(), None);
        assert_eq!(Sets::new(&[0; 12], true).next(), None);
        let mut it = Sets::new(&[0, 0, 0, 0, 0, 1], true);
        assert_eq!(it.next(), Some(Err(DecodeError::BadSetLength)));
        // IPFIX does not.
        assert_eq!(
            Sets::new(&[0; 12], false).next(),
            Some(Err(DecodeError::BadSetLength))
        );
    }

    #[test]
    fn refuses_zero_length_templates() {
        assert_eq!(
            Template::new(TemplateKind::Data, &[], 0),
            Err(TemplateError::Invalid)
        );
        assert_eq!(
            Template::new(TemplateKind::Data, &[spec(1, 0), spec(2, 0)], 0),
            Err(TemplateError::Invalid)
        );
        let many = vec![spec(1, 1); MAX_TEMPLATE_FIELDS + 1];
        assert_eq!(
            Template::new(TemplateKind::Data, &many, 0),
            Err(TemplateError::TooLarge)
        );
    }

    #[test]
    fn decodes_varlen_fields_in_both_forms() {
        // protocol, a string (varlen), destination port.
        let t = Template::new(
            TemplateKind::Data,
            &[spec(4, 1), spec(82, VARLEN), spec(11, 2)],
            0,
        )
        .unwrap();
        assert_eq!(t.min_len(), 4);
        let mut body = vec![6, 3, b'a', b'b', b'c', 0, 80];
        body.extend_from_slice(&[17, 255, 0x01, 0x2c]); // 255, then length 300
        body.extend(std::iter::repeat_n(b'x', 300));
        body.extend_from_slice(&[0, 53]);
        body.extend_from_slice(&[0, 0, 0]); // padding shorter than min_len
        let mut seen = Vec::new();
        let n = t
            .for_each_record(&body, |a| {
                let mut r = FlowRecord::default();
                a.finish(&mut r, &TimeBase::default(), None);
                seen.push((r.protocol, r.dst_port));
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(seen, vec![(6, 80), (17, 53)]);

        // A length running past the set is a truncated record, after the good one.
        let short = [6, 3, b'a', b'b', b'c', 0, 80, 17, 9, 0, 0, 0];
        let mut count = 0;
        let err = t.for_each_record(&short, |_| count += 1).unwrap_err();
        assert_eq!((err, count), (DecodeError::TruncatedRecord, 1));
        let short3 = [17, 255, 0, 0, 0];
        assert_eq!(
            t.for_each_record(&short3[..4], |_| {}).unwrap_err(),
            DecodeError::TruncatedRecord
        );
    }

    #[test]
    fn converts_ntp_timestamps() {
        // 2023-11-14 22:13:20.500 UTC.
        let secs = 1_700_000_000u64 + NTP_UNIX_OFFSET;
        let raw = (secs << 32) | 0x8000_0000;
        assert_eq!(ntp_to_unix_ms(&raw.to_be_bytes()), Some(1_700_000_000_500));
        assert_eq!(ntp_to_unix_ms(&[0; 8]), None);
        assert_eq!(ntp_to_unix_ms(&[0; 4]), None);
    }

    #[test]
    fn packet_interval_and_space_give_a_rate() {
        let mut a = Accum::default();
        a.apply(Role::SamplingPacketInterval, &[1]);
        a.apply(Role::SamplingPacketSpace, &[0, 99]);
        assert_eq!(a.sampling_rate(), Some(100));
        a.apply(Role::SamplingInterval, &[0, 0, 0, 0]);
        assert_eq!(
            a.sampling_rate(),
            Some(100),
            "a zero interval announces nothing"
        );
        a.apply(Role::SamplingSize, &[0, 0, 0, 1]);
        a.apply(Role::SamplingPopulation, &[0, 0, 1, 0]);
        assert_eq!(
            a.sampling_rate(),
            Some(256),
            "n-out-of-N wins over interval/space"
        );
        a.apply(Role::SamplingInterval, &[0, 0, 4, 0]);
        assert_eq!(a.sampling_rate(), Some(1024));
    }

    mod plan_prop {
        use proptest::prelude::*;

        use super::*;

        /// Every element flowplane maps (some twice, for duplicates), and a few it skips.
        const IDS: &[u16] = &[
            1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 14, 16, 17, 21, 22, 23, 24, 27, 28, 32, 34, 48, 50,
            85, 86, 139, 150, 151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 176, 177, 178, 179,
            252, 253, 302, 305, 306, 309, 310, 3, 60, 82, 1, 8, 12, 27, 152,
        ];

        /// The length an exporter would use: addresses 4 or 16, NTP times 8, others 4.
        fn natural_len(id: u16) -> u16 {
            match id {
                8 | 12 => 4,
                27 | 28 => 16,
                154..=157 => 8,
                4 | 5 | 6 | 176..=179 => 1,
                7 | 11 | 32 | 139 => 2,
                _ => 4,
            }
        }

        fn field() -> impl Strategy<Value = FieldSpec> {
            // 0: natural length; 1: a common width; 2: anything, impossible lengths included.
            let len = prop_oneof![
                6 => Just(None),
                3 => prop::sample::select(vec![1u16, 2, 3, 4, 8, 16]).prop_map(Some),
                1 => (0u16..20).prop_map(Some),
            ];
            (prop::sample::select(IDS), len, prop::bool::weighted(0.05)).prop_map(
                |(id, len, ent)| FieldSpec {
                    id,
                    enterprise: if ent { 29_305 } else { 0 },
                    len: len.unwrap_or_else(|| natural_len(id)),
                },
            )
        }

        /// A byte: zero often, so that all-zero addresses and zero sampling fields happen.
        fn byte() -> impl Strategy<Value = u8> {
            prop_oneof![Just(0u8), any::<u8>()]
        }

        fn time() -> impl Strategy<Value = TimeBase> {
            (
                any::<u64>(),
                prop::option::of(any::<u32>()),
                prop::option::of(any::<u64>()),
            )
                .prop_map(|(export_ms, sys_uptime, sys_init_ms)| TimeBase {
                    export_ms,
                    sys_uptime,
                    sys_init_ms,
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4_000))]

            /// The compiled plan gives the records, count and error of the field-by-field
            /// reference path ([`Accum`]), for any template and data.
            #[test]
            fn plan_matches_reference(
                specs in prop::collection::vec(field(), 1..24),
                bytes in prop::collection::vec(byte(), 0..400),
                time in time(),
                scope_rate in prop::option::of(1u32..1_000),
                base_port in any::<u16>(),
            ) {
                let Ok(t) = Template::new(TemplateKind::Data, &specs, 0) else {
                    return Ok(());
                };
                prop_assert_eq!(t.plan.is_some(), t.min_len() >= 8);
                // Named samplers: an announced rate for some ids only.
                let rate = |r: SamplerRef| match r {
                    SamplerRef::Scope => scope_rate,
                    SamplerRef::Sampler(id) | SamplerRef::Selector(id) => {
                        (id % 3 == 0).then_some((id % 97) as u32 + 1).or(scope_rate)
                    }
                };
                let base = FlowRecord {
                    exporter_port: base_port,
                    dst_port: base_port,
                    ip_version: 9,
                    ..FlowRecord::default()
                };
                let (mut fast, mut slow) = (Vec::new(), Vec::new());
                let a = t.decode_flows(&bytes, &base, &time, rate, |r| fast.push(*r));
                let b = t.decode_flows_general(&bytes, &base, &time, rate, |r| slow.push(*r));
                prop_assert_eq!(a, b);
                prop_assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn counters_fall_back_in_order() {
        let mut a = Accum::default();
        a.apply(Role::PostOctetDelta, &[0, 0, 0, 9]);
        a.apply(Role::OctetTotal, &[0, 7]);
        a.apply(Role::PacketTotal, &[3]);
        a.apply(Role::IngressPhys, &[0, 5]);
        a.apply(Role::IcmpTypeV6, &[128]);
        let mut r = FlowRecord::default();
        a.finish(&mut r, &TimeBase::default(), Some(5));
        assert_eq!((r.bytes, r.packets, r.input_if), (7, 3, 5));
        assert_eq!(r.dst_port, 128 << 8);
        assert_eq!(r.sampling_rate, 5);
        a.apply(Role::OctetDelta, &[1]);
        a.apply(Role::InputIf, &[0, 0, 0, 2]);
        a.finish(&mut r, &TimeBase::default(), None);
        assert_eq!((r.bytes, r.input_if, r.sampling_rate), (1, 2, 1));
    }
}
