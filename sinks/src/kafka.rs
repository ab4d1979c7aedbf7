//! The Kafka sink: one JSON document per key per window on the aggregates topic, one per alert
//! on the alerts topic, shaped for OpenSearch's pull-based (Kafka) ingestion.
//!
//! # Documents
//!
//! An aggregate is a flat object: `@timestamp` (the window start, ISO-8601 UTC), `window_start`
//! (Unix seconds), `dimension`, `key` (the `|`-joined text), every key field by name with its
//! natural JSON type (`"src_ip": "10.0.0.1"`, `"dst_port": 443`), `bytes`, `packets`, `flows`,
//! `raw_bytes`, `raw_packets`, `overflow` (`false`), `instance` (which flowplane wrote it) and
//! `id`. A dimension whose workers' tables overflowed in the window also gets one document with
//! `"key": "__overflow__"`, `"overflow": true` and no key fields, so that a dimension's
//! documents always add up to everything flowplane accepted.
//!
//! An alert has `@timestamp`, `window_start`, `dimension`, `key`, `value`, `mean`, `stddev`,
//! `score`, `threshold`, `instance` and `id`.
//!
//! The message key is `dimension|key` (e.g. `dst_port|443`): all windows of one key land in one
//! partition, in order, and equal key text in two dimensions (`src_ip` and `dst_ip` both
//! `10.0.0.1`) stays apart.
//!
//! # Delivery
//!
//! `send` is all-or-error: it enqueues every document of the window, flushes with a bounded
//! timeout (`message_timeout_ms` plus a margin) and checks the delivery report of every message.
//! If one failed, it purges what is still queued and returns an error, and the engine resends
//! the whole window. Documents that did get through are then written twice: delivery is
//! **at-least-once**. Every document carries a deterministic `id`
//! (`dimension|key|window_start|instance`), to be used as the OpenSearch `_id`, so that the
//! duplicate replaces the first copy instead of adding to it. The instance is part of the id
//! because several flowplane instances may write the same key and window: their documents must
//! add up, not replace each other.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use flowplane_engine::{
    AggEntry, Alert, CounterRecord, InterfaceCounters, KeyValue, SinkError, Totals, WindowBatch,
};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, PurgeConfig};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::SinkConfigError;
use crate::ratelimit::{RateLimit, WARN_INTERVAL};

/// `[kafka]`: where and how the Kafka sink writes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port` separated by commas. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Topic of the per-key aggregates. Default `flowplane.aggregates`.
    pub aggregates_topic: String,
    /// Topic of the Z-score alerts. Default `flowplane.alerts`.
    pub alerts_topic: String,
    /// Topic of the interface counter samples (sFlow). Default `flowplane.counters`.
    pub counters_topic: String,
    /// Name of this flowplane in documents and ids; empty means the host name. Must differ
    /// between instances writing to the same topics. Default empty.
    pub instance: String,
    /// Create the three topics at start when they do not exist. Default `true`.
    pub create_topics: bool,
    /// Partitions of a topic flowplane creates. Default 1.
    pub topic_partitions: i32,
    /// Replication factor of a topic flowplane creates. Default 1.
    pub topic_replication: i32,
    /// `linger.ms`: how long the producer waits to fill a batch. Default 50.
    pub linger_ms: u64,
    /// `batch.size`: bytes per partition batch. Default 1000000.
    pub batch_size_bytes: u64,
    /// `compression.type`. Default `lz4`.
    pub compression: Compression,
    /// `enable.idempotence`: no duplicates from the producer's own retries. Default `true`.
    pub idempotence: bool,
    /// `message.timeout.ms`: how long a message may take to be delivered before `send` fails.
    /// Default 5000.
    pub message_timeout_ms: u64,
    /// Further librdkafka settings, passed through as they are (they override the above), e.g.
    /// `"client.id" = "edge-7"` or `"acks" = "all"`. The librdkafka built here has no TLS or
    /// SASL/GSSAPI support, so `security.protocol` can only be `plaintext`. Default empty.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            aggregates_topic: "flowplane.aggregates".to_owned(),
            alerts_topic: "flowplane.alerts".to_owned(),
            counters_topic: "flowplane.counters".to_owned(),
            instance: String::new(),
            create_topics: true,
            topic_partitions: 1,
            topic_replication: 1,
            linger_ms: 50,
            batch_size_bytes: 1_000_000,
            compression: Compression::Lz4,
            idempotence: true,
            message_timeout_ms: 5_000,
            producer: BTreeMap::new(),
        }
    }
}

/// Producer compression (`compression.type`). zstd is not offered: the librdkafka built here
/// has no libzstd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (zlib).
    Gzip,
    /// LZ4 (bundled with librdkafka).
    #[default]
    Lz4,
    /// No compression.
    None,
    /// Snappy (bundled with librdkafka).
    Snappy,
}

impl Compression {
    /// The librdkafka name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Lz4 => "lz4",
            Self::None => "none",
            Self::Snappy => "snappy",
        }
    }
}

impl KafkaSinkConfig {
    /// Checks every setting, the pass-through `producer` table included (librdkafka is asked
    /// whether it knows each name and accepts each value; nothing connects).
    ///
    /// # Errors
    ///
    /// [`SinkConfigError`] for the first setting refused, named without the table
    /// (`brokers`, `producer.acks`).
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(SinkConfigError::new("brokers", "must not be empty"));
        }
        for broker in self.brokers.split(',').map(str::trim) {
            let port = broker
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(1..))) if !host.is_empty()) {
                return Err(SinkConfigError::new(
                    "brokers",
                    format!("`{broker}` is not host:port"),
                ));
            }
        }
        topic_name("aggregates_topic", &self.aggregates_topic)?;
        topic_name("alerts_topic", &self.alerts_topic)?;
        topic_name("counters_topic", &self.counters_topic)?;
        if self.aggregates_topic == self.alerts_topic {
            return Err(SinkConfigError::new(
                "alerts_topic",
                "must differ from aggregates_topic",
            ));
        }
        if self.counters_topic == self.aggregates_topic || self.counters_topic == self.alerts_topic
        {
            return Err(SinkConfigError::new(
                "counters_topic",
                "must differ from aggregates_topic and alerts_topic",
            ));
        }
        if self.instance.chars().any(|c| c.is_control() || c == '|') {
            return Err(SinkConfigError::new(
                "instance",
                "must not contain `|` or control characters",
            ));
        }
        range("topic_partitions", self.topic_partitions, 1, 10_000)?;
        range("topic_replication", self.topic_replication, 1, 100)?;
        range("linger_ms", self.linger_ms, 0, 60_000)?;
        range("batch_size_bytes", self.batch_size_bytes, 1, 2_147_483_647)?;
        range("message_timeout_ms", self.message_timeout_ms, 100, 600_000)?;

        for (name, value) in &self.producer {
            let mut one = ClientConfig::new();
            one.set(name, value);
            if let Err(e) = one.create_native_config() {
                return Err(SinkConfigError::new(
                    format!("producer.{name}"),
                    e.to_string(),
                ));
            }
        }

        // Combinations librdkafka refuses only when the producer is created (at the first
        // send), checked here so that they stop flowplane at start instead.
        let effective = self.client_config();
        let number = |key: &str| {
            effective
                .get(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let linger = number("linger.ms").or(number("queue.buffering.max.ms"));
        let timeout = number("message.timeout.ms").or(number("delivery.timeout.ms"));
        if let (Some(linger), Some(timeout)) = (linger, timeout)
            && linger >= timeout
        {
            return Err(SinkConfigError::new(
                "linger_ms",
                format!("{linger} ms must be below message_timeout_ms ({timeout} ms)"),
            ));
        }
        let idempotent = effective.get("enable.idempotence") == Some("true");
        let acks = effective
            .get("acks")
            .or(effective.get("request.required.acks"))
            .unwrap_or("all");
        if idempotent && !matches!(acks.trim(), "all" | "-1") {
            return Err(SinkConfigError::new(
                "producer.acks",
                format!("`{acks}` cannot be used with idempotence = true (it needs acks = all)"),
            ));
        }
        Ok(())
    }

    /// The producer settings: ours, then the `producer` table.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "flowplane")
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.size", self.batch_size_bytes.to_string())
            .set("compression.type", self.compression.as_str())
            .set("enable.idempotence", self.idempotence.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            // Fail fast on a dead address instead of librdkafka's 30 s default.
            .set("socket.connection.setup.timeout.ms", "3000")
            .set("reconnect.backoff.max.ms", "2000");
        for (k, v) in &self.producer {
            c.set(k, v);
        }
        c
    }

    fn instance_name(&self) -> String {
        if self.instance.is_empty() {
            crate::host_name()
        } else {
            self.instance.clone()
        }
    }
}

