//! JSON text written straight into a byte buffer, for the Kafka documents: no intermediate
//! `serde_json::Value`, no allocation per value.
//!
//! The output is what `serde_json`'s compact serializer writes for the same values, byte for
//! byte (the Kafka sink's tests compare the two): strings escaped per [RFC 8259 § 7] with the
//! short forms `\" \\ \b \f \n \r \t` and `\u00xx` (lower-case hex) for the other control
//! characters, nothing else escaped (not `/`, not DEL, not non-ASCII); integers in decimal;
//! finite floats in the shortest form that reads back exactly, by `zmij`, the formatter
//! `serde_json` uses; NaN and the infinities as `null`, as `serde_json::Value` makes them.
//!
//! [RFC 8259 § 7]: https://www.rfc-editor.org/rfc/rfc8259#section-7

use std::io::Write as _;
use std::net::IpAddr;

/// Appends `s` as a JSON string, quotes included.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaped(out, s);
    out.push(b'"');
}

/// Appends the contents of `s` as a JSON string would hold them, without quotes. Escaping works
/// character by character, so escaping two strings one after the other equals escaping their
/// concatenation (document ids are written in parts).
pub(crate) fn escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // RFC 8259 § 7: quotation mark, reverse solidus and U+0000 to U+001F must be escaped.
        // Every other byte, including those of multi-byte UTF-8 sequences, is copied as is.
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX_DIGITS[usize::from(b >> 4)],
                HEX_DIGITS[usize::from(b & 0x0f)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends an unsigned integer.
pub(crate) fn uint(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends a float, or `null` when there is none or it is NaN or infinite (JSON has neither).
pub(crate) fn float(out: &mut Vec<u8>, v: Option<f64>) {
    match v.filter(|v| v.is_finite()) {
        Some(v) => out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `true` or `false`.
pub(crate) fn boolean(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// Appends an address as a JSON string in its `Display` form (`10.0.0.1`, `2001:db8::1`). The
/// text has no character that needs escaping.
pub(crate) fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    match ip {
        // The common case, without the formatting machinery: four decimal octets.
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            uint(out, a);
            out.push(b'.');
            uint(out, b);
            out.push(b'.');
            uint(out, c);
            out.push(b'.');
            uint(out, d);
        }
        // Writing into a `Vec` cannot fail.
        IpAddr::V6(v6) => write!(out, "{v6}").unwrap_or(()),
    }
    out.push(b'"');
}

static HEX_DIGITS: [u8; 16] = *b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_serde_json() {
        let mut all = String::new();
        for c in (0u32..0x80).chain([0xe9, 0x2028, 0x1f600]) {
            all.push(char::from_u32(c).unwrap());
        }
        for v in [
            "",
            "plain",
            "a\"b\\c/d",
            "\u{0}\u{1f}\u{7f}",
            "tab\there\r\n",
            &all,
        ] {
            assert_eq!(s(v), serde_json::to_string(v).unwrap(), "{v:?}");
        }
    }

    #[test]
    fn numbers_like_serde_json() {
        for v in [
            0.0,
            -0.0,
            1.0,
            0.1,
            1e6,
            1e15,
            1e16,
            1e21,
            1e-7,
            123.456,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ] {
            let mut out = Vec::new();
            float(&mut out, Some(v));
            assert_eq!(out, serde_json::to_vec(&v).unwrap(), "{v}");
        }
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut out = Vec::new();
            float(&mut out, Some(v));
            assert_eq!(out, b"null");
        }
        let mut out = Vec::new();
        uint(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn addresses_as_displayed() {
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            let mut out = Vec::new();
            ip(&mut out, a.parse().unwrap());
            assert_eq!(out, format!("\"{a}\"").as_bytes());
        }
    }
}
