//! IPFIX ([RFC 7011]): a 16-byte message header followed by sets.
//!
//! ```text
//! message header (16 bytes)             template record (set id 2)
//!  0..2   version = 0x000a               0..2 template id (>= 256; 2 = withdraw all)
//!  2..4   length (whole message)         2..4 field count (0 = withdrawal)
//!  4..8   export time (Unix seconds)     4..  field specifiers
//!  8..12  sequence number
//! 12..16  observation domain id         options template record (set id 3)
//!                                        0..2 template id (>= 256; 3 = withdraw all)
//! field specifier                        2..4 field count (0 = withdrawal, no scope count)
//!  0..2   E bit + IE id                  4..6 scope field count (> 0)
//!  2..4   length (65535 = variable)      6..  field specifiers, scope fields first
//!  4..8   enterprise number, if E set
//! ```
//!
//! Data sets carry the id of their template. Sets of any kind come in any order and any number.
//!
//! Rules deliberately *accepted*:
//!
//! - Padding at the end of a set: fewer bytes than the shortest record for data sets
//!   (RFC 7011 § 3.3.1), and all-zero bytes after the last template record.
//! - Template ids of a data set that were never defined: the set is held for a while
//!   ([`crate::DecoderLimits::pending_ttl_ms`]), since over UDP a template may arrive late.
//! - Enterprise-specific elements, skipped by length.
//!
//! [RFC 7011]: https://www.rfc-editor.org/rfc/rfc7011

use crate::decoder::{Cx, Scope};
use crate::template::{FieldSpec, Sets, Template, TemplateKind, TimeBase};
use crate::{DecodeError, FlowFormat, FlowRecord};

/// A read-only view of an IPFIX message.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Byte ranges of the message header.
pub mod field {
    /// A byte range.
    pub type Field = core::ops::Range<usize>;

    /// Version, always 10.
    pub const VERSION: Field = 0..2;
    /// Total length of the message, header included.
    pub const LENGTH: Field = 2..4;
    /// Export time, Unix seconds.
    pub const EXPORT_TIME: Field = 4..8;
    /// Sequence number of data records.
    pub const SEQUENCE_NUMBER: Field = 8..12;
    /// Observation domain id.
    pub const OBSERVATION_DOMAIN_ID: Field = 12..16;
    /// Length of the message header.
    pub const HEADER_LEN: usize = 16;

    /// Template record header: template id and field count.
    pub const TEMPLATE_HEADER_LEN: usize = 4;
    /// Options template record header: template id, field count, scope field count.
    pub const OPTIONS_HEADER_LEN: usize = 6;
    /// A field specifier without enterprise number.
    pub const FIELD_SPEC_LEN: usize = 4;
    /// The enterprise number that follows a field specifier with the E bit.
    pub const ENTERPRISE_LEN: usize = 4;
    /// The enterprise bit of a field specifier's id.
    pub const ENTERPRISE_BIT: u16 = 0x8000;
}

/// Set id of template sets.
pub const TEMPLATE_SET_ID: u16 = 2;
/// Set id of options template sets.
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 3;
/// Lowest data set id (and template id).
pub const MIN_DATA_SET_ID: u16 = 256;

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer and runs [`Packet::check_len`].
    ///
    /// # Errors
    ///
    /// See [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, DecodeError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the header and that the message length is the datagram length.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] below 16 bytes, [`DecodeError::BadVersion`] if the version is
    /// not 10, [`DecodeError::BadCount`] if the length field differs from the datagram length
    /// (one message per datagram, RFC 7011 § 10.3.2).
    pub fn check_len(&self) -> Result<(), DecodeError> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if self.version() != 10 {
            return Err(DecodeError::BadVersion);
        }
        if usize::from(self.length()) != len {
            return Err(DecodeError::BadCount);
        }
        Ok(())
    }

    fn u32_at(&self, r: field::Field) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Version.
    #[inline]
    pub fn version(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Message length, header included.
    #[inline]
    pub fn length(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// Export time, Unix seconds.
    #[inline]
    pub fn export_time(&self) -> u32 {
        self.u32_at(field::EXPORT_TIME)
    }

    /// Sequence number.
    #[inline]
    pub fn sequence_number(&self) -> u32 {
        self.u32_at(field::SEQUENCE_NUMBER)
    }

    /// Observation domain id.
    #[inline]
    pub fn observation_domain_id(&self) -> u32 {
        self.u32_at(field::OBSERVATION_DOMAIN_ID)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The sets, after the header.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::HEADER_LEN..]
    }
}

