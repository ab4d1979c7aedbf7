//! `flowplane kafka-tail`: the last messages of a topic, to check what flowplane wrote to Kafka.
//!
//! Partitions are assigned explicitly (no consumer group): some Kafka-protocol brokers, tansu
//! among them, deliver nothing to a group subscription, and a debugging tool should not commit
//! offsets anyway.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flowplane::config::Config;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, clap::Args)]
pub(crate) struct KafkaTailArgs {
    /// Topic to read. Default: the aggregates topic of the configuration.
    #[arg(long, short)]
    topic: Option<String>,

    /// Messages to print: the newest N (of all partitions, in the order read).
    #[arg(short = 'n', long = "count", default_value_t = 10)]
    n: u64,

    /// Give up waiting for messages after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,

    /// Configuration file, for the broker addresses and topic names.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Prints up to `n` of the newest messages of the topic, one per line: the payload as is.
pub(crate) fn kafka_tail(args: &KafkaTailArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let brokers = config.kafka.sink.brokers.clone();
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| config.kafka.sink.aggregates_topic.clone());
    let timeout = Duration::from_secs(args.timeout_secs.max(1));

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "flowplane-kafka-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .with_context(|| format!("cannot create a Kafka client for {brokers}"))?;

    let metadata = consumer
        .fetch_metadata(Some(&topic), timeout)
        .with_context(|| format!("cannot reach the Kafka brokers at {brokers}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist on {brokers} (nothing written yet?)");
    }

    // Start each partition `n` messages before its end, then read to the end and keep the
    // last `n`. The end is found by reading, not from the high watermark alone: tansu reports a
    // watermark that counts record batches, not records, so it can lie far below the real end.
    let mut assignment = TopicPartitionList::new();
    let mut any = false;
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic, p, timeout)
            .with_context(|| format!("cannot read the offsets of {topic}/{p}"))?;
        let start = high
            .saturating_sub(i64::try_from(args.n).unwrap_or(i64::MAX))
            .max(low);
        any |= high > low;
        assignment
            .add_partition_offset(&topic, p, Offset::Offset(start))
            .context("cannot build the partition assignment")?;
    }
    if !any || args.n == 0 {
        eprintln!("kafka-tail: topic {topic} is empty");
        return Ok(ExitCode::SUCCESS);
    }
    consumer
        .assign(&assignment)
        .context("cannot assign the topic's partitions")?;

    let deadline = Instant::now() + timeout;
    let quiet = Duration::from_millis(1_500);
    let mut last: Option<Instant> = None;
    let mut kept: VecDeque<Vec<u8>> = VecDeque::new();
    while Instant::now() < deadline && last.is_none_or(|t| t.elapsed() < quiet) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.context("cannot read from Kafka")?;
        last = Some(Instant::now());
        if kept.len() as u64 == args.n {
            kept.pop_front();
        }
        kept.push_back(message.payload().unwrap_or_default().to_vec());
    }
    if kept.is_empty() {
        anyhow::bail!("read no message of {topic} before the timeout");
    }
    let mut out = io::stdout().lock();
    for payload in &kept {
        out.write_all(payload)
            .and_then(|()| out.write_all(b"\n"))
            .context("cannot write to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
}
