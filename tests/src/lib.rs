//! Shared helpers for flowplane's corpus and end-to-end tests.
//!
//! * [`pcap_out`] writes UDP datagrams into an ordinary pcap (Ethernet / IPv4 or IPv6 / UDP), so
//!   that tshark and the exporters can read what the tests generate or re-frame.
//! * [`tshark`] runs tshark once per file and reads its PDML output into per-frame flow records.
//! * [`corpus`] reads `../shared/corpus/INDEX.tsv` and the MANIFEST notes that matter to tests.
//! * [`traffic`] writes ordinary traffic with known totals for the exporters to meter, and
//!   [`relay`] sits between an exporter and flowplane, keeping what the exporter sent.
//! * [`env`] finds the repository, the `flowplane` binary and the services the tests talk to.
//! * [`instance`] runs a real `flowplane run` for a test and stops it.
//!
//! Nothing here is a mock: the tests drive the real tools and services these helpers find.

pub mod corpus;
pub mod env;
pub mod instance;
pub mod pcap_out;
pub mod relay;
pub mod traffic;
pub mod tshark;
