//! A data template compiled for decoding: the fast path of [`super::Template`].
//!
//! The interpretive path ([`super::Accum`]) dispatches on every field's [`Role`] for every
//! record, gathers `Option`s, then chooses among fallbacks in [`super::Accum::finish`]. Most of
//! that work depends only on the template, so it is done once here, when the template is
//! learned:
//!
//! * Every [`Accum`](super::Accum) slot is written by the *last* field that maps to it (a later
//!   duplicate overwrites an earlier one, even with "absent" when its length is unusable), so
//!   only that field is read. Fields flowplane does not use are never looked at.
//! * Whether a slot is present is a property of the template (a field of a usable length
//!   exists), except for NTP timestamps before 1970, which stay a per-record decision.
//! * So the fallbacks of `finish` (which counter, which interface, which address family, which
//!   time form) are chosen here, and a record is decoded by reading a few big-endian integers
//!   at fixed offsets into a flat array, then a straight-line fill of the [`FlowRecord`].
//!
//! Only data templates without variable-length fields and with records of at least 8 bytes are
//! compiled; the others keep the interpretive path. The two paths must agree on every input:
//! `tests::plan_matches_reference` checks that with random templates and data.

use super::{
    Role, SamplerRef, TimeBase, flow_time, ntp_raw_to_unix_ms, sampler_ref_of, sampling_rate_of,
};
use crate::{FlowRecord, v4_to_bytes};

/// A compiled data template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Record length: the stride of a data set.
    record_len: usize,
    /// One read per used slot (two for an IPv6 address).
    steps: Box<[Step]>,
    /// Which slots hold a value (a usable field exists), bit per [`Slot`].
    present: u64,
    /// Where `bytes`, `packets`, `input_if` and `output_if` come from (fallbacks chosen).
    bytes: Option<Slot>,
    packets: Option<Slot>,
    input_if: Option<Slot>,
    output_if: Option<Slot>,
    /// `dst_port`: the port, else ICMP type/code in one field, else type and code apart.
    dst_port: DstPort,
    addr: Addr,
    start: Time,
    end: Time,
    /// The record carries a sampling field or names a sampler: the rate is per record.
    per_record_rate: bool,
}

/// One read: the 8-byte big-endian window at `window`, shifted so that the field's bytes are
/// the low end of the result, into `vals[slot]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    window: u16,
    /// Bits before the field inside the window.
    lshift: u8,
    /// `64 - 8 * len`: drops the bytes after the field.
    rshift: u8,
    slot: u8,
}

/// Where `dst_port` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DstPort {
    /// destinationTransportPort, or icmpTypeCode (one 16-bit value), or nothing (slot 0).
    Port,
    /// icmpType and/or icmpCode: `type << 8 | code`.
    TypeCode,
}

/// How addresses and `ip_version` are filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Addr {
    /// IPv4 fields only (or neither family: `ip_version` 0).
    V4,
    /// IPv6, because no IPv4 pair exists.
    V6,
    /// Both IPv4 fields and an IPv6 field: IPv4 unless the pair is all zero.
    Either,
}

/// How one timestamp (start or end) is found; see [`flow_time`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Time {
    abs: Abs,
    abs_slot: Slot,
    delta_slot: Slot,
    uptime_slot: Slot,
}

/// Unit of the absolute timestamp field that won.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abs {
    None,
    Seconds,
    Millis,
    Ntp,
}

/// The values of one record, indexed by [`Slot`]. Slots the template does not fill stay 0.
/// [`VALS`] entries, a power of two, so that indexing with a masked slot needs no check.
type Vals = [u64; VALS];

/// Index of a value in [`Vals`]; one per [`Accum`](super::Accum) field (IPv6 addresses take
/// two: an address field's winner is recorded on the high slot, and the low slot follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Slot {
    OctetDelta,
    OctetTotal,
    PostOctetDelta,
    PacketDelta,
    PacketTotal,
    PostPacketDelta,
    Protocol,
    Tos,
    TcpFlags,
    SrcPort,
    DstPort,
    SrcV4,
    DstV4,
    SrcV6Hi,
    SrcV6Lo,
    DstV6Hi,
    DstV6Lo,
    InputIf,
    OutputIf,
    IngressPhys,
    EgressPhys,
    SrcAs,
    DstAs,
    IcmpTypeCode,
    IcmpType,
    IcmpCode,
    StartUptime,
    EndUptime,
    StartAbs,
    EndAbs,
    StartDelta,
    EndDelta,
    SysInit,
    SamplingInterval,
    RandomInterval,
    PacketInterval,
    PacketSpace,
    SamplingSize,
    SamplingPopulation,
    SamplerId,
    SelectorId,
}

