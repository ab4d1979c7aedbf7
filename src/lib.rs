//! flowplane's wiring: the configuration file and capture-file reading, shared by the
//! `flowplane` binary and the end-to-end tests.
//!
//! The data plane itself lives in `flowplane-engine`, the decoders in `flowplane-decoders` and
//! the Valkey and Kafka writers in `flowplane-sinks`; this crate only reads files and joins those
//! crates together. It prints nothing: output belongs to the binary.
#![warn(missing_docs)]

pub mod capture;
pub mod config;
// `gen` is a reserved keyword since edition 2024, hence the raw identifier.
pub mod r#gen;