/// Writes every window to Kafka. See the [module documentation](self).
pub struct KafkaSink {
    config: KafkaSinkConfig,
    instance: String,
    producer: Option<BaseProducer<Deliveries>>,
    /// Topics still to be created (the attempt at start did not get an answer).
    topics_pending: bool,
    last_topic_attempt: Option<Instant>,
    warn: RateLimit,
    /// The window being sent, kept (cleared, not freed) for the next one.
    encoder: Encoder,
}

impl KafkaSink {
    /// A sink for this configuration. Does not touch the network: the first
    /// [`send`](Self::send) creates the topics when `create_topics` is on (waiting at most 3 s;
    /// a failure is logged, retried after a failed send, and never fatal: the broker may create
    /// topics itself) and makes the producer.
    ///
    /// # Errors
    ///
    /// [`SinkConfigError`] when the configuration is invalid; never because Kafka is down.
    pub fn new(config: KafkaSinkConfig) -> Result<Self, SinkConfigError> {
        config.validate()?;
        Ok(Self {
            instance: config.instance_name(),
            topics_pending: config.create_topics,
            config,
            producer: None,
            last_topic_attempt: None,
            warn: RateLimit::new(WARN_INTERVAL),
            encoder: Encoder::default(),
        })
    }

    /// The `instance` written into documents.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Creates the topics when that is still to be done, bounded by [`ADMIN_TIMEOUT`].
    fn ensure_topics(&mut self) {
        if !self.topics_pending {
            return;
        }
        self.last_topic_attempt = Some(Instant::now());
        match create_topics(&self.config) {
            Ok(()) => self.topics_pending = false,
            Err(error) => tracing::warn!(
                sink = NAME,
                brokers = %self.config.brokers,
                %error,
                "Cannot create the Kafka topics; continuing (the broker may create them)."
            ),
        }
    }

    fn producer(&mut self) -> Result<&BaseProducer<Deliveries>, SinkError> {
        if self.producer.is_none() {
            let p = self
                .config
                .client_config()
                .create_with_context(Deliveries::default())
                .map_err(|e| SinkError::Unavailable {
                    sink: NAME,
                    reason: format!("cannot create the producer: {e}"),
                })?;
            self.producer = Some(p);
        }
        // Set just above when it was missing.
        self.producer
            .as_ref()
            .ok_or_else(|| SinkError::Unavailable {
                sink: NAME,
                reason: "no producer".to_owned(),
            })
    }

    fn write(&mut self, batch: &WindowBatch) -> Result<(), SinkError> {
        self.encoder.encode(batch, &self.instance);
        if self.encoder.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.config.message_timeout_ms) + FLUSH_MARGIN;
        let deadline = Instant::now() + timeout;
        self.producer()?;
        let Self {
            config,
            producer,
            encoder,
            ..
        } = self;
        // Made just above.
        let producer = producer.as_ref().ok_or_else(|| SinkError::Unavailable {
            sink: NAME,
            reason: "no producer".to_owned(),
        })?;
        let generation = producer.context().start();

        // Enqueue everything (librdkafka copies key and payload); a full local queue drains
        // while we poll.
        for m in encoder.messages() {
            let topic = match m.topic {
                Topic::Aggregates => config.aggregates_topic.as_str(),
                Topic::Alerts => config.alerts_topic.as_str(),
                Topic::Counters => config.counters_topic.as_str(),
            };
            let mut record = BaseRecord::with_opaque_to(topic, generation)
                .key(m.key)
                .payload(m.payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if Instant::now() < deadline =>
                    {
                        record = r;
                        producer.poll(Duration::from_millis(20));
                    }
                    Err((e, _)) => {
                        producer.purge(PurgeConfig::default().queue().inflight());
                        return Err(classify(&e));
                    }
                }
            }
        }
        let sent = encoder.len();

        // Wait for every delivery report, then check them all.
        //
        // Left over: against the tansu broker of the tests this takes about 100 ms even for a
        // window of 5 000 documents, whatever `linger_ms` is (measured with `flowplane bench
        // --flows 5000`); whether that is the broker's acknowledgement or this wait was not
        // found. It is most of the Kafka half of the window-close-to-visible latency
        // (docs/benchmarks.md).
        let flushed = producer.flush(deadline.saturating_duration_since(Instant::now()));
        let outcome = producer.context().outcome();
        if outcome.delivered == sent {
            return Ok(());
        }
        producer.purge(PurgeConfig::default().queue().inflight());
        // Deliver the purge reports now, so they are not counted against the next window.
        producer.poll(Duration::ZERO);
        Err(match (outcome.first_error, flushed) {
            (Some(e), _) => classify(&e),
            (None, Err(e)) => SinkError::Unavailable {
                sink: NAME,
                reason: format!(
                    "{} of {} messages delivered before the timeout ({e})",
                    outcome.delivered, sent
                ),
            },
            (None, Ok(())) => SinkError::Unavailable {
                sink: NAME,
                reason: format!("{} of {} messages delivered", outcome.delivered, sent),
            },
        })
    }
}

