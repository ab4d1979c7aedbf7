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
