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