impl flowplane_engine::Sink for KafkaSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send(&mut self, batch: &WindowBatch) -> Result<(), SinkError> {
        if self.last_topic_attempt.is_none() {
            // First send: on the sink's own thread, so a broker that is slow to answer never
            // delays the start of the data plane.
            self.ensure_topics();
        }
        let result = self.write(batch);
        let Err(error) = &result else {
            return result;
        };

        // A fatal producer error (idempotence state lost) needs a new producer.
        if let Some(p) = &self.producer
            && let Some((code, reason)) = p.client().fatal_error()
        {
            tracing::info!(sink = NAME, ?code, %reason, "Kafka producer failed; making a new one.");
            self.producer = None;
        }
        if self
            .last_topic_attempt
            .is_none_or(|t| t.elapsed() >= TOPIC_RETRY)
        {
            self.ensure_topics();
        }
        if let Some(suppressed) = self.warn.allow(Instant::now()) {
            tracing::warn!(
                sink = NAME,
                window_start = batch.window_start,
                suppressed,
                %error,
                "Kafka write failed."
            );
        }
        result
    }
}

/// The aggregate document of one key of one window.
pub fn aggregate_doc(
    dimension: &str,
    entry: &AggEntry,
    window_start: u64,
    instance: &str,
) -> Value {
    let mut doc = Map::new();
    for (name, value) in &entry.fields {
        let v = match value {
            KeyValue::Ip(ip) => Value::String(ip.to_string()),
            KeyValue::Num(n) => Value::from(*n),
        };
        doc.insert((*name).to_owned(), v);
    }
    // Fixed fields after the key fields: no key field name equals one of them, and if one ever
    // did, the fixed field would win.
    fill_common(&mut doc, dimension, &entry.key, window_start, instance);
    fill_totals(&mut doc, &entry.totals);
    doc.insert("overflow".to_owned(), Value::Bool(false));
    Value::Object(doc)
}

/// The document of a dimension's overflow totals in one window (key [`OVERFLOW_KEY`]).
pub fn overflow_doc(
    dimension: &str,
    overflow: &Totals,
    window_start: u64,
    instance: &str,
) -> Value {
    let mut doc = Map::new();
    fill_common(&mut doc, dimension, OVERFLOW_KEY, window_start, instance);
    fill_totals(&mut doc, overflow);
    doc.insert("overflow".to_owned(), Value::Bool(true));
    Value::Object(doc)
}

/// The document of one alert.
pub fn alert_doc(alert: &Alert, instance: &str) -> Value {
    let mut doc = Map::new();
    fill_common(
        &mut doc,
        &alert.dimension,
        &alert.key,
        alert.window_start,
        instance,
    );
    for (name, v) in [
        ("value", alert.value),
        ("mean", alert.mean),
        ("stddev", alert.stddev),
        ("score", alert.score),
        ("threshold", alert.threshold),
    ] {
        // JSON has no NaN or infinity: those become null.
        doc.insert(name.to_owned(), json!(v));
    }
    Value::Object(doc)
}

/// The message key of a document: `dimension|key`.
pub fn message_key(dimension: &str, key: &str) -> String {
    format!("{dimension}|{key}")
}

/// The deterministic document id: `dimension|key|window_start|instance`.
pub fn doc_id(dimension: &str, key: &str, window_start: u64, instance: &str) -> String {
    format!("{dimension}|{key}|{window_start}|{instance}")
}

/// The document of one interface counter sample: flat, one field per counter, rates and
/// utilisation `null` when flowplane had no previous sample of the interface to compute them.
pub fn counters_doc(c: &InterfaceCounters, instance: &str) -> Value {
    let r = &c.record;
    let mut doc = Map::new();
    let mut put = |name: &str, v: Value| {
        doc.insert(name.to_owned(), v);
    };
    put("@timestamp", Value::String(crate::iso8601_ms(r.time_ms)));
    put("time_ms", Value::from(r.time_ms));
    put("agent", Value::String(r.agent_ip().to_string()));
    put("exporter", Value::String(r.exporter_ip().to_string()));
    put("exporter_port", Value::from(r.exporter_port));
    put("sub_agent_id", Value::from(r.sub_agent_id));
    put("uptime_ms", Value::from(r.uptime_ms));
    put("sample_sequence", Value::from(r.sample_sequence));
    put("source_id_type", Value::from(r.source_id_type));
    put("source_id_index", Value::from(r.source_id_index));
    put("has_generic", Value::Bool(r.has_generic != 0));
    put("has_ethernet", Value::Bool(r.has_ethernet != 0));
    put("if_index", Value::from(r.if_index));
    put("if_type", Value::from(r.if_type));
    put("if_speed", Value::from(r.if_speed));
    put("if_direction", Value::from(r.if_direction));
    put("if_status", Value::from(r.if_status));
    put("in_octets", Value::from(r.in_octets));
    put("out_octets", Value::from(r.out_octets));
    for (name, v) in counter_fields(r) {
        put(name, Value::from(v));
    }
    // JSON has no NaN or infinity: `json!` makes those null, like a missing value.
    put("interval_secs", json!(c.interval_secs));
    put("in_bps", json!(c.in_bps));
    put("out_bps", json!(c.out_bps));
    put("utilisation", json!(c.utilisation));
    put("instance", Value::String(instance.to_owned()));
    put("id", Value::String(counters_doc_id(c)));
    Value::Object(doc)
}