/// Number of slots.
const SLOTS: usize = Slot::SelectorId as usize + 1;
/// Length of [`Vals`].
const VALS: usize = 64;
const _: () = assert!(SLOTS <= VALS && VALS.is_power_of_two() && VALS <= u64::BITS as usize);

// At most one step per slot (an IPv6 address's second step takes its low slot), so a plan holds
// at most SLOTS steps of this size; docs/decoders.md bounds template memory with both numbers.
const _: () = assert!(size_of::<Step>() == 6 && SLOTS == 41);

/// A window read needs 8 bytes of record.
const WINDOW: usize = 8;

impl Plan {
    /// Compiles a data template given as `(length, role)` per field, in template order. `None`
    /// when the template has a variable-length field or records shorter than [`WINDOW`].
    pub(crate) fn compile(fields: impl Iterator<Item = (u16, Role)>) -> Option<Self> {
        // The last field mapping to a slot wins; `None` when its length is unusable.
        let mut last: [Option<Option<(usize, u16, Abs)>>; SLOTS] = [None; SLOTS];
        let mut off = 0usize;
        for (len, role) in fields {
            if len == super::VARLEN {
                return None;
            }
            let usable_uint = (1..=8).contains(&len);
            let (slot, usable, abs) = match role {
                Role::Skip => {
                    off += usize::from(len);
                    continue;
                }
                Role::SrcV4 => (Slot::SrcV4, len == 4, Abs::None),
                Role::DstV4 => (Slot::DstV4, len == 4, Abs::None),
                Role::SrcV6 => (Slot::SrcV6Hi, len == 16, Abs::None),
                Role::DstV6 => (Slot::DstV6Hi, len == 16, Abs::None),
                Role::StartSeconds => (Slot::StartAbs, usable_uint, Abs::Seconds),
                Role::EndSeconds => (Slot::EndAbs, usable_uint, Abs::Seconds),
                Role::StartMillis => (Slot::StartAbs, usable_uint, Abs::Millis),
                Role::EndMillis => (Slot::EndAbs, usable_uint, Abs::Millis),
                Role::StartNtp => (Slot::StartAbs, len == 8, Abs::Ntp),
                Role::EndNtp => (Slot::EndAbs, len == 8, Abs::Ntp),
                other => (uint_slot(other), usable_uint, Abs::None),
            };
            last[slot as usize] = Some(usable.then_some((off, len, abs)));
            off += usize::from(len);
        }
        let record_len = off;
        if record_len < WINDOW {
            return None;
        }

        let mut steps = Vec::new();
        let mut present = 0u64;
        let mut abs_of = [Abs::None; 2];
        for (i, winner) in last.iter().enumerate() {
            let Some(Some((off, len, abs))) = *winner else {
                continue;
            };
            present |= 1 << i;
            if i == Slot::StartAbs as usize {
                abs_of[0] = abs;
            } else if i == Slot::EndAbs as usize {
                abs_of[1] = abs;
            }
            // An IPv6 address is two 8-byte reads into consecutive slots.
            if len == 16 {
                steps.push(Step::new(off, 8, i, record_len));
                steps.push(Step::new(off + 8, 8, i + 1, record_len));
                present |= 1 << (i + 1);
            } else {
                steps.push(Step::new(off, usize::from(len), i, record_len));
            }
        }
        let has = |s: Slot| present & (1 << s as usize) != 0;
        let first = |slots: &[Slot]| slots.iter().copied().find(|s| has(*s));

        // Accum::finish: IPv6 only when the record has no usable IPv4 pair.
        let any_v6 = has(Slot::SrcV6Hi) || has(Slot::DstV6Hi);
        let addr = if !any_v6 {
            Addr::V4
        } else if has(Slot::SrcV4) && has(Slot::DstV4) {
            Addr::Either
        } else {
            Addr::V6
        };
        let dst_port = if has(Slot::DstPort) || has(Slot::IcmpTypeCode) {
            DstPort::Port
        } else {
            DstPort::TypeCode
        };
        // With a port field, the ICMP fields are not read at all (the port wins).
        let port_slot = if has(Slot::DstPort) {
            Some(Slot::DstPort)
        } else if has(Slot::IcmpTypeCode) {
            Some(Slot::IcmpTypeCode)
        } else {
            None
        };
        let keep = |s: u8| match s {
            s if s == Slot::IcmpTypeCode as u8 => port_slot == Some(Slot::IcmpTypeCode),
            s if s == Slot::IcmpType as u8 || s == Slot::IcmpCode as u8 => port_slot.is_none(),
            _ => true,
        };
        steps.retain(|st| keep(st.slot));
        // icmpTypeCode is read into the port slot when it is the source.
        for st in &mut steps {
            if st.slot == Slot::IcmpTypeCode as u8 {
                st.slot = Slot::DstPort as u8;
            }
        }

        let sampling = [
            Slot::SamplingInterval,
            Slot::RandomInterval,
            Slot::PacketInterval,
            Slot::PacketSpace,
            Slot::SamplingSize,
            Slot::SamplingPopulation,
            Slot::SamplerId,
            Slot::SelectorId,
        ];
        let time = |abs, abs_slot, delta_slot, uptime_slot| Time {
            abs,
            abs_slot,
            delta_slot,
            uptime_slot,
        };
        Some(Self {
            record_len,
            steps: steps.into_boxed_slice(),
            present,
            bytes: first(&[Slot::OctetDelta, Slot::OctetTotal, Slot::PostOctetDelta]),
            packets: first(&[Slot::PacketDelta, Slot::PacketTotal, Slot::PostPacketDelta]),
            input_if: first(&[Slot::InputIf, Slot::IngressPhys]),
            output_if: first(&[Slot::OutputIf, Slot::EgressPhys]),
            dst_port,
            addr,
            start: time(
                abs_of[0],
                Slot::StartAbs,
                Slot::StartDelta,
                Slot::StartUptime,
            ),
            end: time(abs_of[1], Slot::EndAbs, Slot::EndDelta, Slot::EndUptime),
            per_record_rate: sampling.iter().any(|s| has(*s)),
        })
    }

