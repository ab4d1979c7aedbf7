//! Sans-IO decoders for flow export protocols: NetFlow v5, NetFlow v9 (RFC 3954), IPFIX
//! (RFC 7011) and sFlow v5.
//!
//! Bytes go in, [`FlowRecord`]s (and, for sFlow counter samples, [`CounterRecord`]s) come out. The crate does no I/O, reads no clock (the caller
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
//!
//! # Layout
//!
//! Each format module follows the same two levels. A *view* ([`netflow_v5::Packet`],
//! [`netflow_v9::Packet`], [`ipfix::Packet`], [`sflow::Packet`], [`template::SetHeader`]) wraps
//! the bytes without
//! copying; `new_checked` runs `check_len`, after which no accessor can panic, and `mod field`
//! holds the byte ranges. The *parse* walks the view and fills [`FlowRecord`]s. What NetFlow v9
//! and IPFIX share (set framing, field specifiers, the Information Element mapping, learned
//! templates) lives in [`template`]; the per-exporter state (template cache, option-announced
//! sampling, held data) lives in [`Decoder`].
//!
//! The format is recognised by the 32-bit version `00 00 00 05` (sFlow v5), else by the 16-bit
//! version at offset 0: 5, 9 or 10. sFlow can never be mistaken for NetFlow v5 (`00 05`). sFlow
//! keeps per-agent sequence state in [`Decoder`] too, bounded like the rest.
//!
//! # Fuzzing
//!
//! `decoders/fuzz` holds a cargo-fuzz target, `decode`, that feeds arbitrary datagrams through
//! one [`Decoder`] and checks its accounting invariants. No check in this crate is relaxed under
//! `cfg(fuzzing)`: there are no checksums to skip.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decoder;
mod error;
pub mod ipfix;
pub mod netflow_v5;
pub mod netflow_v9;
mod record;
pub mod sflow;
pub mod template;
#[cfg(test)]
mod testutil;

pub use decoder::{
    DatagramResult, DecodeStats, Decoder, DecoderLimits, EXPORTER_EVICT_IDLE_MS, EXPORTER_IDLE_MS,
    SFLOW_AGENT_IDLE_MS, SFLOW_MAX_SOURCES, SFLOW_REORDER_MS, SFLOW_REORDER_WINDOW, SflowStats,
};
pub use error::DecodeError;
pub use ipfix::Packet as IpfixPacket;
pub use netflow_v5::Packet as NetflowV5Packet;
pub use netflow_v9::Packet as NetflowV9Packet;
pub use record::{
    CounterRecord, FlowFormat, FlowRecord, IF_FORMAT_DISCARDED, IF_FORMAT_IFINDEX,
    IF_FORMAT_MULTIPLE, V4_UNSPECIFIED, addr_to_bytes, bytes_to_addr, v4_to_bytes,
};
pub use sflow::Packet as SflowPacket;
pub use template::{SetHeader, Sets, Template, TemplateKind};