/// The 32-bit generic and Ethernet counters of a sample, by document field name.
fn counter_fields(r: &CounterRecord) -> [(&'static str, u32); 25] {
    [
        ("in_unicast_pkts", r.in_unicast_pkts),
        ("in_multicast_pkts", r.in_multicast_pkts),
        ("in_broadcast_pkts", r.in_broadcast_pkts),
        ("in_discards", r.in_discards),
        ("in_errors", r.in_errors),
        ("in_unknown_protos", r.in_unknown_protos),
        ("out_unicast_pkts", r.out_unicast_pkts),
        ("out_multicast_pkts", r.out_multicast_pkts),
        ("out_broadcast_pkts", r.out_broadcast_pkts),
        ("out_discards", r.out_discards),
        ("out_errors", r.out_errors),
        ("promiscuous_mode", r.promiscuous_mode),
        ("dot3_alignment_errors", r.dot3_alignment_errors),
        ("dot3_fcs_errors", r.dot3_fcs_errors),
        (
            "dot3_single_collision_frames",
            r.dot3_single_collision_frames,
        ),
        (
            "dot3_multiple_collision_frames",
            r.dot3_multiple_collision_frames,
        ),
        ("dot3_sqe_test_errors", r.dot3_sqe_test_errors),
        ("dot3_deferred_transmissions", r.dot3_deferred_transmissions),
        ("dot3_late_collisions", r.dot3_late_collisions),
        ("dot3_excessive_collisions", r.dot3_excessive_collisions),
        (
            "dot3_internal_mac_transmit_errors",
            r.dot3_internal_mac_transmit_errors,
        ),
        ("dot3_carrier_sense_errors", r.dot3_carrier_sense_errors),
        ("dot3_frame_too_longs", r.dot3_frame_too_longs),
        (
            "dot3_internal_mac_receive_errors",
            r.dot3_internal_mac_receive_errors,
        ),
        ("dot3_symbol_errors", r.dot3_symbol_errors),
    ]
}

/// The message key of a counter sample: `agent|if_index` (all samples of one interface land in
/// one partition, in order).
pub fn counters_key(c: &InterfaceCounters) -> String {
    format!("{}|{}", c.record.agent_ip(), c.record.if_index)
}

/// The deterministic id of a counter sample's document:
/// `agent|sub_agent_id|if_index|sample_sequence|uptime_ms`. It names the sample as the agent
/// sent it, so a resend replaces the first copy, and so does the same datagram received by two
/// flowplane instances (a counter sample is a reading, not something to add up).
pub fn counters_doc_id(c: &InterfaceCounters) -> String {
    let r = &c.record;
    format!(
        "{}|{}|{}|{}|{}",
        r.agent_ip(),
        r.sub_agent_id,
        r.if_index,
        r.sample_sequence,
        r.uptime_ms
    )
}

/// The `key` of a dimension's overflow document.
pub const OVERFLOW_KEY: &str = "__overflow__";

/// Waits for the brokers' metadata, so a test or a tool can tell whether Kafka answers.
///
/// # Errors
///
/// The client's error when the brokers do not answer within `timeout`.
pub fn probe(config: &KafkaSinkConfig, timeout: Duration) -> Result<(), KafkaError> {
    let p: BaseProducer = config.client_config().create()?;
    p.client().fetch_metadata(None, timeout).map(|_| ())
}

fn fill_common(doc: &mut Map<String, Value>, dim: &str, key: &str, window: u64, instance: &str) {
    doc.insert(
        "@timestamp".to_owned(),
        Value::String(crate::iso8601(window)),
    );
    doc.insert("window_start".to_owned(), Value::from(window));
    doc.insert("dimension".to_owned(), Value::String(dim.to_owned()));
    doc.insert("key".to_owned(), Value::String(key.to_owned()));
    doc.insert("instance".to_owned(), Value::String(instance.to_owned()));
    doc.insert(
        "id".to_owned(),
        Value::String(doc_id(dim, key, window, instance)),
    );
}

fn fill_totals(doc: &mut Map<String, Value>, t: &Totals) {
    for (name, v) in [
        ("bytes", t.bytes),
        ("packets", t.packets),
        ("flows", t.flows),
        ("raw_bytes", t.raw_bytes),
        ("raw_packets", t.raw_packets),
    ] {
        doc.insert(name.to_owned(), Value::from(v));
    }
}

/// Which of the sink's topics a [`Message`] goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// `aggregates_topic`: per-key and overflow documents.
    Aggregates,
    /// `alerts_topic`: Z-score alerts.
    Alerts,
    /// `counters_topic`: interface counter samples.
    Counters,
}

/// One message to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Destination topic.
    pub topic: Topic,
    /// Message key (partitioning).
    pub key: String,
    /// JSON document.
    pub payload: String,
}

/// Every message of a window: each key's aggregate, each nonzero overflow, each alert, each
/// interface counter sample. This is everything [`KafkaSink`] does for a window except
/// producing; `instance` names the writer in the documents. A convenience over [`Encoder`],
/// which the sink uses (and keeps from window to window).
pub fn encode(batch: &WindowBatch, instance: &str) -> Vec<Message> {
    let mut encoder = Encoder::default();
    encoder.encode(batch, instance);
    encoder
        .messages()
        .map(|m| Message {
            topic: m.topic,
            // Keys and documents are written from `&str`s and ASCII only: valid UTF-8.
            key: String::from_utf8_lossy(m.key).into_owned(),
            payload: String::from_utf8_lossy(m.payload).into_owned(),
        })
        .collect()
}

/// The messages of one window, encoded into one buffer that lives from window to window: every
/// message key and JSON document back to back, and where each starts and ends. Encoding a
/// window clears the buffer and reuses its memory, so a steady stream of windows allocates
/// nothing once the buffer has grown to the largest window (and touches no fresh pages).
///
/// The documents are the ones [`aggregate_doc`], [`overflow_doc`], [`alert_doc`] and
/// [`counters_doc`] build, serialized as `serde_json` does (fields in the alphabetical order of
/// its map), byte for byte, but written directly: no `Value`, no allocation per field.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
    spans: Vec<Span>,
    /// The aggregate document layout of the last dimension's key fields.
    plan: Plan,
    /// The overflow document layout (no key fields), made once.
    overflow_plan: Plan,
}

/// One encoded message, borrowed from an [`Encoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRef<'a> {
    /// Destination topic.
    pub topic: Topic,
    /// Message key (partitioning).
    pub key: &'a [u8],
    /// JSON document.
    pub payload: &'a [u8],
}

impl Encoder {
    /// Encodes every message of `batch` (see [`encode`]), replacing what the encoder held.
    pub fn encode(&mut self, batch: &WindowBatch, instance: &str) {
        self.buf.clear();
        self.spans.clear();
        let w = batch.window_start;
        let mut text = WindowText::new(w, instance);

        for dim in &batch.dimensions {
            text.set_dimension(&dim.dimension);
            for e in &dim.entries {
                if !self.plan.fits(&e.fields) {
                    self.plan = Plan::new(&e.fields);
                }
                let start = self.begin_key(&dim.dimension, &e.key);
                let key_end = self.buf.len();
                write_aggregate(&mut self.buf, &self.plan, &text, e, false);
                self.end(Topic::Aggregates, start, key_end);
            }
            if dim.overflow != Totals::default() {
                if self.overflow_plan.slots.is_empty() {
                    self.overflow_plan = Plan::new(&[]);
                }
                let start = self.begin_key(&dim.dimension, OVERFLOW_KEY);
                let key_end = self.buf.len();
                let e = AggEntry {
                    key: String::new(),
                    fields: Vec::new(),
                    totals: dim.overflow,
                };
                write_aggregate(&mut self.buf, &self.overflow_plan, &text, &e, true);
                self.end(Topic::Aggregates, start, key_end);
            }
        }
        for a in &batch.alerts {
            let start = self.begin_key(&a.dimension, &a.key);
            let key_end = self.buf.len();
            write_alert(&mut self.buf, a, instance);
            self.end(Topic::Alerts, start, key_end);
        }
        for c in &batch.counters {
            let start = self.buf.len();
            self.buf.extend_from_slice(counters_key(c).as_bytes());
            let key_end = self.buf.len();
            write_counters(&mut self.buf, c, instance);
            self.end(Topic::Counters, start, key_end);
        }
    }

