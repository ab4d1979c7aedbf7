//! End to end with real exporters, a real Valkey and a real Kafka-protocol broker.
//!
//! For each exporter and export version: ordinary traffic with known totals is written to a
//! pcap ([`flowplane_tests::traffic`]); the exporter (softflowd, or pmacctd with its nfprobe
//! plugin) meters the pcap and exports to a relay, which keeps a copy of every datagram and
//! forwards it to a running `flowplane run`; flowplane is stopped with SIGTERM (which flushes
//! the open window), and then
//!
//! * what the exporter exported is read three ways, which must agree: the generator's own
//!   totals, the exporter's own report (softflowd prints per-protocol totals), and tshark's
//!   decoding of the relayed datagrams;
//! * the per-destination-port and per-source-address bytes and packets in Valkey (read with
//!   `flowplane top`, the operator's tool) and in the Kafka aggregates topic (read back with
//!   explicit partition assignment) must equal them exactly;
//! * flowplane must have counted no decode error, no drop and no overflow.
//!
//! The services come from `scripts/services.sh start` (CI runs it); the addresses can be
//! overridden with FLOWPLANE_VALKEY_URL and FLOWPLANE_KAFKA_BROKERS. A missing tool or service
//! fails the test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use flowplane_tests::instance::{Flowplane, counter, kafka_brokers, unix_ms, valkey_url};
use flowplane_tests::pcap_out::{UdpOut, write_udp_pcap};
use flowplane_tests::relay::Relay;
use flowplane_tests::traffic::{self, Traffic};
use flowplane_tests::{env, tshark};

/// (bytes, packets) per key text.
type Sums = BTreeMap<String, (u64, u64)>;

/// Where one case's flowplane writes.
struct Destinations {
    config: PathBuf,
    aggregates_topic: String,
}

/// Starts a `flowplane run` with its own Valkey prefix and Kafka topics.
fn start_flowplane(dir: &Path, name: &str) -> Result<(Flowplane, Destinations)> {
    let tag = format!("{name}-{}-{}", std::process::id(), unix_ms());
    let aggregates_topic = format!("fpt.{tag}.aggregates");
    let config = dir.join("flowplane.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[engine]
listen = ["127.0.0.1:0"]
workers = 2
pin_cores = false
dimensions = ["dst_port", "src_ip", "protocol"]
stats_interval_secs = 1

[valkey]
url = "{url}"
key_prefix = "fpt:{tag}"

[kafka]
brokers = "{brokers}"
aggregates_topic = "{aggregates_topic}"
alerts_topic = "fpt.{tag}.alerts"
counters_topic = "fpt.{tag}.counters"

[log]
level = "info"
"#,
            url = valkey_url(),
            brokers = kafka_brokers(),
        ),
    )?;
    let fp = Flowplane::start(&config)?;
    Ok((
        fp,
        Destinations {
            config,
            aggregates_topic,
        },
    ))
}

/// What the exporter exported according to tshark: (bytes, packets) per destination port and
/// per source address, from the relayed datagrams.
fn tshark_sums(dir: &Path, datagrams: &[Vec<u8>], exporter: SocketAddr) -> Result<(Sums, Sums)> {
    let capture = dir.join("export.pcap");
    let to: SocketAddr = "127.0.0.1:2055".parse()?;
    let now = unix_ms();
    write_udp_pcap(
        &capture,
        datagrams.iter().enumerate().map(|(i, d)| UdpOut {
            ts_ms: now + i as u64,
            src: exporter,
            dst: to,
            payload: d,
        }),
    )?;
    let frames = tshark::dissect(&capture, &[2055])?;
    let (mut by_port, mut by_src) = (Sums::new(), Sums::new());
    // Options data (the exporters' sampling and statistics records) is not traffic.
    let mut options_templates = std::collections::BTreeSet::new();
    for f in &frames {
        let Some(e) = &f.export else {
            bail!("tshark found no flow export in frame {}", f.number)
        };
        for set in &e.sets {
            ensure!(
                !set.no_template,
                "tshark had no template for set {}",
                set.id
            );
            if e.version != 5 && set.is_template_set() {
                for id in &set.defines {
                    if set.is_options_template_set() {
                        options_templates.insert(*id);
                    } else {
                        options_templates.remove(id);
                    }
                }
                continue;
            }
            if e.version != 5 && options_templates.contains(&set.id) {
                continue;
            }
            for r in &set.records {
                let bytes = r.num(&["cflow.octets", "cflow.octets64"]).unwrap_or(0);
                let packets = r.num(&["cflow.packets", "cflow.packets64"]).unwrap_or(0);
                let port = r
                    .num(&["cflow.dstport"])
                    .context("record without dstport")?;
                let src = r
                    .addr("cflow.srcaddr")
                    .or_else(|| r.addr("cflow.srcaddrv6"))
                    .context("record without source address")?;
                add(&mut by_port, port.to_string(), bytes, packets);
                add(&mut by_src, src.to_string(), bytes, packets);
            }
        }
    }
    Ok((by_port, by_src))
}

