//! Aggregation dimensions and their fixed-width binary keys.
//!
//! A [`Dimension`] is an ordered list of [`Field`]s. Its key is the concatenation of the
//! fields' values in network byte order, each at a fixed width, so a dimension's keys all have
//! the same length ([`Dimension::key_len`], at most [`KEY_MAX`] bytes) and compare as plain
//! bytes. Addresses take 16 bytes (IPv4 as IPv4-mapped IPv6, as in the decoders' record), so an
//! IPv4 and an IPv6 key never collide. Keys are rendered to text only in the merger, once per
//! window.

use std::net::IpAddr;
use std::sync::Arc;

use flowplane_decoders::{FlowRecord, bytes_to_addr};

use crate::output::KeyValue;

/// Widest possible key: every field once (3 addresses of 16 bytes, 2 ports of 2, protocol and
/// tos of 1, 2 interfaces and 2 AS numbers of 4) is 70 bytes; rounded up to 72.
pub const KEY_MAX: usize = 72;

/// One key field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// Destination AS number (4 bytes).
    DstAs,
    /// Destination address (16 bytes).
    DstIp,
    /// Destination port (2 bytes).
    DstPort,
    /// Exporter address (16 bytes).
    Exporter,
    /// Input interface (4 bytes).
    InputIf,
    /// Output interface (4 bytes).
    OutputIf,
    /// IP protocol (1 byte).
    Protocol,
    /// Source AS number (4 bytes).
    SrcAs,
    /// Source address (16 bytes).
    SrcIp,
    /// Source port (2 bytes).
    SrcPort,
    /// ToS / traffic class byte (1 byte).
    Tos,
}

impl Field {
    /// Every field, in the order the configuration documents them.
    pub const ALL: [Self; 11] = [
        Self::SrcIp,
        Self::DstIp,
        Self::SrcPort,
        Self::DstPort,
        Self::Protocol,
        Self::Exporter,
        Self::InputIf,
        Self::OutputIf,
        Self::Tos,
        Self::SrcAs,
        Self::DstAs,
    ];

    /// The configuration / output name.
    pub fn name(self) -> &'static str {
        match self {
            Self::DstAs => "dst_as",
            Self::DstIp => "dst_ip",
            Self::DstPort => "dst_port",
            Self::Exporter => "exporter",
            Self::InputIf => "input_if",
            Self::OutputIf => "output_if",
            Self::Protocol => "protocol",
            Self::SrcAs => "src_as",
            Self::SrcIp => "src_ip",
            Self::SrcPort => "src_port",
            Self::Tos => "tos",
        }
    }

    /// Looks a field up by its configuration name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Bytes the field takes in a key.
    pub fn width(self) -> usize {
        match self {
            Self::DstIp | Self::Exporter | Self::SrcIp => 16,
            Self::DstAs | Self::InputIf | Self::OutputIf | Self::SrcAs => 4,
            Self::DstPort | Self::SrcPort => 2,
            Self::Protocol | Self::Tos => 1,
        }
    }

    /// Writes the field of `r` into `out` (exactly [`Field::width`] bytes).
    #[inline]
    fn write(self, r: &FlowRecord, out: &mut [u8]) {
        match self {
            Self::DstAs => out.copy_from_slice(&r.dst_as.to_be_bytes()),
            Self::DstIp => out.copy_from_slice(&r.dst_addr),
            Self::DstPort => out.copy_from_slice(&r.dst_port.to_be_bytes()),
            Self::Exporter => out.copy_from_slice(&r.exporter),
            // sFlow marks an interface field that is not an ifIndex (a discard reason, or a
            // count of output interfaces) with format bits; such values key as interface 0.
            Self::InputIf => out.copy_from_slice(&if_index(r.input_if, r.input_if_format)),
            Self::OutputIf => out.copy_from_slice(&if_index(r.output_if, r.output_if_format)),
            Self::Protocol => out[0] = r.protocol,
            Self::SrcAs => out.copy_from_slice(&r.src_as.to_be_bytes()),
            Self::SrcIp => out.copy_from_slice(&r.src_addr),
            Self::SrcPort => out.copy_from_slice(&r.src_port.to_be_bytes()),
            Self::Tos => out[0] = r.tos,
        }
    }

    /// Reads the field back from its key bytes.
    fn read(self, b: &[u8]) -> KeyValue {
        let num = |b: &[u8]| b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        match self {
            Self::DstIp | Self::Exporter | Self::SrcIp => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                KeyValue::Ip(bytes_to_addr(&a))
            }
            _ => KeyValue::Num(num(b)),
        }
    }
}

/// One aggregation dimension: an ordered set of fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dimension {
    name: Arc<str>,
    fields: Vec<Field>,
    key_len: usize,
}