    /// The messages of the last [`encode`](Self::encode), in order: aggregates (each
    /// dimension's keys, then its overflow), alerts, counter samples.
    pub fn messages(&self) -> impl ExactSizeIterator<Item = MessageRef<'_>> {
        self.spans.iter().map(|s| MessageRef {
            topic: s.topic,
            key: &self.buf[s.start..s.key_end],
            payload: &self.buf[s.key_end..s.end],
        })
    }

    /// How many messages the last [`encode`](Self::encode) made.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the last [`encode`](Self::encode) made no message.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Writes the message key `dimension|key`; returns where it starts.
    fn begin_key(&mut self, dimension: &str, key: &str) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(dimension.as_bytes());
        self.buf.push(b'|');
        self.buf.extend_from_slice(key.as_bytes());
        start
    }

    fn end(&mut self, topic: Topic, start: usize, key_end: usize) {
        self.spans.push(Span {
            topic,
            start,
            key_end,
            end: self.buf.len(),
        });
    }
}

/// Where one message lies in [`Encoder::buf`]: key, then document.
#[derive(Clone, Copy, Debug)]
struct Span {
    topic: Topic,
    start: usize,
    key_end: usize,
    end: usize,
}

/// The text every aggregate document of one dimension in one window shares, escaped once.
struct WindowText {
    timestamp: String,
    window: String,
    instance: Vec<u8>,
    dimension: Vec<u8>,
}

impl WindowText {
    fn new(window_start: u64, instance: &str) -> Self {
        let mut escaped = Vec::new();
        crate::json::escaped(&mut escaped, instance);
        Self {
            timestamp: crate::iso8601(window_start),
            window: window_start.to_string(),
            instance: escaped,
            dimension: Vec::new(),
        }
    }

    fn set_dimension(&mut self, dimension: &str) {
        self.dimension.clear();
        crate::json::escaped(&mut self.dimension, dimension);
    }
}

/// The fields of an aggregate document in the order `serde_json`'s map writes them (sorted by
/// name), each with its `"name":` already written, for one list of key field names.
#[derive(Debug, Default)]
struct Plan {
    names: Vec<&'static str>,
    slots: Vec<(Vec<u8>, Slot)>,
}

/// Where the value of one field of an aggregate document comes from.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Bytes,
    Dimension,
    /// The key field at this index of [`AggEntry::fields`].
    Field(usize),
    Flows,
    Id,
    Instance,
    Key,
    Overflow,
    Packets,
    RawBytes,
    RawPackets,
    Timestamp,
    WindowStart,
}