    /// Record length.
    pub(crate) fn record_len(&self) -> usize {
        self.record_len
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.steps.len() * size_of::<Step>()
    }

    /// Decodes the records of a data set body: each record is `base` with the flow fields
    /// filled, passed to `emit`. `rate` gives the option-announced rate for a sampler (it is
    /// asked once for [`SamplerRef::Scope`] when records name no sampler). Returns the number
    /// of records and the length of the trailing bytes shorter than a record.
    pub(crate) fn decode<R, F>(
        &self,
        body: &[u8],
        base: &FlowRecord,
        time: &TimeBase,
        mut rate: R,
        mut emit: F,
    ) -> (u32, usize)
    where
        R: FnMut(SamplerRef) -> Option<u32>,
        F: FnMut(&FlowRecord),
    {
        let scope_rate = if self.per_record_rate {
            None
        } else {
            Some(rate(SamplerRef::Scope).unwrap_or(1))
        };
        let mut vals: Vals = [0; VALS];
        let mut n = 0u32;
        // `fill` and the rate overwrite every field a record sets, the same ones each time, so
        // one copy of `base` serves the whole set.
        let mut rec = *base;
        let records = body.chunks_exact(self.record_len);
        let tail = records.remainder().len();
        for r in records {
            for st in self.steps.iter() {
                vals[usize::from(st.slot) & (VALS - 1)] = st.read(r);
            }
            self.fill(&vals, &mut rec, time);
            rec.sampling_rate = match scope_rate {
                Some(s) => s,
                None => self.record_rate(&vals, &mut rate),
            };
            emit(&rec);
            n += 1;
        }
        (n, tail)
    }