impl Dimension {
    /// Parses a `+`-joined field list such as `src_ip+dst_port+protocol`.
    ///
    /// # Errors
    ///
    /// A sentence naming the problem: empty, unknown field, repeated field.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut fields = Vec::new();
        for part in spec.split('+') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("`{spec}` has an empty field name"));
            }
            let Some(f) = Field::from_name(part) else {
                let known: Vec<_> = Field::ALL.iter().map(|f| f.name()).collect();
                return Err(format!(
                    "`{spec}` has unknown field `{part}` (known: {})",
                    known.join(", ")
                ));
            };
            if fields.contains(&f) {
                return Err(format!("`{spec}` names `{part}` twice"));
            }
            fields.push(f);
        }
        Ok(Self::new(fields))
    }

    /// A dimension of the given fields (at least one, none repeated).
    ///
    /// # Panics
    ///
    /// When `fields` is empty or repeats a field; [`Dimension::parse`] checks both.
    pub fn new(fields: Vec<Field>) -> Self {
        assert!(!fields.is_empty(), "a dimension needs a field");
        let key_len = fields.iter().map(|f| f.width()).sum();
        assert!(key_len <= KEY_MAX, "a field is repeated");
        let name: Vec<_> = fields.iter().map(|f| f.name()).collect();
        Self {
            name: name.join("+").into(),
            fields,
            key_len,
        }
    }

    /// The dimension's name: its field names joined by `+`.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The fields, in key order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Length of every key of this dimension.
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// True when both dimensions have the same fields, in any order.
    pub fn same_fields(&self, other: &Self) -> bool {
        self.fields.len() == other.fields.len()
            && self.fields.iter().all(|f| other.fields.contains(f))
    }

    /// Writes the key of `r` into `out[..key_len]` and returns that slice.
    #[inline]
    pub fn extract<'a>(&self, r: &FlowRecord, out: &'a mut [u8; KEY_MAX]) -> &'a [u8] {
        let mut at = 0;
        for f in &self.fields {
            let w = f.width();
            f.write(r, &mut out[at..at + w]);
            at += w;
        }
        &out[..at]
    }

    /// Renders a key of this dimension: the text form (values joined by `|`) and the fields.
    /// `key` must be `key_len` bytes long (keys from this dimension's tables always are).
    pub fn render(&self, key: &[u8]) -> (String, Vec<(&'static str, KeyValue)>) {
        let mut text = String::with_capacity(self.fields.len() * 8);
        let mut fields = Vec::with_capacity(self.fields.len());
        let mut at = 0;
        for (i, f) in self.fields.iter().enumerate() {
            let w = f.width();
            let v = key.get(at..at + w).map_or(KeyValue::Num(0), |b| f.read(b));
            at += w;
            if i > 0 {
                text.push('|');
            }
            push_display(&mut text, &v);
            fields.push((f.name(), v));
        }
        (text, fields)
    }
}

fn push_display(s: &mut String, v: &KeyValue) {
    use std::fmt::Write;
    let _ = match v {
        KeyValue::Ip(IpAddr::V4(a)) => write!(s, "{a}"),
        KeyValue::Ip(IpAddr::V6(a)) => write!(s, "{a}"),
        KeyValue::Num(n) => write!(s, "{n}"),
    };
}

/// An interface field as key bytes: the ifIndex, or 0 when the field's format says it holds
/// something else (sFlow: 1 = discarded, value is the reason; 2 = several interfaces).
fn if_index(value: u32, format: u8) -> [u8; 4] {
    if format == 0 { value } else { 0 }.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use flowplane_decoders::v4_to_bytes;

    use super::*;

    #[test]
    fn composite_key_round_trips() {
        let d = Dimension::parse("src_ip+dst_port+protocol").unwrap();
        assert_eq!(d.key_len(), 19);
        assert_eq!(&**d.name(), "src_ip+dst_port+protocol");
        let r = FlowRecord {
            src_addr: v4_to_bytes([10, 0, 0, 1]),
            dst_port: 443,
            protocol: 6,
            ..FlowRecord::default()
        };
        let mut buf = [0u8; KEY_MAX];
        let k = d.extract(&r, &mut buf).to_vec();
        let (text, fields) = d.render(&k);
        assert_eq!(text, "10.0.0.1|443|6");
        assert_eq!(fields[1], ("dst_port", KeyValue::Num(443)));
    }

    #[test]
    fn sflow_interface_fields_that_are_not_an_ifindex_key_as_zero() {
        let d = Dimension::parse("input_if+output_if").unwrap();
        let mut r = FlowRecord {
            input_if: 7,
            output_if: 3,
            ..FlowRecord::default()
        };
        let mut buf = [0u8; KEY_MAX];
        assert_eq!(d.extract(&r, &mut buf), [0, 0, 0, 7, 0, 0, 0, 3]);
        // Discarded (format 1, value = reason 258) and multiple (format 2, 3 interfaces).
        r.output_if = 258;
        r.output_if_format = 1;
        r.input_if_format = 2;
        assert_eq!(d.extract(&r, &mut buf), [0; 8]);
    }

    #[test]
    fn widest_key_fits() {
        let d = Dimension::new(Field::ALL.to_vec());
        assert!(d.key_len() <= KEY_MAX);
        let r = FlowRecord {
            src_addr: "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            src_as: 65_000,
            ..FlowRecord::default()
        };
        let mut buf = [0u8; KEY_MAX];
        let k = d.extract(&r, &mut buf).to_vec();
        let (text, _) = d.render(&k);
        assert!(text.starts_with("2001:db8::1|"), "{text}");
        assert!(text.ends_with("|65000|0"), "{text}");
    }
}
