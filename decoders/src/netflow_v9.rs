//! NetFlow version 9 ([RFC 3954]): a 20-byte header followed by FlowSets.
//!
//! ```text
//! header (20 bytes)                 template FlowSet (id 0) record
//!  0..2   version = 0x0009           0..2 template id (>= 256)
//!  2..4   count                      2..4 field count
//!  4..8   sys_uptime (ms)            4..   field count x (type u16, length u16)
//!  8..12  unix_secs
//! 12..16  sequence                  options template FlowSet (id 1) record
//! 16..20  source_id                  0..2 template id (>= 256)
//!                                    2..4 option scope length (bytes)
//!                                    4..6 option length (bytes)
//!                                    6..  scope fields, then option fields (type, length)
//! ```
//!
//! Data FlowSets carry the id of their template (256 and above). FlowSets are framed exactly
//! like IPFIX sets ([`crate::template::Sets`]).
//!
//! Rules deliberately *accepted*:
//!
//! - The header's `count` (records in the datagram) is advisory: every FlowSet up to the end of
//!   the datagram is read, because exporters miscount (some count FlowSets, some leave template
//!   records out), and a collector that stops at `count` loses data.
//! - 1 to 3 trailing bytes after the last FlowSet are datagram padding.
//! - An options template with an empty scope, and zero-length fields (a "System" scope of
//!   length 0 is common), as long as the record is not empty.
//! - Variable-length fields (length 65535) are read as IPFIX encodes them, as nProbe does.
//!
//! [RFC 3954]: https://www.rfc-editor.org/rfc/rfc3954

use crate::decoder::{Cx, Scope};
use crate::template::{FieldSpec, Sets, Template, TemplateKind, TimeBase};
use crate::{DecodeError, FlowFormat, FlowRecord};

/// A read-only view of a NetFlow v9 datagram.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Byte ranges of the header.
pub mod field {
    /// A byte range.
    pub type Field = core::ops::Range<usize>;

    /// Version, always 9.
    pub const VERSION: Field = 0..2;
    /// Records (template and data) in the datagram, as the exporter counted them.
    pub const COUNT: Field = 2..4;
    /// Milliseconds since the exporter booted.
    pub const SYS_UPTIME: Field = 4..8;
    /// Export time, Unix seconds.
    pub const UNIX_SECS: Field = 8..12;
    /// Export packet sequence number.
    pub const SEQUENCE: Field = 12..16;
    /// Exporter observation domain.
    pub const SOURCE_ID: Field = 16..20;
    /// Length of the header.
    pub const HEADER_LEN: usize = 20;

    /// Template record header: template id and field count.
    pub const TEMPLATE_HEADER_LEN: usize = 4;
    /// Options template record header: template id, scope length, option length.
    pub const OPTIONS_HEADER_LEN: usize = 6;
    /// One field specifier: type and length.
    pub const FIELD_SPEC_LEN: usize = 4;
}