    /// Accum::finish without the choices: those were made in [`Plan::compile`]. Writes every
    /// field finish writes except `sampling_rate`.
    #[inline(always)]
    fn fill(&self, v: &Vals, rec: &mut FlowRecord, time: &TimeBase) {
        let at = |s: Option<Slot>| s.map_or(0, |s| v[s as usize]);
        rec.bytes = at(self.bytes);
        rec.packets = at(self.packets);

        let v4 = |s: Slot| {
            if self.has(s) {
                v4_to_bytes((v[s as usize] as u32).to_be_bytes())
            } else {
                [0; 16]
            }
        };
        let v6 = |hi: Slot, lo: Slot| {
            let mut b = [0u8; 16];
            if self.has(hi) {
                b[..8].copy_from_slice(&v[hi as usize].to_be_bytes());
                b[8..].copy_from_slice(&v[lo as usize].to_be_bytes());
            }
            b
        };
        let use_v4 = match self.addr {
            Addr::V4 => true,
            Addr::V6 => false,
            Addr::Either => v[Slot::SrcV4 as usize] != 0 || v[Slot::DstV4 as usize] != 0,
        };
        if use_v4 {
            rec.src_addr = v4(Slot::SrcV4);
            rec.dst_addr = v4(Slot::DstV4);
            rec.ip_version = if self.has(Slot::SrcV4) || self.has(Slot::DstV4) {
                4
            } else {
                0
            };
        } else {
            rec.src_addr = v6(Slot::SrcV6Hi, Slot::SrcV6Lo);
            rec.dst_addr = v6(Slot::DstV6Hi, Slot::DstV6Lo);
            rec.ip_version = 6;
        }

        // Integer fields keep their low bits, as Accum::apply's casts do.
        rec.protocol = v[Slot::Protocol as usize] as u8;
        rec.tos = v[Slot::Tos as usize] as u8;
        rec.tcp_flags = v[Slot::TcpFlags as usize] as u8;
        rec.src_port = v[Slot::SrcPort as usize] as u16;
        rec.dst_port = match self.dst_port {
            DstPort::Port => v[Slot::DstPort as usize] as u16,
            DstPort::TypeCode => {
                u16::from(v[Slot::IcmpType as usize] as u8) << 8
                    | u16::from(v[Slot::IcmpCode as usize] as u8)
            }
        };
        rec.input_if = at(self.input_if) as u32;
        rec.output_if = at(self.output_if) as u32;
        rec.src_as = v[Slot::SrcAs as usize] as u32;
        rec.dst_as = v[Slot::DstAs as usize] as u32;

        let init = self.get(v, Slot::SysInit).or(time.sys_init_ms);
        rec.start_ms = self.time(&self.start, v, time, init);
        rec.end_ms = self.time(&self.end, v, time, init);
    }

    /// One timestamp, with [`flow_time`]'s order of forms.
    #[inline]
    fn time(&self, t: &Time, v: &Vals, time: &TimeBase, init: Option<u64>) -> u64 {
        let raw = v[t.abs_slot as usize];
        let abs = match t.abs {
            Abs::Seconds => return raw.saturating_mul(1_000),
            Abs::Millis => return raw,
            Abs::Ntp => ntp_raw_to_unix_ms(raw),
            Abs::None => None,
        };
        let uptime = self.get(v, t.uptime_slot).map(|x| x as u32);
        flow_time(abs, self.get(v, t.delta_slot), uptime, time, init)
    }

    /// The rate of a record that carries sampling fields or names a sampler: Accum::finish's
    /// `sampling_rate().or(sampling).unwrap_or(1)`.
    #[cold]
    fn record_rate<R: FnMut(SamplerRef) -> Option<u32>>(&self, v: &Vals, rate: &mut R) -> u32 {
        let own = sampling_rate_of(
            self.get(v, Slot::SamplingInterval),
            self.get(v, Slot::RandomInterval),
            self.get(v, Slot::SamplingSize),
            self.get(v, Slot::SamplingPopulation),
            self.get(v, Slot::PacketInterval),
            self.get(v, Slot::PacketSpace),
        );
        own.or_else(|| {
            rate(sampler_ref_of(
                self.get(v, Slot::SamplerId),
                self.get(v, Slot::SelectorId),
            ))
        })
        .unwrap_or(1)
    }

