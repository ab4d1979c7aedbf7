//! Shared by the integration tests: service addresses, the skip switch, test batches.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use flowplane_engine::{
    AggEntry, Alert, CounterRecord, DimensionWindow, InterfaceCounters, KeyValue, Totals,
    WindowBatch,
};

/// `FLOWPLANE_SKIP_SERVICES=1` turns a missing service into a skipped test; otherwise it fails.
pub(crate) fn skip_services() -> bool {
    std::env::var("FLOWPLANE_SKIP_SERVICES").is_ok_and(|v| v == "1")
}

pub(crate) fn valkey_url() -> String {
    std::env::var("FLOWPLANE_VALKEY_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub(crate) fn kafka_brokers() -> String {
    std::env::var("FLOWPLANE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A name no other test run uses.
pub(crate) fn unique(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("fptest-{what}-{}-{nanos:x}", std::process::id())
}

/// A loopback port with nothing listening on it (bound, then released).
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub(crate) fn totals(bytes: u64) -> Totals {
    Totals {
        bytes,
        packets: bytes / 100 + 1,
        flows: 1,
        raw_bytes: bytes,
        raw_packets: bytes / 100 + 1,
    }
}

/// One `dst_port` window with the given (port, bytes) keys.
pub(crate) fn port_batch(window_start: u64, keys: &[(u64, u64)]) -> WindowBatch {
    WindowBatch {
        window_start,
        closed_unix_ms: 0,
        dimensions: vec![DimensionWindow {
            dimension: Arc::from("dst_port"),
            entries: keys
                .iter()
                .map(|&(port, bytes)| AggEntry {
                    key: port.to_string(),
                    fields: vec![("dst_port", KeyValue::Num(port))],
                    totals: totals(bytes),
                })
                .collect(),
            overflow: Totals::default(),
        }],
        alerts: Vec::new(),
        counters: Vec::new(),
    }
}

/// A two-dimension window with overflow and one alert.
pub(crate) fn full_batch(window_start: u64) -> WindowBatch {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let mut b = port_batch(window_start, &[(443, 5_000), (80, 1_000)]);
    b.dimensions.push(DimensionWindow {
        dimension: Arc::from("src_ip+dst_port+protocol"),
        entries: vec![AggEntry {
            key: "10.0.0.1|443|6".to_owned(),
            fields: vec![
                ("src_ip", KeyValue::Ip(ip)),
                ("dst_port", KeyValue::Num(443)),
                ("protocol", KeyValue::Num(6)),
            ],
            totals: totals(5_000),
        }],
        overflow: totals(300),
    });
    b.alerts.push(Alert {
        dimension: Arc::from("dst_port"),
        key: "443".to_owned(),
        window_start,
        value: 5_000.0,
        mean: 100.0,
        stddev: 10.0,
        score: 490.0,
        threshold: 4.0,
    });
    b
}

/// One interface counter sample of IPv4 agent `agent` (last octet of 192.0.2.x), interface
/// `if_index`, arriving at `time_ms`, 1 Gbit/s, with the given utilisation (rates follow from it).
pub(crate) fn counter_sample(
    agent: u8,
    if_index: u32,
    time_ms: u64,
    utilisation: Option<f64>,
) -> InterfaceCounters {
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..].copy_from_slice(&[192, 0, 2, agent]);
    let speed = 1_000_000_000u64;
    let record = CounterRecord {
        agent: addr,
        exporter: addr,
        if_speed: speed,
        in_octets: 1_000_000 * u64::from(if_index),
        out_octets: 2_000_000 * u64::from(if_index),
        time_ms,
        sub_agent_id: 0,
        uptime_ms: 1_000,
        sample_sequence: if_index,
        source_id_index: if_index,
        if_index,
        if_type: 6,
        if_direction: 1,
        if_status: 3,
        in_errors: 3,
        out_errors: 4,
        in_discards: 5,
        out_discards: 6,
        has_generic: 1,
        has_ethernet: 1,
        ..CounterRecord::default()
    };
    let bps = utilisation.map(|u| u * speed as f64);
    InterfaceCounters {
        record,
        interval_secs: utilisation.map(|_| 20.0),
        in_bps: bps,
        out_bps: bps.map(|b| b / 2.0),
        utilisation,
    }
}

/// A window with no aggregates and the given counter samples.
pub(crate) fn counters_batch(window_start: u64, counters: Vec<InterfaceCounters>) -> WindowBatch {
    WindowBatch {
        window_start,
        counters,
        ..WindowBatch::default()
    }
}
