//! End to end for sFlow interface counters: a counter-sample capture of the corpus is replayed
//! (`flowplane replay`) into a running `flowplane run` with its own Valkey prefix and Kafka
//! topics, flowplane is stopped with SIGTERM, and then
//!
//! * the counters topic holds exactly one document per counter sample that tshark finds with a
//!   generic interface counters record, with the same `if_index`, `in_octets` and `out_octets`;
//! * the summary line's `counter_samples` is that count;
//! * Valkey lists every one of those interfaces (`P:ifs`, read with `flowplane top
//!   --interfaces`' query).
//!
//! Samples tshark shows without a generic record are not counted: in this capture those are
//! Host sFlow samples, which flowplane rightly ignores (see `corpus_sflow.rs`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flowplane_tests::instance::{Flowplane, counter, kafka_brokers, unix_ms, valkey_url};
use flowplane_tests::{env, tshark};

const CAPTURE: &str = "tcpdump/sflow_multiple_counter_30_pdus.pcap";

/// (agent, if_index, in_octets, out_octets) of one counter sample.
type Reading = (String, u64, u64, u64);

/// The counter samples with a generic interface counters record, according to tshark.
fn tshark_readings(capture: &std::path::Path) -> Result<Vec<Reading>> {
    let mut out = Vec::new();
    for frame in tshark::dissect_sflow(capture)? {
        let Some(d) = &frame.datagram else { continue };
        let agent = d
            .header
            .addr("sflow_245.agent")
            .or_else(|| d.header.addr("sflow_245.agent.v6"))
            .context("datagram without agent")?
            .to_string();
        for s in &d.samples {
            // Counter samples (2) and expanded counter samples (4) of the standard enterprise.
            if !matches!(s.format, Some(2 | 4)) {
                continue;
            }
            let Some(generic) = s
                .records
                .iter()
                .find(|r| r.enterprise == Some(0) && r.format == Some(1))
            else {
                continue;
            };
            let f = &generic.fields;
            let n = |name: &str| f.num(&[name]).with_context(|| format!("no {name}"));
            out.push((
                agent.clone(),
                n("sflow_245.ifindex")?,
                n("sflow_245.ifinoct")?,
                n("sflow_245.ifoutoct")?,
            ));
        }
    }
    Ok(out)
}

/// Every document of partition 0 of `topic`, reading until `want` arrived (tansu's high
/// watermark is not reliable), then a little longer to catch extras.
fn read_topic(topic: &str, want: usize) -> Result<Vec<serde_json::Value>> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", "flowplane-e2e-counters")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_until: Option<Instant> = None;
    while Instant::now() < deadline {
        if out.len() >= want {
            let q = *quiet_until.get_or_insert_with(|| Instant::now() + Duration::from_secs(2));
            if Instant::now() >= q {
                break;
            }
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        out.push(serde_json::from_slice(m.payload().unwrap_or_default())?);
    }
    Ok(out)
}

#[test]
fn sflow_counter_samples_reach_kafka_and_valkey() -> Result<()> {
    env::require_tool("tshark")?;
    let capture = flowplane_tests::corpus::file(&env::corpus_dir(), CAPTURE);
    let want = tshark_readings(&capture)?;
    ensure!(
        !want.is_empty(),
        "tshark found no counter samples in {CAPTURE}"
    );

    let dir = env::scratch_dir("e2e_sflow_counters")?;
    let tag = format!("ctr-{}-{}", std::process::id(), unix_ms());
    let counters_topic = format!("fpt.{tag}.counters");
    let prefix = format!("fpt:{tag}");
    let config = dir.join("flowplane.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[engine]
listen = ["127.0.0.1:0"]
workers = 1
pin_cores = false
dimensions = ["dst_port"]
stats_interval_secs = 1

[valkey]
url = "{url}"
key_prefix = "{prefix}"

[kafka]
brokers = "{brokers}"
aggregates_topic = "fpt.{tag}.aggregates"
alerts_topic = "fpt.{tag}.alerts"
counters_topic = "{counters_topic}"

[log]
level = "info"
"#,
            url = valkey_url(),
            brokers = kafka_brokers(),
        ),
    )?;
    let fp = Flowplane::start(&config)?;
    let bound = fp.bound;

    let replay = Command::new(env::flowplane_bin()?)
        .arg("replay")
        .arg(&capture)
        .arg("--to")
        .arg(bound.to_string())
        .args(["--rate", "1000"])
        .output()?;
    ensure!(
        replay.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    // Let the last datagrams be received before stopping.
    std::thread::sleep(Duration::from_millis(500));
    let (summary, _log) = fp.stop()?;

    // The summary counts every counter sample with interface counters.
    assert_eq!(
        counter(&summary, "counter_samples"),
        Some(want.len() as u64),
        "{summary}"
    );
    assert_eq!(
        counter(&summary, "counter_samples_dropped"),
        Some(0),
        "{summary}"
    );

    // Kafka: one document per sample, the same readings.
    let docs = read_topic(&counters_topic, want.len())?;
    let mut got: Vec<Reading> = docs
        .iter()
        .map(|d| {
            (
                d["agent"].as_str().unwrap_or_default().to_owned(),
                d["if_index"].as_u64().unwrap_or(u64::MAX),
                d["in_octets"].as_u64().unwrap_or(u64::MAX),
                d["out_octets"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let mut expected = want.clone();
    got.sort();
    expected.sort();
    assert_eq!(got.len(), expected.len(), "documents vs tshark samples");
    assert_eq!(got, expected);
    for d in &docs {
        ensure!(
            d["@timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 24)
        );
        ensure!(d["id"].as_str().is_some());
    }

    // Valkey: every interface is listed, and its latest reading is one tshark saw.
    let mut conn = redis::Client::open(valkey_url())?.get_connection()?;
    let seen: BTreeSet<String> = redis::cmd("SMEMBERS")
        .arg(format!("{prefix}:ifs"))
        .query(&mut conn)?;
    let want_ifaces: BTreeSet<String> = want
        .iter()
        .map(|(agent, ifx, _, _)| format!("{agent}|{ifx}"))
        .collect();
    assert_eq!(seen, want_ifaces);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}:ifs"))
        .query(&mut conn)?;
    ensure!((1..=301).contains(&ttl), "TTL {ttl}");

    // And `flowplane top --interfaces` answers from them.
    let out = Command::new(env::flowplane_bin()?)
        .args([
            "top",
            "--interfaces",
            "--window",
            "5m",
            "-n",
            "1000",
            "--json",
        ])
        .arg("--config")
        .arg(&config)
        .output()?;
    ensure!(
        out.status.success(),
        "top --interfaces failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        v["interfaces_seen"].as_u64(),
        Some(want_ifaces.len() as u64)
    );
    for i in v["interfaces"].as_array().context("interfaces")? {
        let key = i["interface"].as_str().context("interface")?;
        ensure!(want_ifaces.contains(key), "{key} not sent");
        let util = i["utilisation"].as_f64().context("utilisation")?;
        ensure!((0.0..=1.0).contains(&util), "{key}: {util}");
    }
    Ok(())
}