    #[inline]
    fn has(&self, s: Slot) -> bool {
        self.present & (1 << s as usize) != 0
    }

    #[inline]
    fn get(&self, v: &Vals, s: Slot) -> Option<u64> {
        self.has(s).then(|| v[s as usize])
    }
}

impl Step {
    /// A read of `len` (1..=8) bytes at `off` of a record of `record_len` (at least
    /// [`WINDOW`]) bytes: the window starts at the field, or as late as the record allows.
    fn new(off: usize, len: usize, slot: usize, record_len: usize) -> Self {
        let window = off.min(record_len - WINDOW);
        // off + len <= record_len = window + 8 when the window moved, so off - window <= 7;
        // record_len <= 65_535 and slot < SLOTS, so the casts are exact.
        Self {
            window: window as u16,
            lshift: (8 * (off - window)) as u8,
            rshift: (64 - 8 * len) as u8,
            slot: slot as u8,
        }
    }

    /// The field's big-endian value. `r` is one whole record, so the window is inside it.
    #[inline(always)]
    fn read(&self, r: &[u8]) -> u64 {
        let w = usize::from(self.window);
        let bytes: [u8; WINDOW] = match r.get(w..w + WINDOW).and_then(|b| b.try_into().ok()) {
            Some(b) => b,
            None => return 0, // cannot happen: the plan was compiled for this record length
        };
        (u64::from_be_bytes(bytes) << self.lshift) >> self.rshift
    }
}

/// The slot of a role read as an unsigned integer.
fn uint_slot(role: Role) -> Slot {
    match role {
        Role::OctetDelta => Slot::OctetDelta,
        Role::OctetTotal => Slot::OctetTotal,
        Role::PostOctetDelta => Slot::PostOctetDelta,
        Role::PacketDelta => Slot::PacketDelta,
        Role::PacketTotal => Slot::PacketTotal,
        Role::PostPacketDelta => Slot::PostPacketDelta,
        Role::Protocol => Slot::Protocol,
        Role::Tos => Slot::Tos,
        Role::TcpFlags => Slot::TcpFlags,
        Role::SrcPort => Slot::SrcPort,
        Role::DstPort => Slot::DstPort,
        Role::InputIf => Slot::InputIf,
        Role::OutputIf => Slot::OutputIf,
        Role::IngressPhys => Slot::IngressPhys,
        Role::EgressPhys => Slot::EgressPhys,
        Role::SrcAs => Slot::SrcAs,
        Role::DstAs => Slot::DstAs,
        Role::IcmpTypeCodeV4 | Role::IcmpTypeCodeV6 => Slot::IcmpTypeCode,
        Role::IcmpTypeV4 | Role::IcmpTypeV6 => Slot::IcmpType,
        Role::IcmpCodeV4 | Role::IcmpCodeV6 => Slot::IcmpCode,
        Role::EndSysUpTime => Slot::EndUptime,
        Role::StartSysUpTime => Slot::StartUptime,
        Role::StartDeltaMicros => Slot::StartDelta,
        Role::EndDeltaMicros => Slot::EndDelta,
        Role::SystemInitMillis => Slot::SysInit,
        Role::SamplingInterval => Slot::SamplingInterval,
        Role::SamplerRandomInterval => Slot::RandomInterval,
        Role::SamplingPacketInterval => Slot::PacketInterval,
        Role::SamplingPacketSpace => Slot::PacketSpace,
        Role::SamplingSize => Slot::SamplingSize,
        Role::SamplingPopulation => Slot::SamplingPopulation,
        Role::SamplerId => Slot::SamplerId,
        Role::SelectorId => Slot::SelectorId,
        // Handled by the caller; never reached.
        Role::Skip
        | Role::SrcV4
        | Role::DstV4
        | Role::SrcV6
        | Role::DstV6
        | Role::StartSeconds
        | Role::EndSeconds
        | Role::StartMillis
        | Role::EndMillis
        | Role::StartNtp
        | Role::EndNtp => Slot::SelectorId,
    }
}