/// FlowSet id of template FlowSets.
pub const TEMPLATE_SET_ID: u16 = 0;
/// FlowSet id of options template FlowSets.
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 1;
/// Lowest data FlowSet id (and template id); 2..=255 are reserved.
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

    /// Checks that the header accessors stay inside the buffer.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] below 20 bytes, [`DecodeError::BadVersion`] if the version is
    /// not 9.
    pub fn check_len(&self) -> Result<(), DecodeError> {
        if self.buffer.as_ref().len() < field::HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if self.version() != 9 {
            return Err(DecodeError::BadVersion);
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

    /// Record count as the exporter declared it (advisory).
    #[inline]
    pub fn count(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// Milliseconds since boot at export.
    #[inline]
    pub fn sys_uptime(&self) -> u32 {
        self.u32_at(field::SYS_UPTIME)
    }

    /// Export time, Unix seconds.
    #[inline]
    pub fn unix_secs(&self) -> u32 {
        self.u32_at(field::UNIX_SECS)
    }

    /// Sequence number of the export packet.
    #[inline]
    pub fn sequence(&self) -> u32 {
        self.u32_at(field::SEQUENCE)
    }

    /// Source id (observation domain).
    #[inline]
    pub fn source_id(&self) -> u32 {
        self.u32_at(field::SOURCE_ID)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The FlowSets, after the header.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::HEADER_LEN..]
    }
}

/// Walks the FlowSets of a checked datagram: learns templates, decodes or holds data.
pub(crate) fn parse<F: FnMut(&FlowRecord)>(
    packet: &Packet<&[u8]>,
    base: &FlowRecord,
    cx: &mut Cx<'_, F>,
) -> Result<(), DecodeError> {
    let scope = Scope {
        format: FlowFormat::NetflowV9,
        domain: packet.source_id(),
    };
    let mut base = *base;
    base.format = FlowFormat::NetflowV9 as u8;
    base.domain_id = scope.domain;
    let time = TimeBase {
        export_ms: u64::from(packet.unix_secs()) * 1_000,
        sys_uptime: Some(packet.sys_uptime()),
        sys_init_ms: None,
    };

    for set in Sets::new(packet.payload(), true) {
        let (id, body) = set?;
        match id {
            TEMPLATE_SET_ID => templates(body, scope, cx)?,
            OPTIONS_TEMPLATE_SET_ID => options_templates(body, scope, cx)?,
            MIN_DATA_SET_ID.. => cx.data(scope, id, body, &base, &time)?,
            // Reserved FlowSet ids: skipped by length (RFC 3954 § 5.2).
            _ => {}
        }
    }
    Ok(())
}

/// True when the rest of a set is zero bytes: padding, not a record.
fn is_padding(rest: &[u8]) -> bool {
    rest.iter().all(|b| *b == 0)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads the template records of a template FlowSet.
fn templates<F: FnMut(&FlowRecord)>(
    body: &[u8],
    scope: Scope,
    cx: &mut Cx<'_, F>,
) -> Result<(), DecodeError> {
    let mut rest = body;
    let mut specs = cx.take_scratch();
    let out = (|| {
        while rest.len() >= field::TEMPLATE_HEADER_LEN {
            if is_padding(rest) {
                break;
            }
            let id = be16(rest, 0);
            let count = usize::from(be16(rest, 2));
            if id < MIN_DATA_SET_ID {
                return Err(DecodeError::BadTemplate);
            }
            let len = field::TEMPLATE_HEADER_LEN + count * field::FIELD_SPEC_LEN;
            let Some(record) = rest.get(field::TEMPLATE_HEADER_LEN..len) else {
                return Err(DecodeError::BadTemplate);
            };
            read_specs(record, &mut specs);
            cx.learn(scope, id, Template::new(TemplateKind::Data, &specs, 0))?;
            rest = &rest[len..];
        }
        Ok(())
    })();
    cx.put_scratch(specs);
    out
}

/// Reads the records of an options template FlowSet.
fn options_templates<F: FnMut(&FlowRecord)>(
    body: &[u8],
    scope: Scope,
    cx: &mut Cx<'_, F>,
) -> Result<(), DecodeError> {
    let mut rest = body;
    let mut specs = cx.take_scratch();
    let out = (|| {
        while rest.len() >= field::OPTIONS_HEADER_LEN {
            if is_padding(rest) {
                break;
            }
            let id = be16(rest, 0);
            let scope_len = usize::from(be16(rest, 2));
            let option_len = usize::from(be16(rest, 4));
            if id < MIN_DATA_SET_ID
                || scope_len % field::FIELD_SPEC_LEN != 0
                || option_len % field::FIELD_SPEC_LEN != 0
            {
                return Err(DecodeError::BadTemplate);
            }
            let len = field::OPTIONS_HEADER_LEN + scope_len + option_len;
            let Some(record) = rest.get(field::OPTIONS_HEADER_LEN..len) else {
                return Err(DecodeError::BadTemplate);
            };
            read_specs(record, &mut specs);
            // Scope fields use their own type numbers (1 System, 2 Interface, 3 Line Card,
            // 4 NetFlow Cache, 5 Template; RFC 3954 § 6.1), not field types: skip them.
            let skip = scope_len / field::FIELD_SPEC_LEN;
            cx.learn(
                scope,
                id,
                Template::new(TemplateKind::Options, &specs, skip),
            )?;
            rest = &rest[len..];
        }
        Ok(())
    })();
    cx.put_scratch(specs);
    out
}

/// Reads `(type, length)` pairs; `record.len()` is a multiple of 4 by construction.
fn read_specs(record: &[u8], specs: &mut Vec<FieldSpec>) {
    specs.clear();
    specs.extend(
        record
            .chunks_exact(field::FIELD_SPEC_LEN)
            .map(|c| FieldSpec {
                id: be16(c, 0),
                enterprise: 0,
                len: be16(c, 2),
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{cat, exporter, run, set, tpl, v9, v9_opt_tpl};
    use crate::{Decoder, DecoderLimits};

    /// One template FlowSet and one data FlowSet with two records and two bytes of padding,
    /// laid out by hand from RFC 3954 §§ 5.1–5.3.
    static DATAGRAM: [u8; 140] = [
        0x00, 0x09, 0x00, 0x03, // version 9, count 3 (1 template + 2 data records)
        0x00, 0x01, 0x86, 0xa0, // sys_uptime 100 000 ms
        0x65, 0x53, 0xf1, 0x00, // unix_secs 1_700_000_000
        0x00, 0x00, 0x00, 0x01, // sequence 1
        0x00, 0x00, 0x00, 0x2a, // source id 42
        // Template FlowSet: id 0, length 52.
        0x00, 0x00, 0x00, 0x34, //
        0x01, 0x00, 0x00, 0x0b, // template 256, 11 fields
        0x00, 0x08, 0x00, 0x04, // IPV4_SRC_ADDR
        0x00, 0x0c, 0x00, 0x04, // IPV4_DST_ADDR
        0x00, 0x07, 0x00, 0x02, // L4_SRC_PORT
        0x00, 0x0b, 0x00, 0x02, // L4_DST_PORT
        0x00, 0x04, 0x00, 0x01, // PROTOCOL
        0x00, 0x06, 0x00, 0x01, // TCP_FLAGS
        0x00, 0x05, 0x00, 0x01, // SRC_TOS
        0x00, 0x02, 0x00, 0x04, // IN_PKTS
        0x00, 0x01, 0x00, 0x04, // IN_BYTES
        0x00, 0x16, 0x00, 0x04, // FIRST_SWITCHED
        0x00, 0x15, 0x00, 0x04, // LAST_SWITCHED
        // Data FlowSet: template 256, length 68 (2 x 31 + 2 padding).
        0x01, 0x00, 0x00, 0x44, //
        10, 0, 0, 1, 10, 0, 0, 2, // 10.0.0.1 -> 10.0.0.2
        0x04, 0xd2, 0x00, 0x50, // 1234 -> 80
        0x06, 0x1b, 0x10, // tcp, flags, tos
        0x00, 0x00, 0x00, 0x0a, // 10 packets
        0x00, 0x00, 0x05, 0xdc, // 1500 bytes
        0x00, 0x01, 0x38, 0x80, // first 80 000
        0x00, 0x01, 0x82, 0xb8, // last 99 000
        192, 168, 1, 1, 192, 168, 1, 2, //
        0x00, 0x35, 0xd4, 0x31, // 53 -> 54321
        0x11, 0x00, 0x00, // udp
        0x00, 0x00, 0x00, 0x01, //
        0x00, 0x00, 0x00, 0x40, //
        0x00, 0x01, 0x86, 0xa0, // first = uptime
        0x00, 0x01, 0x86, 0xa0, //
        0x00, 0x00, // padding
    ];

    const EXPORT_MS: u64 = 1_700_000_000_000;

    #[test]
    fn reads_every_header_field() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.version(), 9);
        assert_eq!(p.count(), 3);
        assert_eq!(p.sys_uptime(), 100_000);
        assert_eq!(p.unix_secs(), 1_700_000_000);
        assert_eq!(p.sequence(), 1);
        assert_eq!(p.source_id(), 42);
        assert_eq!(p.payload().len(), 120);
        assert_eq!(
            Packet::new_checked(&DATAGRAM[..19]).unwrap_err(),
            DecodeError::Truncated
        );
        let mut v10 = DATAGRAM;
        v10[1] = 10;
        assert_eq!(
            Packet::new_checked(&v10[..]).unwrap_err(),
            DecodeError::BadVersion
        );
    }

    #[test]
    fn parses_template_and_data() {
        let mut dec = Decoder::new(DecoderLimits::default());
        let (r, recs) = run(&mut dec, exporter(), 0, &DATAGRAM);
        assert_eq!(r.error, None);
        assert_eq!(r.format, Some(FlowFormat::NetflowV9));
        assert_eq!(recs.len(), 2);

        let a = &recs[0];
        assert_eq!(a.src_ip().to_string(), "10.0.0.1");
        assert_eq!(a.dst_ip().to_string(), "10.0.0.2");
        assert_eq!((a.src_port, a.dst_port, a.protocol), (1234, 80, 6));
        assert_eq!((a.tcp_flags, a.tos), (0x1b, 0x10));
        assert_eq!((a.packets, a.bytes), (10, 1500));
        assert_eq!(a.start_ms, EXPORT_MS - 20_000);
        assert_eq!(a.end_ms, EXPORT_MS - 1_000);
        assert_eq!((a.domain_id, a.ip_version, a.sampling_rate), (42, 4, 1));
        assert_eq!(a.flow_format(), FlowFormat::NetflowV9);
        assert_eq!(a.exporter_ip(), exporter().ip());
        assert_eq!(a.exporter_port, exporter().port());

        let b = &recs[1];
        assert_eq!((b.src_port, b.dst_port, b.protocol), (53, 54_321, 17));
        assert_eq!((b.start_ms, b.end_ms), (EXPORT_MS, EXPORT_MS));
        assert_eq!(dec.stats().templates_learned, 1);
    }

    #[test]
    fn reads_flowsets_after_the_header_count() {
        // The header says 1 record, but a template and two data FlowSets follow.
        let t = set(0, &tpl(300, &[(1, 4), (2, 4)]));
        let d1 = set(300, &[0, 0, 0, 100, 0, 0, 0, 1]);
        let d2 = set(300, &[0, 0, 0, 200, 0, 0, 0, 2]);
        let dg = v9(1, 1_000, 1_000, 1, &[t, d1, d2]);
        let mut dec = Decoder::new(DecoderLimits::default());
        let (r, recs) = run(&mut dec, exporter(), 0, &dg);
        assert_eq!(r.error, None);
        let bytes: Vec<u64> = recs.iter().map(|r| r.bytes).collect();
        assert_eq!(bytes, vec![100, 200]);
    }

    #[test]
    fn handles_uptime_wrap() {
        // Uptime wrapped 1 s ago; the flow started 1 s before the wrap.
        let t = set(0, &tpl(300, &[(22, 4), (21, 4)]));
        let d = set(300, &[0xff, 0xff, 0xfc, 0x18, 0x00, 0x00, 0x01, 0xf4]);
        let dg = v9(1, 1_000, 1_700_000_000, 2, &[t, d]);
        let mut dec = Decoder::new(DecoderLimits::default());
        let (_, recs) = run(&mut dec, exporter(), 0, &dg);
        assert_eq!(recs[0].start_ms, EXPORT_MS - 2_000);
        assert_eq!(recs[0].end_ms, EXPORT_MS - 500);
    }

    #[test]
    fn attaches_sampling_announced_in_options_data() {
        // Options template 257: scope System (type 1, 4 bytes), FLOW_SAMPLER_ID (48, 1 byte),
        // FLOW_SAMPLER_RANDOM_INTERVAL (50, 4 bytes). Options template 258: System scope and
        // SAMPLING_INTERVAL (34) only, for the whole source id.
        let ot = set(
            1,
            &cat(&[
                &v9_opt_tpl(257, &[(1, 4)], &[(48, 1), (50, 4)]),
                &v9_opt_tpl(258, &[(1, 4)], &[(34, 4)]),
            ]),
        );
        let od = set(
            257,
            &[
                0, 0, 0, 0, 1, 0, 0, 0, 100, // sampler 1: 1 in 100
                0, 0, 0, 0, 2, 0, 0, 0x03, 0xe8, // sampler 2: 1 in 1000
                0, 0, // padding
            ],
        );
        let od2 = set(258, &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 10]);
        // Data template with FLOW_SAMPLER_ID, and one without.
        let t = set(
            0,
            &cat(&[&tpl(300, &[(1, 4), (48, 1)]), &tpl(301, &[(1, 4)])]),
        );
        let d = set(300, &[0, 0, 0, 1, 1, 0, 0, 0, 2, 2, 0, 0, 0, 3, 9]);
        let d2 = set(301, &[0, 0, 0, 4]);
        let dg = v9(5, 1_000, 1_000, 0, &[ot, od, od2, t, d, d2]);

        let mut dec = Decoder::new(DecoderLimits::default());
        let (r, recs) = run(&mut dec, exporter(), 0, &dg);
        assert_eq!(r.error, None);
        let got: Vec<(u64, u32)> = recs.iter().map(|r| (r.bytes, r.sampling_rate)).collect();
        // Sampler 9 was never announced: the source-wide rate applies.
        assert_eq!(got, vec![(1, 100), (2, 1000), (3, 10), (4, 10)]);
        // The scope field (System = 0xffffffff) was not read as a byte counter.
        assert!(recs.iter().all(|r| r.bytes < 5));
    }

    #[test]
    fn holds_data_until_its_template_arrives() {
        let d = set(300, &[0, 0, 0, 42]);
        let t = set(0, &tpl(300, &[(1, 4)]));
        let mut dec = Decoder::new(DecoderLimits::default());

        // Same datagram: data first, template after.
        let dg = v9(1, 1_000, 1_000, 2, &[d.clone(), t.clone()]);
        let (r, recs) = run(&mut dec, exporter(), 0, &dg);
        assert_eq!((r.sets_held, r.records, r.error), (1, 1, None));
        assert_eq!(recs[0].bytes, 42);

        // Later datagram, other source id (so template 300 is unknown there).
        let dg = v9(2, 1_000, 1_000, 1, std::slice::from_ref(&d));
        let (r, _) = run(&mut dec, exporter(), 10, &dg);
        assert_eq!((r.sets_held, r.records), (1, 0));
        let dg = v9(2, 1_000, 1_000, 1, &[t]);
        let (r, recs) = run(&mut dec, exporter(), 20, &dg);
        assert_eq!((r.records, recs[0].domain_id), (1, 2));
        assert_eq!(dec.stats().held_sets_decoded, 2);
        assert_eq!(dec.pending_bytes(), 0);
    }

    #[test]
    fn refuses_bad_templates() {
        let mut dec = Decoder::new(DecoderLimits::default());
        let cases = [
            set(0, &tpl(300, &[])),                                    // no fields
            set(0, &tpl(300, &[(1, 0), (2, 0)])),                      // record length 0
            set(0, &tpl(255, &[(1, 4)])),                              // reserved id
            set(0, &[0x01, 0x2c, 0x00, 0x09, 0, 1, 0, 4]),             // count past the set
            set(1, &[0x01, 0x2c, 0x00, 0x03, 0x00, 0x04, 0, 1, 0, 4]), // scope length not x4
        ];
        for (i, s) in cases.iter().enumerate() {
            let dg = v9(1, 0, 0, 1, std::slice::from_ref(s));
            let (r, _) = run(&mut dec, exporter(), 0, &dg);
            assert_eq!(r.error, Some(DecodeError::BadTemplate), "case {i}");
        }
        assert_eq!(
            dec.stats().errors[DecodeError::BadTemplate.index()],
            cases.len() as u64
        );
        assert_eq!(dec.templates(), 0);
    }

    #[test]
    fn refuses_bad_flowset_lengths_after_good_records() {
        let t = set(0, &tpl(300, &[(1, 4)]));
        let d = set(300, &[0, 0, 0, 1]);
        for bad in [
            &[0x01, 0x2c, 0, 0][..],
            &[0x01, 0x2c, 0, 3],
            &[0x01, 0x2c, 0, 12, 0, 0],
        ] {
            let dg = cat(&[&v9(1, 0, 0, 2, &[t.clone(), d.clone()]), bad]);
            let mut dec = Decoder::new(DecoderLimits::default());
            let (r, _) = run(&mut dec, exporter(), 0, &dg);
            assert_eq!((r.records, r.error), (1, Some(DecodeError::BadSetLength)));
        }
        // 1 to 3 trailing bytes are datagram padding, and so is a zero-filled tail (Cisco ACI
        // sends its templates in a zero-filled 256-byte datagram).
        for tail in [&[0u8, 0][..], &[0; 40]] {
            let dg = cat(&[&v9(1, 0, 0, 2, &[t.clone(), d.clone()]), tail]);
            let mut dec = Decoder::new(DecoderLimits::default());
            let (r, _) = run(&mut dec, exporter(), 0, &dg);
            assert_eq!((r.records, r.error), (1, None));
        }
    }

    #[test]
    fn a_set_without_one_whole_record_is_truncated() {
        let t = set(0, &tpl(300, &[(1, 4), (2, 4)]));
        let d = set(300, &[0, 0, 0, 1, 0]);
        let mut dec = Decoder::new(DecoderLimits::default());
        let (r, _) = run(&mut dec, exporter(), 0, &v9(1, 0, 0, 2, &[t, d]));
        assert_eq!(r.error, Some(DecodeError::TruncatedRecord));
    }
}
