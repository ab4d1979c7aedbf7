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
    /// A record is shorter than its template says (variable-length field running past the set).
    TruncatedRecord,
}

impl DecodeError {
    /// Every variant, for pre-registering counters.
    pub const ALL: [Self; 6] = [
        Self::BadCount,
        Self::BadVersion,
        Self::BadSetLength,
        Self::BadTemplate,
        Self::Truncated,
        Self::TruncatedRecord,
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
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for DecodeError {}