impl Plan {
    fn new(fields: &[(&'static str, KeyValue)]) -> Self {
        // The same rules as the map `aggregate_doc` fills: a later key field of the same name
        // replaces an earlier one, and a fixed field replaces a key field of its name.
        let mut order: BTreeMap<&str, Slot> = BTreeMap::new();
        for (i, (name, _)) in fields.iter().enumerate() {
            order.insert(name, Slot::Field(i));
        }
        for (name, slot) in [
            ("@timestamp", Slot::Timestamp),
            ("window_start", Slot::WindowStart),
            ("dimension", Slot::Dimension),
            ("key", Slot::Key),
            ("instance", Slot::Instance),
            ("id", Slot::Id),
            ("bytes", Slot::Bytes),
            ("packets", Slot::Packets),
            ("flows", Slot::Flows),
            ("raw_bytes", Slot::RawBytes),
            ("raw_packets", Slot::RawPackets),
            ("overflow", Slot::Overflow),
        ] {
            order.insert(name, slot);
        }
        let slots = order
            .into_iter()
            .map(|(name, slot)| {
                let mut head = Vec::with_capacity(name.len() + 3);
                crate::json::string(&mut head, name);
                head.push(b':');
                (head, slot)
            })
            .collect();
        Self {
            names: fields.iter().map(|(name, _)| *name).collect(),
            slots,
        }
    }

    /// Whether the plan was made for these key field names (every entry of a dimension has
    /// the same ones, so this holds for all but a dimension's first).
    fn fits(&self, fields: &[(&'static str, KeyValue)]) -> bool {
        !self.slots.is_empty()
            && self.names.len() == fields.len()
            && self.names.iter().zip(fields).all(|(a, (b, _))| a == b)
    }
}

/// Writes the document [`aggregate_doc`] (or, with `overflow`, [`overflow_doc`]) builds.
fn write_aggregate(
    out: &mut Vec<u8>,
    plan: &Plan,
    text: &WindowText,
    e: &AggEntry,
    overflow: bool,
) {
    use crate::json;

    let key = if overflow {
        OVERFLOW_KEY
    } else {
        e.key.as_str()
    };
    let t = &e.totals;
    out.push(b'{');
    for (i, (head, slot)) in plan.slots.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(head);
        match *slot {
            Slot::Bytes => json::uint(out, t.bytes),
            Slot::Dimension => {
                out.push(b'"');
                out.extend_from_slice(&text.dimension);
                out.push(b'"');
            }
            Slot::Field(i) => match e.fields[i].1 {
                KeyValue::Ip(ip) => json::ip(out, ip),
                KeyValue::Num(n) => json::uint(out, n),
            },
            Slot::Flows => json::uint(out, t.flows),
            Slot::Id => {
                // `doc_id`, escaped part by part.
                out.push(b'"');
                out.extend_from_slice(&text.dimension);
                out.push(b'|');
                json::escaped(out, key);
                out.push(b'|');
                out.extend_from_slice(text.window.as_bytes());
                out.push(b'|');
                out.extend_from_slice(&text.instance);
                out.push(b'"');
            }
            Slot::Instance => {
                out.push(b'"');
                out.extend_from_slice(&text.instance);
                out.push(b'"');
            }
            Slot::Key => json::string(out, key),
            Slot::Overflow => json::boolean(out, overflow),
            Slot::Packets => json::uint(out, t.packets),
            Slot::RawBytes => json::uint(out, t.raw_bytes),
            Slot::RawPackets => json::uint(out, t.raw_packets),
            Slot::Timestamp => json::string(out, &text.timestamp),
            Slot::WindowStart => out.extend_from_slice(text.window.as_bytes()),
        }
    }
    out.push(b'}');
}

/// A value of an alert or counter sample document.
#[derive(Clone, Copy)]
enum Field<'a> {
    Bool(bool),
    Float(Option<f64>),
    Ip(std::net::IpAddr),
    Str(&'a str),
    Uint(u64),
}

/// Writes an object whose fields are given in any order, in `serde_json`'s map order (sorted by
/// name; of two fields with one name, the later one). Alerts and counter samples are a few per
/// window: sorting their fields each time costs nothing that matters.
fn write_object(out: &mut Vec<u8>, fields: &mut [(&str, Field<'_>)]) {
    use crate::json;

    // Stable, so that of equal names the later stays last.
    fields.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    let mut first = true;
    for (i, (name, value)) in fields.iter().enumerate() {
        if fields.get(i + 1).is_some_and(|next| next.0 == *name) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        json::string(out, name);
        out.push(b':');
        match *value {
            Field::Bool(v) => json::boolean(out, v),
            Field::Float(v) => json::float(out, v),
            Field::Ip(ip) => json::ip(out, ip),
            Field::Str(s) => json::string(out, s),
            Field::Uint(v) => json::uint(out, v),
        }
    }
    out.push(b'}');
}

/// Writes the document [`alert_doc`] builds.
fn write_alert(out: &mut Vec<u8>, a: &Alert, instance: &str) {
    let timestamp = crate::iso8601(a.window_start);
    let id = doc_id(&a.dimension, &a.key, a.window_start, instance);
    write_object(
        out,
        &mut [
            ("@timestamp", Field::Str(&timestamp)),
            ("window_start", Field::Uint(a.window_start)),
            ("dimension", Field::Str(&a.dimension)),
            ("key", Field::Str(&a.key)),
            ("instance", Field::Str(instance)),
            ("id", Field::Str(&id)),
            ("value", Field::Float(Some(a.value))),
            ("mean", Field::Float(Some(a.mean))),
            ("stddev", Field::Float(Some(a.stddev))),
            ("score", Field::Float(Some(a.score))),
            ("threshold", Field::Float(Some(a.threshold))),
        ],
    );
}

/// Writes the document [`counters_doc`] builds.
fn write_counters(out: &mut Vec<u8>, c: &InterfaceCounters, instance: &str) {
    let r = &c.record;
    let timestamp = crate::iso8601_ms(r.time_ms);
    let id = counters_doc_id(c);
    let mut fields = Vec::with_capacity(56);
    fields.extend([
        ("@timestamp", Field::Str(&timestamp)),
        ("time_ms", Field::Uint(r.time_ms)),
        ("agent", Field::Ip(r.agent_ip())),
        ("exporter", Field::Ip(r.exporter_ip())),
        ("exporter_port", Field::Uint(r.exporter_port.into())),
        ("sub_agent_id", Field::Uint(r.sub_agent_id.into())),
        ("uptime_ms", Field::Uint(r.uptime_ms.into())),
        ("sample_sequence", Field::Uint(r.sample_sequence.into())),
        ("source_id_type", Field::Uint(r.source_id_type.into())),
        ("source_id_index", Field::Uint(r.source_id_index.into())),
        ("has_generic", Field::Bool(r.has_generic != 0)),
        ("has_ethernet", Field::Bool(r.has_ethernet != 0)),
        ("if_index", Field::Uint(r.if_index.into())),
        ("if_type", Field::Uint(r.if_type.into())),
        ("if_speed", Field::Uint(r.if_speed)),
        ("if_direction", Field::Uint(r.if_direction.into())),
        ("if_status", Field::Uint(r.if_status.into())),
        ("in_octets", Field::Uint(r.in_octets)),
        ("out_octets", Field::Uint(r.out_octets)),
    ]);
    fields.extend(
        counter_fields(r)
            .into_iter()
            .map(|(name, v)| (name, Field::Uint(v.into()))),
    );
    fields.extend([
        ("interval_secs", Field::Float(c.interval_secs)),
        ("in_bps", Field::Float(c.in_bps)),
        ("out_bps", Field::Float(c.out_bps)),
        ("utilisation", Field::Float(c.utilisation)),
        ("instance", Field::Str(instance)),
        ("id", Field::Str(&id)),
    ]);
    write_object(out, &mut fields);
}

/// Delivery reports of the current `send`: messages carry the generation they were sent in,
/// and reports of an older generation (purged leftovers) are ignored.
struct Deliveries {
    state: Mutex<DeliveryState>,
    /// librdkafka reports a broker that is down many times a second; one line per interval.
    client_log: Mutex<RateLimit>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            client_log: Mutex::new(RateLimit::new(WARN_INTERVAL)),
        }
    }
}

#[derive(Default)]
struct DeliveryState {
    generation: usize,
    delivered: usize,
    first_error: Option<KafkaError>,
}

struct Outcome {
    delivered: usize,
    first_error: Option<KafkaError>,
}

impl Deliveries {
    /// Starts counting a new send; returns its generation.
    fn start(&self) -> usize {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.generation = s.generation.wrapping_add(1);
        s.delivered = 0;
        s.first_error = None;
        s.generation
    }

    fn outcome(&self) -> Outcome {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Outcome {
            delivered: s.delivered,
            first_error: s.first_error.take(),
        }
    }
}

impl Deliveries {
    /// Logs a client problem at warn, at most once per interval (with the count held back).
    fn limited(&self, what: &str) {
        let allowed = self
            .client_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow(Instant::now());
        if let Some(suppressed) = allowed {
            tracing::warn!(sink = NAME, suppressed, "Kafka client: {what}");
        }
    }
}

/// librdkafka's own log and error callbacks, into flowplane's log: errors rate-limited at warn
/// (the failed sends say the rest), the chatter at debug and trace.
impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => self.limited(&format!("{fac}: {log_message}")),
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::debug!(sink = NAME, facility = fac, "librdkafka: {log_message}");
            }
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::trace!(sink = NAME, facility = fac, "librdkafka: {log_message}");
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.limited(&format!("{error}: {reason}"));
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, generation: usize) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if generation != s.generation {
            return;
        }
        match result {
            Ok(_) => s.delivered += 1,
            Err((e, _)) => {
                if s.first_error.is_none() {
                    s.first_error = Some(e.clone());
                }
            }
        }
    }
}

/// Creates the three topics; an existing topic is fine.
fn create_topics(config: &KafkaSinkConfig) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| format!("cannot create the admin client: {e}"))?;
    let topics = [
        NewTopic::new(
            &config.aggregates_topic,
            config.topic_partitions,
            TopicReplication::Fixed(config.topic_replication),
        ),
        NewTopic::new(
            &config.alerts_topic,
            config.topic_partitions,
            TopicReplication::Fixed(config.topic_replication),
        ),
        NewTopic::new(
            &config.counters_topic,
            config.topic_partitions,
            TopicReplication::Fixed(config.topic_replication),
        ),
    ];
    let options = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let results = block_on_until(
        admin.create_topics(&topics, &options),
        Instant::now() + ADMIN_TIMEOUT + FLUSH_MARGIN,
    )
    .ok_or("no answer in time")?
    .map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(sink = NAME, %topic, "Created Kafka topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("topic {topic}: {code}")),
        }
    }
    Ok(())
}

/// Runs a future on this thread until it completes or the deadline passes. The admin client's
/// futures are completed by librdkafka's own thread, so parking is all it takes.
fn block_on_until<F: Future>(f: F, deadline: Instant) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left);
    }
}