fn add(m: &mut Sums, k: String, bytes: u64, packets: u64) {
    let e = m.entry(k).or_default();
    e.0 += bytes;
    e.1 += packets;
}

fn expected(t: &Traffic) -> (Sums, Sums) {
    let by_port = t
        .by_dst_port()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let by_src = t
        .by_src_ip()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    (by_port, by_src)
}

/// Per-key totals of `dimension` over the last 5 minutes, from Valkey, through `flowplane top`.
fn valkey_sums(config: &Path, dimension: &str) -> Result<Sums> {
    let out = Command::new(env::flowplane_bin()?)
        .args([
            "top",
            "--dimension",
            dimension,
            "--window",
            "5m",
            "-n",
            "100000",
            "--json",
        ])
        .arg("--config")
        .arg(config)
        .output()?;
    ensure!(
        out.status.success(),
        "flowplane top failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("top --json: {}", String::from_utf8_lossy(&out.stdout)))?;
    let rows = v
        .get("keys")
        .and_then(|k| k.as_array())
        .with_context(|| format!("no `keys` array in {v}"))?;
    let mut m = Sums::new();
    for r in rows {
        let key = r["key"].as_str().context("key")?.to_string();
        let bytes = r["bytes"].as_u64().context("bytes")?;
        let packets = r["packets"].as_u64().context("packets")?;
        add(&mut m, key, bytes, packets);
    }
    Ok(m)
}

/// Per-(dimension, key) totals from every document of the aggregates topic.
fn kafka_sums(topic: &str) -> Result<BTreeMap<String, Sums>> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", "flowplane-e2e")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    ensure!(!parts.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for &p in &parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        let (_, hi) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends.insert(p, hi);
    }
    consumer.assign(&tpl)?;

    // Read to the end. tansu's high watermark counts record batches, not records (a topic of
    // one 18-record batch reports 1), so it is only a lower bound: read until it is reached
    // and then until nothing more arrives for a while. Every document is already in the
    // broker when this runs (flowplane stopped after its sinks confirmed delivery).
    let mut out: BTreeMap<String, Sums> = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = parts.iter().map(|&p| (p, 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Instant::now();
    while next.iter().any(|(p, &o)| o < ends[p]) || last.elapsed() < Duration::from_secs(3) {
        ensure!(
            Instant::now() < deadline,
            "timed out reading {topic}: {next:?} of {ends:?}"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        last = Instant::now();
        let seen = next.entry(m.partition()).or_default();
        ensure!(m.offset() >= *seen, "offset {} read twice", m.offset());
        *seen = m.offset() + 1;
        let doc: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let dim = doc["dimension"].as_str().context("dimension")?.to_string();
        let key = doc["key"].as_str().context("key")?.to_string();
        let bytes = doc["bytes"].as_u64().context("bytes")?;
        let packets = doc["packets"].as_u64().context("packets")?;
        add(out.entry(dim).or_default(), key, bytes, packets);
    }
    Ok(out)
}

/// softflowd's own per-protocol report: (octets, packets) of UDP.
fn softflowd_udp_totals(stdout: &str) -> Option<(u64, u64)> {
    stdout.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("udp (17):")?;
        let mut it = rest.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    })
}

#[derive(Clone, Copy)]
enum Exporter {
    Softflowd,
    Pmacctd,
}