/// Walks the sets of a checked message: learns and withdraws templates, decodes or holds data.
pub(crate) fn parse<F: FnMut(&FlowRecord)>(
    packet: &Packet<&[u8]>,
    base: &FlowRecord,
    cx: &mut Cx<'_, F>,
) -> Result<(), DecodeError> {
    let scope = Scope {
        format: FlowFormat::Ipfix,
        domain: packet.observation_domain_id(),
    };
    let mut base = *base;
    base.format = FlowFormat::Ipfix as u8;
    base.domain_id = scope.domain;
    let time = TimeBase {
        export_ms: u64::from(packet.export_time()) * 1_000,
        sys_uptime: None,
        sys_init_ms: None,
    };

    for set in Sets::new(packet.payload(), false) {
        let (id, body) = set?;
        match id {
            TEMPLATE_SET_ID => templates(body, scope, TemplateKind::Data, cx)?,
            OPTIONS_TEMPLATE_SET_ID => templates(body, scope, TemplateKind::Options, cx)?,
            MIN_DATA_SET_ID.. => cx.data(scope, id, body, &base, &time)?,
            // 0 and 1 are unused for historical reasons, 4..=255 reserved (RFC 7011 § 3.3.2):
            // skipped by length.
            _ => {}
        }
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads the records of a template or options template set.
fn templates<F: FnMut(&FlowRecord)>(
    body: &[u8],
    scope: Scope,
    kind: TemplateKind,
    cx: &mut Cx<'_, F>,
) -> Result<(), DecodeError> {
    let mut specs = cx.take_scratch();
    let out = read_templates(body, scope, kind, cx, &mut specs);
    cx.put_scratch(specs);
    out
}

fn read_templates<F: FnMut(&FlowRecord)>(
    body: &[u8],
    scope: Scope,
    kind: TemplateKind,
    cx: &mut Cx<'_, F>,
    specs: &mut Vec<FieldSpec>,
) -> Result<(), DecodeError> {
    let withdraw_all_id = match kind {
        TemplateKind::Data => TEMPLATE_SET_ID,
        TemplateKind::Options => OPTIONS_TEMPLATE_SET_ID,
    };
    let mut rest = body;
    while rest.len() >= field::TEMPLATE_HEADER_LEN {
        let id = be16(rest, 0);
        let count = usize::from(be16(rest, 2));

        // Field count 0 is a withdrawal (RFC 7011 § 8.1): of one template, or with the set's
        // own id as template id, of every template of that kind in the domain.
        if count == 0 {
            if id == 0 && rest.iter().all(|b| *b == 0) {
                break; // padding
            }
            match id {
                MIN_DATA_SET_ID.. => cx.withdraw(scope, Some(id), kind),
                _ if id == withdraw_all_id => cx.withdraw(scope, None, kind),
                _ => return Err(DecodeError::BadTemplate),
            }
            rest = &rest[field::TEMPLATE_HEADER_LEN..];
            continue;
        }
        if id < MIN_DATA_SET_ID {
            return Err(DecodeError::BadTemplate);
        }

        let mut off = match kind {
            TemplateKind::Data => field::TEMPLATE_HEADER_LEN,
            TemplateKind::Options => {
                let Some(b) = rest.get(4..6) else {
                    return Err(DecodeError::BadTemplate);
                };
                let scope_count = usize::from(u16::from_be_bytes([b[0], b[1]]));
                // RFC 7011 § 3.4.2.2: the scope field count MUST NOT be zero.
                if scope_count == 0 || scope_count > count {
                    return Err(DecodeError::BadTemplate);
                }
                field::OPTIONS_HEADER_LEN
            }
        };

        specs.clear();
        for _ in 0..count {
            let Some(b) = rest.get(off..off + field::FIELD_SPEC_LEN) else {
                return Err(DecodeError::BadTemplate);
            };
            let raw_id = be16(b, 0);
            let len = be16(b, 2);
            off += field::FIELD_SPEC_LEN;
            let enterprise = if raw_id & field::ENTERPRISE_BIT != 0 {
                let Some(e) = rest.get(off..off + field::ENTERPRISE_LEN) else {
                    return Err(DecodeError::BadTemplate);
                };
                off += field::ENTERPRISE_LEN;
                u32::from_be_bytes([e[0], e[1], e[2], e[3]])
            } else {
                0
            };
            specs.push(FieldSpec {
                id: raw_id & !field::ENTERPRISE_BIT,
                enterprise,
                len,
            });
        }
        // IPFIX scope fields are ordinary elements (observationDomainId, selectorId, ...):
        // nothing to skip.
        cx.learn(scope, id, Template::new(kind, specs, 0))?;
        rest = &rest[off..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{cat, exporter, ipfix, ipfix_opt_tpl, run, set, tpl};
    use crate::{Decoder, DecoderLimits};

    /// A template with an enterprise-specific field and a variable-length field, then a data
    /// set with one record using the 1-byte length form, one using the 3-byte form, and one
    /// byte of padding; laid out by hand from RFC 7011 §§ 3.1, 3.2, 3.4.1, 7.
    static MESSAGE: [u8; 176] = [
        0x00, 0x0a, 0x00, 0xb0, // version 10, length 176
        0x65, 0x53, 0xf1, 0x00, // export time 1_700_000_000
        0x00, 0x00, 0x00, 0x01, // sequence 1
        0x00, 0x00, 0x00, 0x07, // observation domain 7
        // Template set: id 2, length 56.
        0x00, 0x02, 0x00, 0x38, //
        0x01, 0x00, 0x00, 0x0b, // template 256, 11 fields
        0x00, 0x08, 0x00, 0x04, // sourceIPv4Address
        0x00, 0x0c, 0x00, 0x04, // destinationIPv4Address
        0x00, 0x07, 0x00, 0x02, // sourceTransportPort
        0x00, 0x0b, 0x00, 0x02, // destinationTransportPort
        0x00, 0x04, 0x00, 0x01, // protocolIdentifier
        0x83, 0xe8, 0x00, 0x02, 0x00, 0x00, 0x72, 0x79, // E=1, element 1000, PEN 29305
        0x00, 0x01, 0x00, 0x08, // octetDeltaCount
        0x00, 0x02, 0x00, 0x04, // packetDeltaCount, reduced-size (RFC 7011 § 6.2)
        0x00, 0x98, 0x00, 0x08, // flowStartMilliseconds
        0x00, 0x99, 0x00, 0x08, // flowEndMilliseconds
        0x00, 0x52, 0xff, 0xff, // interfaceName, variable length
        // Data set: template 256, length 104 (48 + 51 + 1 padding).
        0x01, 0x00, 0x00, 0x68, //
        192, 0, 2, 1, 198, 51, 100, 2, // 192.0.2.1 -> 198.51.100.2
        0x04, 0xd2, 0x01, 0xbb, 0x06, // 1234 -> 443, tcp
        0xab, 0xcd, // enterprise field, skipped
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, // 4096 octets
        0x00, 0x00, 0x00, 0x08, // 8 packets
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x40, 0xf0, // start 1_699_999_990_000
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x64, 0x18, // end 1_699_999_999_000
        0x04, b'e', b't', b'h', b'0', // 1-byte length form
        192, 0, 2, 3, 198, 51, 100, 4, //
        0x00, 0x35, 0x00, 0x35, 0x11, //
        0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, //
        0x00, 0x00, 0x00, 0x01, //
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x40, 0xf0, //
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x64, 0x18, //
        0xff, 0x00, 0x05, b'w', b'a', b'n', b'0', b'x', // 3-byte length form
        0x00, // padding
    ];

    fn decoder() -> Decoder {
        Decoder::new(DecoderLimits::default())
    }

    #[test]
    fn reads_every_header_field() {
        let p = Packet::new_checked(&MESSAGE[..]).unwrap();
        assert_eq!(p.version(), 10);
        assert_eq!(p.length(), 176);
        assert_eq!(p.export_time(), 1_700_000_000);
        assert_eq!(p.sequence_number(), 1);
        assert_eq!(p.observation_domain_id(), 7);
        assert_eq!(p.payload().len(), 160);
    }

    #[test]
    fn parses_varlen_enterprise_and_padding() {
        let mut dec = decoder();
        let (r, recs) = run(&mut dec, exporter(), 0, &MESSAGE);
        assert_eq!((r.error, r.format), (None, Some(FlowFormat::Ipfix)));
        assert_eq!(recs.len(), 2, "padding is not a record");
        let a = &recs[0];
        assert_eq!(a.src_ip().to_string(), "192.0.2.1");
        assert_eq!(a.dst_ip().to_string(), "198.51.100.2");
        assert_eq!((a.src_port, a.dst_port, a.protocol), (1234, 443, 6));
        assert_eq!((a.bytes, a.packets), (4096, 8));
        assert_eq!(
            (a.start_ms, a.end_ms),
            (1_699_999_990_000, 1_699_999_999_000)
        );
        assert_eq!((a.domain_id, a.sampling_rate), (7, 1));
        let b = &recs[1];
        assert_eq!(
            (b.src_port, b.protocol, b.bytes, b.packets),
            (53, 17, 64, 1)
        );
    }

    #[test]
    fn refuses_a_length_that_disagrees_with_the_datagram() {
        let mut dec = decoder();
        let (r, _) = run(&mut dec, exporter(), 0, &MESSAGE[..175]);
        assert_eq!(r.error, Some(DecodeError::BadCount));
        let mut longer = MESSAGE.to_vec();
        longer.push(0);
        assert_eq!(
            run(&mut dec, exporter(), 0, &longer).0.error,
            Some(DecodeError::BadCount)
        );
        assert_eq!(
            run(&mut dec, exporter(), 0, &MESSAGE[..15]).0.error,
            Some(DecodeError::Truncated)
        );
        // A set running past the message.
        let mut bad = MESSAGE;
        bad[19] = 0xff;
        assert_eq!(
            run(&mut dec, exporter(), 0, &bad).0.error,
            Some(DecodeError::BadSetLength)
        );
        assert_eq!(dec.stats().errors[DecodeError::BadCount.index()], 2);
    }

    #[test]
    fn honours_withdrawals() {
        let mut dec = decoder();
        let t = set(2, &cat(&[&tpl(256, &[(1, 4)]), &tpl(257, &[(2, 4)])]));
        let ot = set(3, &ipfix_opt_tpl(258, &[(149, 4)], &[(34, 4)]));
        run(
            &mut dec,
            exporter(),
            0,
            &ipfix(1, 0, &[t.clone(), ot.clone()]),
        );
        assert_eq!(dec.templates(), 3);

        // Withdraw 256 only: its data is now held, 257 still decodes.
        let w = set(2, &[0x01, 0x00, 0x00, 0x00]);
        let d256 = set(256, &[0, 0, 0, 1]);
        let d257 = set(257, &[0, 0, 0, 1]);
        let (r, _) = run(
            &mut dec,
            exporter(),
            0,
            &ipfix(1, 0, &[w, d256, d257.clone()]),
        );
        assert_eq!((r.records, r.sets_held, r.error), (1, 1, None));
        assert_eq!(dec.stats().templates_withdrawn, 1);

        // Withdraw all data templates (template id 2 in set 2): the options template stays.
        let wall = set(2, &[0x00, 0x02, 0x00, 0x00]);
        let (r, _) = run(&mut dec, exporter(), 0, &ipfix(1, 0, &[wall, d257]));
        assert_eq!((r.records, r.sets_held), (0, 1));
        assert_eq!(dec.templates(), 1);

        // Withdraw all options templates (template id 3 in set 3).
        let wall_opt = set(3, &[0x00, 0x03, 0x00, 0x00]);
        run(&mut dec, exporter(), 0, &ipfix(1, 0, &[wall_opt]));
        assert_eq!(dec.templates(), 0);
        assert_eq!(dec.stats().templates_withdrawn, 3);

        // Withdrawal with a reserved id that is not the set's own is invalid.
        let bad = set(2, &[0x00, 0x03, 0x00, 0x00]);
        let (r, _) = run(&mut dec, exporter(), 0, &ipfix(1, 0, &[bad]));
        assert_eq!(r.error, Some(DecodeError::BadTemplate));
    }

    #[test]
    fn refuses_options_templates_without_scope() {
        let mut dec = decoder();
        let ot = set(3, &ipfix_opt_tpl(300, &[], &[(34, 4)]));
        let (r, _) = run(&mut dec, exporter(), 0, &ipfix(1, 0, &[ot]));
        assert_eq!(r.error, Some(DecodeError::BadTemplate));
        // Scope count larger than field count.
        let ot = set(
            3,
            &[0x01, 0x2c, 0x00, 0x01, 0x00, 0x02, 0x00, 0x22, 0x00, 0x04],
        );
        let (r, _) = run(&mut dec, exporter(), 0, &ipfix(1, 0, &[ot]));
        assert_eq!(r.error, Some(DecodeError::BadTemplate));
        assert_eq!(dec.templates(), 0);
    }

    #[test]
    fn decodes_sets_of_any_kind_in_any_order() {
        // Data for a template defined later, options data before its options template,
        // several sets of each kind.
        let d = set(400, &[0, 0, 0, 5, 0, 0, 0, 6]);
        let od = set(401, &[0, 0, 0, 7, 0, 0, 0, 50]);
        let ot = set(3, &ipfix_opt_tpl(401, &[(149, 4)], &[(34, 4)]));
        let t = set(2, &tpl(400, &[(1, 4), (2, 4)]));
        let mut dec = decoder();
        let (r, recs) = run(
            &mut dec,
            exporter(),
            0,
            &ipfix(7, 0, &[d.clone(), od, ot, t, d]),
        );
        assert_eq!((r.error, r.sets_held), (None, 2));
        assert_eq!(recs.len(), 2);
        // The held data set was decoded when its template arrived, after the options data had
        // announced the domain's sampling rate.
        assert!(
            recs.iter()
                .all(|r| (r.bytes, r.packets, r.sampling_rate) == (5, 6, 50))
        );
    }

    #[test]
    fn attaches_sampling_by_selector_and_sampler() {
        let ot = set(
            3,
            &cat(&[
                // selectorId scope, packet interval 1 + space 99 => 1 in 100.
                &ipfix_opt_tpl(500, &[(302, 4)], &[(305, 4), (306, 4)]),
                // samplerId scope, samplingInterval.
                &ipfix_opt_tpl(501, &[(48, 2)], &[(34, 4)]),
            ]),
        );
        let od = set(500, &[0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 99]);
        let od2 = set(501, &[0, 8, 0, 0, 0x01, 0x00]);
        let t = set(
            2,
            &cat(&[
                &tpl(600, &[(1, 4), (302, 4)]),
                &tpl(601, &[(1, 4), (48, 2)]),
                // A rate inside the data record applies to that record.
                &tpl(602, &[(1, 4), (48, 2), (50, 4)]),
            ]),
        );
        let d600 = set(600, &[0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 4]);
        let d601 = set(601, &[0, 0, 0, 3, 0, 8]);
        let d602 = set(602, &[0, 0, 0, 4, 0, 8, 0, 0, 0, 20]);
        let mut dec = decoder();
        let (r, recs) = run(
            &mut dec,
            exporter(),
            0,
            &ipfix(1, 0, &[ot, od, od2, t, d600, d601, d602]),
        );
        assert_eq!(r.error, None);
        let got: Vec<(u64, u32)> = recs.iter().map(|r| (r.bytes, r.sampling_rate)).collect();
        // Selector 4 is unknown and there is no domain-wide rate: unsampled.
        assert_eq!(got, vec![(1, 100), (2, 1), (3, 256), (4, 20)]);
    }

    #[test]
    fn derives_flow_times_from_every_form() {
        let export = 1_700_000_000u32;
        let export_ms = u64::from(export) * 1_000;
        let ntp = |unix_ms: u64| -> [u8; 8] {
            let secs = unix_ms / 1_000 + 2_208_988_800;
            let frac = ((unix_ms % 1_000) << 32) / 1_000;
            ((secs << 32) | frac).to_be_bytes()
        };
        let t = set(
            2,
            &cat(&[
                &tpl(700, &[(150, 4), (151, 4)]),
                &tpl(701, &[(154, 8), (155, 8)]),
                &tpl(702, &[(156, 8), (157, 8)]),
                &tpl(703, &[(158, 4), (159, 4)]),
                &tpl(704, &[(160, 8), (22, 4), (21, 4)]),
                &tpl(705, &[(22, 4), (21, 4)]),
            ]),
        );
        let secs = set(
            700,
            &cat(&[
                &1_699_999_000u32.to_be_bytes(),
                &1_699_999_001u32.to_be_bytes(),
            ]),
        );
        let micros = set(
            701,
            &cat(&[&ntp(1_699_999_000_250), &ntp(1_699_999_000_500)]),
        );
        let nanos = set(
            702,
            &cat(&[&ntp(1_699_999_000_750), &ntp(1_699_999_001_000)]),
        );
        let delta = set(
            703,
            &cat(&[&5_000_000u32.to_be_bytes(), &1_000u32.to_be_bytes()]),
        );
        let init = 1_690_000_000_000u64;
        let uptime = set(
            704,
            &cat(&[
                &init.to_be_bytes(),
                &1_000u32.to_be_bytes(),
                &2_000u32.to_be_bytes(),
            ]),
        );
        let mut dec = decoder();
        let dg = ipfix(1, export, &[t, secs, micros, nanos, delta, uptime]);
        let (r, recs) = run(&mut dec, exporter(), 0, &dg);
        assert_eq!(r.error, None);
        let got: Vec<(u64, u64)> = recs.iter().map(|r| (r.start_ms, r.end_ms)).collect();
        assert_eq!(
            got,
            vec![
                (1_699_999_000_000, 1_699_999_001_000),
                (1_699_999_000_250, 1_699_999_000_500),
                (1_699_999_000_750, 1_699_999_001_000),
                (export_ms - 5_000, export_ms - 1),
                (init + 1_000, init + 2_000),
            ]
        );

        // sysUpTime-relative times with systemInitTimeMilliseconds announced in options data.
        let ot = set(3, &ipfix_opt_tpl(706, &[(149, 4)], &[(160, 8)]));
        let od = set(706, &cat(&[&1u32.to_be_bytes(), &init.to_be_bytes()]));
        let d = set(
            705,
            &cat(&[&3_000u32.to_be_bytes(), &4_000u32.to_be_bytes()]),
        );
        let (_, recs) = run(&mut dec, exporter(), 0, &ipfix(1, export, &[ot, od, d]));
        assert_eq!(
            (recs[0].start_ms, recs[0].end_ms),
            (init + 3_000, init + 4_000)
        );
    }

    #[test]
    fn maps_icmp_ipv6_and_physical_interfaces() {
        let t = set(
            2,
            &tpl(
                800,
                &[(27, 16), (28, 16), (4, 1), (139, 2), (252, 4), (253, 4)],
            ),
        );
        let mut rec = Vec::new();
        rec.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        rec.extend_from_slice(
            &"2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        rec.extend_from_slice(&[58, 128, 0, 0, 0, 0, 3, 0, 0, 0, 4]);
        let t2 = set(
            2,
            &tpl(801, &[(4, 1), (176, 1), (177, 1), (10, 2), (253, 2)]),
        );
        let d2 = set(801, &[1, 3, 1, 0, 9, 0, 5]);
        let mut dec = decoder();
        let (r, recs) = run(
            &mut dec,
            exporter(),
            0,
            &ipfix(1, 0, &[t, set(800, &rec), t2, d2]),
        );
        assert_eq!(r.error, None);
        let a = &recs[0];
        assert_eq!(
            (a.ip_version, a.src_ip().to_string()),
            (6, "2001:db8::1".to_string())
        );
        assert_eq!(a.dst_ip().to_string(), "2001:db8::2");
        assert_eq!((a.protocol, a.dst_port, a.src_port), (58, 128 << 8, 0));
        assert_eq!((a.input_if, a.output_if), (3, 4));
        let b = &recs[1];
        assert_eq!((b.ip_version, b.dst_port), (0, 3 << 8 | 1));
        assert_eq!((b.input_if, b.output_if), (9, 5));
    }

    #[test]
    fn varlen_running_past_the_set_is_a_truncated_record() {
        let t = set(2, &tpl(900, &[(4, 1), (82, 0xffff)]));
        let d = set(900, &[6, 2, b'a', b'b', 17, 255, 0, 9, b'x']);
        let mut dec = decoder();
        let (r, recs) = run(&mut dec, exporter(), 0, &ipfix(1, 0, &[t, d]));
        assert_eq!(
            (recs.len(), r.error),
            (1, Some(DecodeError::TruncatedRecord))
        );
        assert_eq!(dec.stats().errors[DecodeError::TruncatedRecord.index()], 1);
    }
}