fn classify(e: &KafkaError) -> SinkError {
    let code = e.rdkafka_error_code();
    let rejected = matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
        )
    );
    if rejected {
        SinkError::Rejected {
            sink: NAME,
            reason: e.to_string(),
        }
    } else {
        SinkError::Unavailable {
            sink: NAME,
            reason: e.to_string(),
        }
    }
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
fn topic_name(setting: &str, name: &str) -> Result<(), SinkConfigError> {
    let ok = (1..=249).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(SinkConfigError::new(
            setting,
            format!("{name:?} is not a topic name (1 to 249 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

fn range(setting: &str, v: impl Into<i128>, min: i128, max: i128) -> Result<(), SinkConfigError> {
    let v = v.into();
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(SinkConfigError::new(
            setting,
            format!("{v} is outside the allowed range {min} to {max}"),
        ))
    }
}

const NAME: &str = "kafka";

/// How long topic creation may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Added to `message_timeout_ms` for the flush, so that librdkafka's own timeout fires first.
const FLUSH_MARGIN: Duration = Duration::from_secs(1);

/// How often topic creation is retried after failed sends while it has not succeeded.
const TOPIC_RETRY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use flowplane_engine::DimensionWindow;

    use super::*;

    fn entry() -> AggEntry {
        AggEntry {
            key: "10.0.0.1|443|6".to_owned(),
            fields: vec![
                (
                    "src_ip",
                    KeyValue::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
                ),
                ("dst_port", KeyValue::Num(443)),
                ("protocol", KeyValue::Num(6)),
            ],
            totals: Totals {
                bytes: 1_500,
                packets: 3,
                flows: 1,
                raw_bytes: 150,
                raw_packets: 1,
            },
        }
    }

    #[test]
    fn aggregate_documents_are_flat() {
        let doc = aggregate_doc("src_ip+dst_port+protocol", &entry(), 1_700_000_000, "a1");
        assert_eq!(
            doc,
            json!({
                "@timestamp": "2023-11-14T22:13:20Z",
                "window_start": 1_700_000_000u64,
                "dimension": "src_ip+dst_port+protocol",
                "key": "10.0.0.1|443|6",
                "src_ip": "10.0.0.1",
                "dst_port": 443,
                "protocol": 6,
                "bytes": 1_500,
                "packets": 3,
                "flows": 1,
                "raw_bytes": 150,
                "raw_packets": 1,
                "overflow": false,
                "instance": "a1",
                "id": "src_ip+dst_port+protocol|10.0.0.1|443|6|1700000000|a1",
            })
        );
    }

    #[test]
    fn overflow_and_alert_documents() {
        let t = Totals {
            bytes: 9,
            ..Totals::default()
        };
        let doc = overflow_doc("dst_port", &t, 60, "a1");
        assert_eq!(doc["key"], "__overflow__");
        assert_eq!(doc["overflow"], true);
        assert_eq!(doc["bytes"], 9);
        assert_eq!(doc["@timestamp"], "1970-01-01T00:01:00Z");

        let alert = Alert {
            dimension: Arc::from("dst_port"),
            key: "22".to_owned(),
            window_start: 60,
            value: 1e6,
            mean: 10.0,
            stddev: f64::NAN,
            score: 7.5,
            threshold: 4.0,
        };
        let doc = alert_doc(&alert, "a1");
        assert_eq!(doc["score"], 7.5);
        assert_eq!(doc["stddev"], Value::Null);
        assert_eq!(doc["id"], "dst_port|22|60|a1");
    }

    #[test]
    fn encodes_every_key_overflow_and_alert_with_dimension_prefixed_keys() {
        let batch = WindowBatch {
            window_start: 60,
            closed_unix_ms: 0,
            dimensions: vec![
                DimensionWindow {
                    dimension: Arc::from("src_ip+dst_port+protocol"),
                    entries: vec![entry(), entry()],
                    overflow: Totals {
                        flows: 1,
                        ..Totals::default()
                    },
                },
                DimensionWindow {
                    dimension: Arc::from("dst_port"),
                    entries: vec![],
                    overflow: Totals::default(),
                },
            ],
            alerts: vec![],
            counters: Vec::new(),
        };
        let m = encode(&batch, "a1");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].key, "src_ip+dst_port+protocol|10.0.0.1|443|6");
        assert_eq!(m[2].key, "src_ip+dst_port+protocol|__overflow__");
        assert!(m.iter().all(|m| m.topic == Topic::Aggregates));
    }

    fn sample() -> InterfaceCounters {
        let mut agent = [0u8; 16];
        agent[10] = 0xff;
        agent[11] = 0xff;
        agent[12..].copy_from_slice(&[192, 0, 2, 1]);
        let record = CounterRecord {
            agent,
            exporter: agent,
            exporter_port: 50_000,
            if_speed: 1_000_000_000,
            in_octets: 5_000_000_000,
            out_octets: 42,
            time_ms: 1_700_000_000_123,
            sub_agent_id: 3,
            uptime_ms: 9_000,
            sample_sequence: 77,
            source_id_index: 7,
            if_index: 7,
            if_type: 6,
            if_direction: 1,
            if_status: 3,
            in_errors: 2,
            out_discards: 4,
            dot3_fcs_errors: 5,
            has_generic: 1,
            has_ethernet: 1,
            ..CounterRecord::default()
        };
        InterfaceCounters {
            record,
            interval_secs: Some(20.0),
            in_bps: Some(8e6),
            out_bps: Some(1e6),
            utilisation: None,
        }
    }

    #[test]
    fn counter_documents_are_flat_with_every_counter() {
        let doc = counters_doc(&sample(), "a1");
        assert_eq!(doc["@timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(doc["time_ms"], 1_700_000_000_123u64);
        assert_eq!(doc["agent"], "192.0.2.1");
        assert_eq!(doc["sub_agent_id"], 3);
        assert_eq!(doc["source_id_type"], 0);
        assert_eq!(doc["source_id_index"], 7);
        assert_eq!(doc["if_index"], 7);
        assert_eq!(doc["if_type"], 6);
        assert_eq!(doc["if_speed"], 1_000_000_000u64);
        assert_eq!(doc["if_direction"], 1);
        assert_eq!(doc["if_status"], 3);
        assert_eq!(doc["in_octets"], 5_000_000_000u64);
        assert_eq!(doc["out_octets"], 42);
        assert_eq!(doc["in_errors"], 2);
        assert_eq!(doc["out_discards"], 4);
        assert_eq!(doc["dot3_fcs_errors"], 5);
        assert_eq!(doc["dot3_symbol_errors"], 0);
        assert_eq!(doc["has_generic"], true);
        assert_eq!(doc["interval_secs"], 20.0);
        assert_eq!(doc["in_bps"], 8e6);
        assert_eq!(doc["out_bps"], 1e6);
        assert_eq!(doc["utilisation"], Value::Null);
        assert_eq!(doc["instance"], "a1");
        assert_eq!(doc["id"], "192.0.2.1|3|7|77|9000");
        let obj = doc.as_object().unwrap();
        assert!(obj.values().all(|v| !v.is_object() && !v.is_array()));
        // 19 identity and cumulative fields, 25 further counters, 4 rates, instance and id.
        assert_eq!(obj.len(), 19 + 25 + 4 + 2, "{obj:?}");

        let mut c = sample();
        c.utilisation = Some(0.25);
        c.in_bps = Some(f64::NAN);
        let doc = counters_doc(&c, "a1");
        assert_eq!(doc["utilisation"], 0.25);
        assert_eq!(doc["in_bps"], Value::Null);
    }

    #[test]
    fn counter_samples_go_to_their_topic_keyed_by_interface() {
        let batch = WindowBatch {
            window_start: 1_700_000_000,
            counters: vec![sample(), sample()],
            ..WindowBatch::default()
        };
        let m = encode(&batch, "a1");
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|m| m.topic == Topic::Counters));
        assert_eq!(m[0].key, "192.0.2.1|7");
        let doc: Value = serde_json::from_str(&m[0].payload).unwrap();
        assert_eq!(doc["if_index"], 7);
    }

    /// The direct encoder must write exactly what `serde_json` writes for the documents the
    /// `*_doc` functions build: IPv4 and IPv6 key fields, key field names that sort among the
    /// fixed fields, overflow, alerts with NaN and infinities, counter samples with and
    /// without rates, and names and instances that need escaping.
    #[test]
    fn encoder_writes_what_serde_json_writes() {
        let v6 = |s: &str| KeyValue::Ip(s.parse().unwrap());
        let mut odd = entry();
        // A key field sharing a fixed field's name loses to it; a repeated one keeps its last.
        odd.fields.push(("bytes", KeyValue::Num(1)));
        odd.fields.push(("dst_port", KeyValue::Num(80)));
        let batch = WindowBatch {
            window_start: 1_767_225_600,
            closed_unix_ms: 0,
            dimensions: vec![
                DimensionWindow {
                    dimension: Arc::from("src_ip+dst_port+protocol"),
                    entries: vec![entry(), entry(), odd],
                    overflow: Totals {
                        bytes: 7,
                        packets: 1,
                        flows: 1,
                        raw_bytes: 7,
                        raw_packets: 1,
                    },
                },
                DimensionWindow {
                    dimension: Arc::from("dst_ip"),
                    entries: ["2001:db8::1", "::ffff:192.0.2.1", "::"]
                        .iter()
                        .map(|a| AggEntry {
                            key: (*a).to_owned(),
                            fields: vec![("dst_ip", v6(a))],
                            totals: Totals {
                                bytes: u64::MAX,
                                ..Totals::default()
                            },
                        })
                        .collect(),
                    overflow: Totals::default(),
                },
                DimensionWindow {
                    dimension: Arc::from("we\"ird\u{1}\u{e9}/\t"),
                    entries: vec![AggEntry {
                        key: "k\"\\\n".to_owned(),
                        fields: vec![("aaa", KeyValue::Num(0)), ("zzz", KeyValue::Num(1))],
                        totals: Totals::default(),
                    }],
                    overflow: Totals {
                        flows: 3,
                        ..Totals::default()
                    },
                },
            ],
            alerts: [1e6, f64::NAN, f64::INFINITY, 0.1, 1e-7, 1e21]
                .iter()
                .map(|&v| Alert {
                    dimension: Arc::from("dst_port"),
                    key: "22".to_owned(),
                    window_start: 1_767_225_600,
                    value: v,
                    mean: 10.5,
                    stddev: -v,
                    score: f64::NEG_INFINITY,
                    threshold: 4.0,
                })
                .collect(),
            counters: {
                let mut bare = sample();
                bare.in_bps = None;
                bare.utilisation = Some(f64::NAN);
                bare.record.agent = "2001:db8::7"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets();
                vec![sample(), bare]
            },
        };
        for instance in ["a1", "host \"x\" \\ \u{7f}\u{1f}\u{1f600}"] {
            let mut expected = Vec::new();
            let w = batch.window_start;
            for dim in &batch.dimensions {
                for e in &dim.entries {
                    expected.push(aggregate_doc(&dim.dimension, e, w, instance));
                }
                if dim.overflow != Totals::default() {
                    expected.push(overflow_doc(&dim.dimension, &dim.overflow, w, instance));
                }
            }
            expected.extend(batch.alerts.iter().map(|a| alert_doc(a, instance)));
            expected.extend(batch.counters.iter().map(|c| counters_doc(c, instance)));

            // Twice through one encoder: a reused buffer writes the same.
            let mut encoder = Encoder::default();
            for _ in 0..2 {
                encoder.encode(&batch, instance);
                assert_eq!(encoder.len(), expected.len());
                for (m, doc) in encoder.messages().zip(&expected) {
                    let want = serde_json::to_string(doc).unwrap();
                    assert_eq!(String::from_utf8_lossy(m.payload), want);
                }
            }
            let keys: Vec<String> = encode(&batch, instance)
                .into_iter()
                .map(|m| m.key)
                .collect();
            assert_eq!(keys[3], "src_ip+dst_port+protocol|__overflow__");
            assert_eq!(keys[4], "dst_ip|2001:db8::1");
            assert_eq!(keys[keys.len() - 1], "2001:db8::7|7");
        }
    }

    #[test]
    fn validation_names_the_setting() {
        KafkaSinkConfig::default().validate().unwrap();
        let bad = |f: &dyn Fn(&mut KafkaSinkConfig)| {
            let mut c = KafkaSinkConfig::default();
            f(&mut c);
            c.validate().unwrap_err().setting
        };
        assert_eq!(bad(&|c| c.brokers = String::new()), "brokers");
        assert_eq!(bad(&|c| c.brokers = "host".into()), "brokers");
        assert_eq!(bad(&|c| c.brokers = "a:1,b:x".into()), "brokers");
        assert_eq!(
            bad(&|c| c.aggregates_topic = String::new()),
            "aggregates_topic"
        );
        assert_eq!(bad(&|c| c.alerts_topic = "a b".into()), "alerts_topic");
        assert_eq!(
            bad(&|c| c.alerts_topic = c.aggregates_topic.clone()),
            "alerts_topic"
        );
        assert_eq!(bad(&|c| c.counters_topic = "a/b".into()), "counters_topic");
        assert_eq!(
            bad(&|c| c.counters_topic = c.alerts_topic.clone()),
            "counters_topic"
        );
        assert_eq!(
            bad(&|c| c.counters_topic = c.aggregates_topic.clone()),
            "counters_topic"
        );
        assert_eq!(bad(&|c| c.message_timeout_ms = 0), "message_timeout_ms");
        assert_eq!(bad(&|c| c.topic_partitions = 0), "topic_partitions");
        assert_eq!(
            bad(&|c| {
                c.producer.insert("no.such.setting".into(), "1".into());
            }),
            "producer.no.such.setting"
        );
        let mut ok = KafkaSinkConfig::default();
        ok.producer.insert("acks".into(), "all".into());
        ok.validate().unwrap();

        // Combinations librdkafka only refuses when the producer is created.
        assert_eq!(
            bad(&|c| {
                c.linger_ms = 5_000;
                c.message_timeout_ms = 5_000;
            }),
            "linger_ms"
        );
        assert_eq!(
            bad(&|c| {
                c.producer.insert("acks".into(), "1".into());
            }),
            "producer.acks"
        );
        let mut ok = KafkaSinkConfig {
            idempotence: false,
            ..KafkaSinkConfig::default()
        };
        ok.producer.insert("acks".into(), "1".into());
        ok.validate().unwrap();
    }
}
