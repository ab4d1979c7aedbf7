//! A flow generator for throughput tests: builds export datagrams the way real exporters write
//! them, so that a receiver under test does the same work it does in production.

pub mod flows;
pub mod send;
pub mod wire;