/// Runs the exporter over `pcap`, sending to `to`; returns what it printed.
fn export(
    exporter: Exporter,
    version: u8,
    dir: &Path,
    pcap: &Path,
    to: SocketAddr,
) -> Result<String> {
    Ok(match exporter {
        Exporter::Softflowd => {
            // No `-c`: `-r` turns the control socket off, and a `-c` after it turns it back
            // on, after which softflowd 1.1.0 reads uninitialised poll results in file mode
            // and can block in accept() forever. `-r` also implies `-d` (no pidfile).
            let out = Command::new("timeout")
                .args(["60", "softflowd", "-r"])
                .arg(pcap)
                .arg("-n")
                .arg(to.to_string())
                .args(["-v", &version.to_string()])
                .stdin(Stdio::null())
                .output()?;
            ensure!(out.status.success(), "softflowd failed: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Exporter::Pmacctd => {
            let conf = dir.join("pmacctd.conf");
            std::fs::write(
                &conf,
                format!(
                    "daemonize: false\npcap_savefile: {}\nplugins: nfprobe\n\
                     nfprobe_receiver: {to}\nnfprobe_version: {version}\n",
                    pcap.display(),
                ),
            )?;
            run_pmacctd(&conf)?
        }
    })
}

/// Runs `pmacctd -f CONF` (at most 60 s) and returns its log.
///
/// pmacctd 1.7.7 sometimes exits with status 1 after a complete run, when its plugin finishes
/// before the core ("connection lost to 'default_sfprobe-sfprobe'"). That exit is accepted when
/// the log shows the export started and the plugin shut down at the end of the file; what it
/// exported is checked datagram by datagram by the callers.
fn run_pmacctd(conf: &Path) -> Result<String> {
    let out = Command::new("timeout")
        .args(["60", "pmacctd", "-f"])
        .arg(conf)
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let finished = log.contains("Exporting flows to") && log.contains("Shutting down");
    ensure!(
        out.status.success() || (out.status.code() == Some(1) && finished),
        "pmacctd failed: {out:?}"
    );
    Ok(log)
}

/// Runs one exporter over the traffic and checks everything that arrived.
fn run_case(exporter: Exporter, version: u8) -> Result<()> {
    let tool = match exporter {
        Exporter::Softflowd => "softflowd",
        Exporter::Pmacctd => "pmacctd",
    };
    env::require_tool(tool)?;
    env::require_tool("tshark")?;
    let name = format!("{tool}-v{version}");
    let dir = env::scratch_dir(&name)?;

    let all = Traffic::new(60, 20);
    let pcap = dir.join("traffic.pcap");
    traffic::write(&pcap, &all, unix_ms() - 10_000)?;
    // NetFlow v5 carries IPv4 only.
    let t = if version == 5 { all.ipv4_only() } else { all };
    let (want_port, want_src) = expected(&t);

    let (fp, dest) = start_flowplane(&dir, &name)?;
    let relay = Relay::start(fp.bound)?;
    let exporter_addr = relay.exporter;
    let report = export(exporter, version, &dir, &pcap, relay.listen)?;
    // Let the last datagrams cross the relay before it stops.
    std::thread::sleep(Duration::from_millis(300));
    let datagrams = relay.finish();
    ensure!(!datagrams.is_empty(), "{tool} exported nothing:\n{report}");
    let (summary, log) = fp.stop()?;

    // 1. The views of what was exported agree.
    let (want_bytes, want_packets) = t.totals();
    if let Exporter::Softflowd = exporter {
        let got = softflowd_udp_totals(&report)
            .with_context(|| format!("no udp totals in softflowd's report:\n{report}"))?;
        ensure!(
            got == (want_bytes, want_packets),
            "softflowd reports {got:?}, the traffic holds {:?}",
            (want_bytes, want_packets)
        );
    }
    let (ts_port, ts_src) = tshark_sums(&dir, &datagrams, exporter_addr)?;
    ensure!(
        ts_port == want_port,
        "tshark by port {ts_port:?} != traffic {want_port:?}"
    );
    ensure!(
        ts_src == want_src,
        "tshark by source {ts_src:?} != traffic {want_src:?}"
    );

    // 2. flowplane lost and refused nothing.
    let ctx = || format!("summary: {summary}\nlog:\n{}", log.join("\n"));
    for c in [
        "decode_errors",
        "socket_drops",
        "table_overflow",
        "sets_without_template",
    ] {
        ensure!(counter(&summary, c) == Some(0), "{c} is not 0; {}", ctx());
    }
    ensure!(
        counter(&summary, "datagrams") == Some(datagrams.len() as u64),
        "flowplane received a different number of datagrams than relayed ({}); {}",
        datagrams.len(),
        ctx()
    );
    // Both sinks wrote, and neither dropped or failed anything.
    for sink in ["valkey:", "kafka:"] {
        let part = summary
            .split_once(sink)
            .map(|(_, rest)| rest)
            .with_context(|| format!("no {sink} counters; {}", ctx()))?;
        ensure!(
            counter(part, "sent").is_some_and(|n| n > 0),
            "{sink} sent nothing; {}",
            ctx()
        );
        for c in ["failures", "dropped"] {
            ensure!(
                counter(part, c) == Some(0),
                "{sink} {c} is not 0; {}",
                ctx()
            );
        }
    }

    // 3. Valkey and Kafka hold exactly what was exported.
    let v_port = valkey_sums(&dest.config, "dst_port")?;
    ensure!(
        v_port == want_port,
        "Valkey dst_port {v_port:?} != {want_port:?}"
    );
    let v_src = valkey_sums(&dest.config, "src_ip")?;
    ensure!(v_src == want_src, "Valkey src_ip {v_src:?} != {want_src:?}");
    let k = kafka_sums(&dest.aggregates_topic)?;
    let k_port = k.get("dst_port").cloned().unwrap_or_default();
    ensure!(
        k_port == want_port,
        "Kafka dst_port {k_port:?} != {want_port:?}"
    );
    let k_src = k.get("src_ip").cloned().unwrap_or_default();
    ensure!(k_src == want_src, "Kafka src_ip {k_src:?} != {want_src:?}");
    eprintln!(
        "{name}: {} datagrams, {} flows, {want_bytes} bytes, {want_packets} packets: \
         Valkey and Kafka agree exactly",
        datagrams.len(),
        t.flows.len()
    );
    Ok(())
}

#[test]
fn softflowd_netflow_v5() -> Result<()> {
    run_case(Exporter::Softflowd, 5)
}

#[test]
fn softflowd_netflow_v9() -> Result<()> {
    run_case(Exporter::Softflowd, 9)
}

#[test]
fn softflowd_ipfix() -> Result<()> {
    run_case(Exporter::Softflowd, 10)
}

#[test]
fn pmacctd_nfprobe_netflow_v5() -> Result<()> {
    run_case(Exporter::Pmacctd, 5)
}

#[test]
fn pmacctd_nfprobe_netflow_v9() -> Result<()> {
    run_case(Exporter::Pmacctd, 9)
}

#[test]
fn pmacctd_nfprobe_ipfix() -> Result<()> {
    run_case(Exporter::Pmacctd, 10)
}

// ---------------------------------------------------------------------------------------------
// sFlow: pmacctd's sfprobe plugin samples the traffic 1 in `SFLOW_RATE` and exports sFlow v5.

/// pmacctd's sfprobe sampling rate in the sFlow tests.
const SFLOW_RATE: u64 = 4;

/// Runs pmacctd with the sfprobe plugin over `pcap`, exporting sFlow v5 to `to`.
fn export_sflow(dir: &Path, pcap: &Path, to: SocketAddr) -> Result<()> {
    let conf = dir.join("sfprobe.conf");
    std::fs::write(
        &conf,
        format!(
            "daemonize: false\npcap_savefile: {}\nplugins: sfprobe\nsfprobe_receiver: {to}\n\
             sampling_rate: {SFLOW_RATE}\n",
            pcap.display(),
        ),
    )?;
    run_pmacctd(&conf)?;
    Ok(())
}

/// What the sFlow samples say, according to tshark: scaled (bytes, packets) per destination
/// port and per source address (frame length x rate, rate), and the raw sampled totals.
fn sflow_sums(
    dir: &Path,
    datagrams: &[Vec<u8>],
    exporter: SocketAddr,
) -> Result<(Sums, Sums, (u64, u64))> {
    let capture = dir.join("sflow-export.pcap");
    let to: SocketAddr = "127.0.0.1:6343".parse()?;
    let now = unix_ms();
    write_udp_pcap(
        &capture,
        datagrams.iter().enumerate().map(|(i, d)| UdpOut {
            ts_ms: now + i as u64,
            src: exporter,
            dst: to,
            payload: d,
        }),
    )?;
    let frames = tshark::dissect_sflow(&capture)?;
    let (mut by_port, mut by_src) = (Sums::new(), Sums::new());
    let mut raw = (0u64, 0u64);
    for f in &frames {
        let Some(d) = &f.datagram else {
            bail!("tshark found no sFlow datagram in frame {}", f.number)
        };
        for s in &d.samples {
            // sfprobe also sends an interface counter sample now and then (format 2): not
            // traffic.
            if s.format == Some(2) {
                continue;
            }
            ensure!(
                s.format == Some(1),
                "pmacctd sent a sample of format {:?}",
                s.format
            );
            let rate = s
                .fields
                .num(&["sflow.flow_sample.sampling_rate"])
                .unwrap_or(1);
            let header = s
                .records
                .iter()
                .find(|r| r.format == Some(1))
                .context("flow sample without a raw packet header")?;
            let h = &header.fields;
            let frame = h
                .num(&["sflow_245.header.frame_length"])
                .context("no frame length")?;
            let port = h
                .num(&["udp.dstport"])
                .context("sampled packet without UDP port")?;
            let src = h
                .addr("ip.src")
                .or_else(|| h.addr("ipv6.src"))
                .context("sampled packet without source address")?;
            add(&mut by_port, port.to_string(), frame * rate, rate);
            add(&mut by_src, src.to_string(), frame * rate, rate);
            raw.0 += frame;
            raw.1 += 1;
        }
    }
    Ok((by_port, by_src, raw))
}

/// `got` is within `tolerance` (a fraction) of `want`.
fn near(got: u64, want: u64, tolerance: f64) -> bool {
    (got as f64 - want as f64).abs() <= tolerance * want as f64
}

/// pmacctd's sfprobe samples generated traffic 1 in 4 and exports sFlow v5 through a relay to
/// a running flowplane. Valkey and Kafka must hold exactly the scaled totals of the samples as
/// tshark reads them (frame length x rate, rate packets per sample), and those estimates must
/// be close to the traffic's true totals.
#[test]
fn pmacctd_sfprobe_sflow() -> Result<()> {
    env::require_tool("pmacctd")?;
    env::require_tool("tshark")?;
    let name = "sfprobe";
    let dir = env::scratch_dir(name)?;
    let t = Traffic::new(60, 20);
    let pcap = dir.join("traffic.pcap");
    traffic::write(&pcap, &t, unix_ms() - 10_000)?;

    let (fp, dest) = start_flowplane(&dir, name)?;
    let relay = Relay::start(fp.bound)?;
    let exporter_addr = relay.exporter;
    export_sflow(&dir, &pcap, relay.listen)?;
    std::thread::sleep(Duration::from_millis(300));
    let datagrams = relay.finish();
    ensure!(!datagrams.is_empty(), "pmacctd's sfprobe exported nothing");
    let (summary, log) = fp.stop()?;
    let ctx = || format!("summary: {summary}\nlog:\n{}", log.join("\n"));

    let (want_port, want_src, (raw_bytes, samples)) = sflow_sums(&dir, &datagrams, exporter_addr)?;
    for c in [
        "decode_errors",
        "socket_drops",
        "truncated",
        "table_overflow",
    ] {
        ensure!(counter(&summary, c) == Some(0), "{c} is not 0; {}", ctx());
    }
    ensure!(
        counter(&summary, "records") == Some(samples),
        "flowplane decoded a different number of flow samples than tshark ({samples}); {}",
        ctx()
    );

    // Exact: what the samples say, scaled.
    let v_port = valkey_sums(&dest.config, "dst_port")?;
    ensure!(
        v_port == want_port,
        "Valkey dst_port {v_port:?} != samples {want_port:?}"
    );
    let v_src = valkey_sums(&dest.config, "src_ip")?;
    ensure!(
        v_src == want_src,
        "Valkey src_ip {v_src:?} != samples {want_src:?}"
    );
    let k = kafka_sums(&dest.aggregates_topic)?;
    let k_port = k.get("dst_port").cloned().unwrap_or_default();
    ensure!(
        k_port == want_port,
        "Kafka dst_port {k_port:?} != samples {want_port:?}"
    );

    // Close to the truth: 1-in-4 sampling of ~960 packets estimates within a few percent.
    let (scaled_bytes, scaled_packets) = want_port
        .values()
        .fold((0, 0), |(b, p), (vb, vp)| (b + vb, p + vp));
    let (_, true_packets) = t.totals();
    // sFlow counts whole frames: the IP bytes plus the 14-byte Ethernet header (and the FCS
    // where the agent counts it, 4 more).
    let true_frames: u64 = t
        .flows
        .iter()
        .map(|f| f.packets * (f.packet_ip_bytes() + 14))
        .sum();
    ensure!(
        near(scaled_packets, true_packets, 0.15) && near(scaled_bytes, true_frames, 0.15),
        "the scaled estimate ({scaled_packets} packets, {scaled_bytes} bytes) is far from the \
         traffic ({true_packets} packets, {true_frames} frame bytes)"
    );
    eprintln!(
        "{name}: {} datagrams, {samples} samples ({raw_bytes} sampled bytes) at 1 in \
         {SFLOW_RATE}: {scaled_packets} packets / {scaled_bytes} bytes estimated, traffic held \
         {true_packets} / {true_frames}; Valkey and Kafka agree with the samples exactly",
        datagrams.len()
    );
    Ok(())
}

/// sFlow (pmacctd sfprobe) and NetFlow v9 (softflowd) into one running flowplane at the same
/// time: every destination port's totals in Valkey are the sum of both exporters' exact views.
#[test]
fn sflow_and_netflow_through_one_flowplane() -> Result<()> {
    env::require_tool("pmacctd")?;
    env::require_tool("softflowd")?;
    env::require_tool("tshark")?;
    let name = "sflow+netflow";
    let dir = env::scratch_dir("sflow-netflow")?;
    let t = Traffic::new(40, 10);
    let pcap = dir.join("traffic.pcap");
    traffic::write(&pcap, &t, unix_ms() - 10_000)?;

    let (fp, dest) = start_flowplane(&dir, "sflow-netflow")?;
    let sflow_relay = Relay::start(fp.bound)?;
    let netflow_relay = Relay::start(fp.bound)?;
    let (sflow_from, netflow_from) = (sflow_relay.exporter, netflow_relay.exporter);
    let (to_sflow, to_netflow) = (sflow_relay.listen, netflow_relay.listen);
    let sdir = dir.clone();
    let spcap = pcap.clone();
    let sflow = std::thread::spawn(move || export_sflow(&sdir, &spcap, to_sflow));
    export(Exporter::Softflowd, 9, &dir, &pcap, to_netflow)?;
    sflow
        .join()
        .map_err(|_| anyhow::anyhow!("sfprobe thread panicked"))??;
    std::thread::sleep(Duration::from_millis(300));
    let sflow_datagrams = sflow_relay.finish();
    let netflow_datagrams = netflow_relay.finish();
    ensure!(
        !sflow_datagrams.is_empty() && !netflow_datagrams.is_empty(),
        "an exporter sent nothing: {} sFlow, {} NetFlow datagrams",
        sflow_datagrams.len(),
        netflow_datagrams.len()
    );
    let (summary, log) = fp.stop()?;
    let ctx = || format!("summary: {summary}\nlog:\n{}", log.join("\n"));
    ensure!(
        counter(&summary, "decode_errors") == Some(0),
        "decode errors; {}",
        ctx()
    );

    let (mut want, _, _) = sflow_sums(&dir, &sflow_datagrams, sflow_from)?;
    let (netflow_port, _) = tshark_sums(&dir, &netflow_datagrams, netflow_from)?;
    ensure!(
        netflow_port == expected(&t).0,
        "softflowd's export differs from the traffic"
    );
    for (k, (b, p)) in netflow_port {
        add(&mut want, k, b, p);
    }
    let v_port = valkey_sums(&dest.config, "dst_port")?;
    ensure!(
        v_port == want,
        "Valkey dst_port {v_port:?} != sFlow + NetFlow {want:?}; {}",
        ctx()
    );
    eprintln!(
        "{name}: {} sFlow and {} NetFlow v9 datagrams through one flowplane; Valkey holds the sum",
        sflow_datagrams.len(),
        netflow_datagrams.len()
    );
    Ok(())
}
