//! The decoder error: one small `Copy` enum with a fixed label per variant.

use std::fmt;

/// Why a datagram, or part of one, could not be decoded.
///
/// `Copy` and heap-free: a malformed packet costs a counter increment, never an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeError {
    /// The header announces more records or bytes than the datagram holds, or fewer than it
    /// holds where the format fixes the length (NetFlow v5: `24 + 48 * count`).
    BadCount,
    /// The version field is not one this decoder handles.
    BadVersion,
    /// A set / FlowSet header is malformed: length 0, shorter than its own header, or past
    /// the end of the message.
    BadSetLength,
    /// A template or options template definition is invalid (record length 0, field count
    /// that runs past the set, scope count 0 where the RFC forbids it, ...).
    BadTemplate,
    /// The datagram is shorter than the fixed header of its format.
    Truncated,
    /// A record is shorter than its template says (variable-length field running past the set),
    /// or an sFlow record is shorter than the fixed layout of its format.
    TruncatedRecord,
    /// An sFlow address (agent, next hop) has a type other than IPv4 (1) or IPv6 (2).
    BadAddressType,
    /// An sFlow sample or record declares a length past the end of its container, or a length
    /// that is not a multiple of 4 where XDR requires it; or a sampled header declares more
    /// bytes than its record holds.
    BadSampleLength,
}

impl DecodeError {
    /// Every variant, for pre-registering counters.
    ///
    /// Variants added later take the next index, so existing counter slots keep their meaning.
    pub const ALL: [Self; 8] = [
        Self::BadCount,
        Self::BadVersion,
        Self::BadSetLength,
        Self::BadTemplate,
        Self::Truncated,
        Self::TruncatedRecord,
        Self::BadAddressType,
        Self::BadSampleLength,
    ];

    /// A fixed lowercase label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadCount => "bad_count",
            Self::BadVersion => "bad_version",
            Self::BadSetLength => "bad_set_length",
            Self::BadTemplate => "bad_template",
            Self::Truncated => "truncated",
            Self::TruncatedRecord => "truncated_record",
            Self::BadAddressType => "bad_address_type",
            Self::BadSampleLength => "bad_sample_length",
        }
    }

    /// Dense index of the variant, `0..ALL.len()`, for counter arrays.
    pub fn index(self) -> usize {
        match self {
            Self::BadCount => 0,
            Self::BadVersion => 1,
            Self::BadSetLength => 2,
            Self::BadTemplate => 3,
            Self::Truncated => 4,
            Self::TruncatedRecord => 5,
            Self::BadAddressType => 6,
            Self::BadSampleLength => 7,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_reason_are_consistent() {
        for (i, e) in DecodeError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i, "{e:?}");
            assert_eq!(e.to_string(), e.reason());
        }
        let mut reasons: Vec<_> = DecodeError::ALL.iter().map(|e| e.reason()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), DecodeError::ALL.len());
    }
}
