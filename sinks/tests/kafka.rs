//! The Kafka sink against a real Kafka-protocol broker (tansu, `scripts/services.sh start`).
//!
//! `FLOWPLANE_KAFKA_BROKERS` picks the brokers (default `127.0.0.1:9092`). An unreachable broker
//! fails the tests unless `FLOWPLANE_SKIP_SERVICES=1`. Topics are read back by explicit
//! partition assignment from the beginning: tansu delivers nothing to a consumer-group
//! subscription.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flowplane_engine::Sink as _;
use flowplane_sinks::kafka::{self, KafkaSink, KafkaSinkConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

fn config() -> Option<KafkaSinkConfig> {
    let mut c = KafkaSinkConfig::default();
    c.brokers = kafka_brokers();
    c.aggregates_topic = unique("agg");
    c.alerts_topic = unique("alerts");
    c.counters_topic = unique("counters");
    c.instance = "test-1".to_owned();
    match kafka::probe(&c, Duration::from_secs(5)) {
        Ok(()) => Some(c),
        Err(e) if skip_services() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => {
            panic!("Kafka is needed (scripts/services.sh start, or FLOWPLANE_SKIP_SERVICES=1): {e}")
        }
    }
}

/// Every message of partition 0 of `topic`, as (key, JSON), waiting until `want` arrived.
fn read(brokers: &str, topic: &str, want: usize) -> Vec<(String, Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "flowplane-sinks-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();

    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < want && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let key = String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap();
        let doc = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
        out.push((key, doc));
    }
    out
}

#[test]
fn writes_aggregates_overflow_and_alerts_as_documents() {
    let Some(config) = config() else { return };
    let mut sink = KafkaSink::new(config.clone()).unwrap();
    let s = 1_700_000_000;
    sink.send(&full_batch(s)).unwrap();

    let docs = read(&config.brokers, &config.aggregates_topic, 4);
    assert_eq!(docs.len(), 4, "{docs:?}");
    let keys: Vec<&str> = docs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "dst_port|443",
            "dst_port|80",
            "src_ip+dst_port+protocol|10.0.0.1|443|6",
            "src_ip+dst_port+protocol|__overflow__",
        ]
    );
    let doc = &docs[2].1;
    assert_eq!(doc["@timestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(doc["window_start"], s);
    assert_eq!(doc["src_ip"], "10.0.0.1");
    assert_eq!(doc["dst_port"], 443);
    assert_eq!(doc["protocol"], 6);
    assert_eq!(doc["bytes"], 5_000);
    assert_eq!(doc["instance"], "test-1");
    assert_eq!(
        doc["id"],
        "src_ip+dst_port+protocol|10.0.0.1|443|6|1700000000|test-1"
    );
    assert_eq!(docs[3].1["overflow"], true);
    assert_eq!(docs[3].1["bytes"], 300);

    let alerts = read(&config.brokers, &config.alerts_topic, 1);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].0, "dst_port|443");
    assert_eq!(alerts[0].1["score"], 490.0);
    assert_eq!(alerts[0].1["threshold"], 4.0);

    // A second window goes through the same producer.
    sink.send(&port_batch(s + 1, &[(22, 1)])).unwrap();
    assert_eq!(read(&config.brokers, &config.aggregates_topic, 5).len(), 5);
}

#[test]
fn a_dead_broker_fails_promptly_and_a_live_one_works_again() {
    let Some(live) = config() else { return };
    let mut dead = live.clone();
    dead.brokers = format!("127.0.0.1:{}", free_port());
    dead.create_topics = false;
    let mut sink = KafkaSink::new(dead).unwrap();
    let t = Instant::now();
    let e = sink.send(&port_batch(1, &[(1, 1)])).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(e.to_string().contains("kafka unavailable"), "{e}");

    let mut sink = KafkaSink::new(live.clone()).unwrap();
    sink.send(&port_batch(1, &[(1, 1)])).unwrap();
    assert_eq!(read(&live.brokers, &live.aggregates_topic, 1).len(), 1);
}

#[test]
fn writes_counter_samples_as_documents_on_their_own_topic() {
    let Some(config) = config() else { return };
    let mut sink = KafkaSink::new(config.clone()).unwrap();
    let s = 1_700_000_000;
    let mut batch = full_batch(s);
    batch.counters = vec![
        counter_sample(1, 7, s * 1_000 + 250, Some(0.5)),
        counter_sample(1, 8, s * 1_000 + 251, None),
        counter_sample(2, 7, s * 1_000 + 999, Some(0.1)),
    ];
    sink.send(&batch).unwrap();

    let docs = read(&config.brokers, &config.counters_topic, 3);
    assert_eq!(docs.len(), 3, "{docs:?}");
    let keys: Vec<&str> = docs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["192.0.2.1|7", "192.0.2.1|8", "192.0.2.2|7"]);
    let doc = &docs[0].1;
    assert_eq!(doc["@timestamp"], "2023-11-14T22:13:20.250Z");
    assert_eq!(doc["agent"], "192.0.2.1");
    assert_eq!(doc["if_index"], 7);
    assert_eq!(doc["if_speed"], 1_000_000_000u64);
    assert_eq!(doc["in_octets"], 7_000_000);
    assert_eq!(doc["out_octets"], 14_000_000);
    assert_eq!(doc["in_errors"], 3);
    assert_eq!(doc["utilisation"], 0.5);
    assert_eq!(doc["in_bps"], 5e8);
    assert_eq!(doc["instance"], "test-1");
    assert_eq!(doc["id"], "192.0.2.1|0|7|7|1000");
    assert_eq!(docs[1].1["utilisation"], Value::Null);
    assert_eq!(docs[1].1["in_bps"], Value::Null);
    assert_eq!(docs[2].1["@timestamp"], "2023-11-14T22:13:20.999Z");

    // The aggregates and alerts are where they were; nothing of the counters went there.
    let aggregates = read(&config.brokers, &config.aggregates_topic, 4);
    assert_eq!(aggregates.len(), 4, "{aggregates:?}");
    assert!(aggregates.iter().all(|(_, d)| d.get("if_index").is_none()));
}
