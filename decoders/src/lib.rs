//! Sans-IO decoders for flow export protocols: NetFlow v5, NetFlow v9 (RFC 3954), IPFIX
//! (RFC 7011) and, later, sFlow v5.
//!
//! Bytes go in, [`FlowRecord`]s come out. The crate does no I/O, reads no clock (the caller
//! passes `now_ms`), does no logging and contains no `unsafe`.
//!
//! # The guarantee
//!
//! No function in this crate panics on any input, loops without advancing, or reads past the
//! datagram. Malformed input yields a [`DecodeError`], a small `Copy` value whose
//! [`DecodeError::reason`] is a fixed metrics label. Records decoded before the error in the same
//! datagram are still delivered (sets are independent; a corrupt set ends the datagram).
//!
//! # Memory
//!
//! No heap allocation per record. Template caches and the buffer of data that arrived before its
//! template are bounded per exporter and in total ([`DecoderLimits`]); what does not fit, or
//! expires, is counted in [`DecodeStats`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decoder;
mod error;
pub mod ipfix;
pub mod netflow_v5;
pub mod netflow_v9;
mod record;
pub mod template;
#[cfg(test)]
mod testutil;

pub use decoder::{DatagramResult, DecodeStats, Decoder, DecoderLimits};
pub use error::DecodeError;
pub use record::{
    FlowFormat, FlowRecord, V4_UNSPECIFIED, addr_to_bytes, bytes_to_addr, v4_to_bytes,
};
