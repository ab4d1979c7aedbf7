//! `flowplane gen` and `flowplane bench` against a real `flowplane run`, Valkey and the broker.
//!
//! * For every format the generator speaks, a real flowplane receives a few seconds of its
//!   traffic from four exporters: flowplane decodes exactly the records the generator says it
//!   sent, and Valkey's totals per exporter equal the generator's per-exporter report.
//! * A one-step benchmark at a low rate holds without loss, accounts for every record in both
//!   sinks, and writes its JSON and Markdown reports.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flowplane_tests::env;
use flowplane_tests::instance::{Flowplane, counter, unix_ms, valkey_url};

/// Runs the generator against a fresh flowplane and checks the accounting, per exporter.
fn gen_is_accounted(format: &str, ipv6_share: &str) -> Result<()> {
    let dir = env::scratch_dir(&format!("gen_{format}"))?;
    let prefix = format!("fpt:gen-{format}-{}-{}", std::process::id(), unix_ms());
    let config = dir.join("flowplane.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[engine]
listen = ["127.0.0.1:0"]
workers = 1
pin_cores = false
dimensions = ["exporter", "src_ip+dst_port+protocol"]
stats_interval_secs = 1

[valkey]
url = "{url}"
key_prefix = "{prefix}"

[kafka]
enabled = false
"#,
            url = valkey_url(),
        ),
    )?;
    let fp = Flowplane::start(&config)?;
    let out = Command::new(env::flowplane_bin()?)
        .arg("gen")
        .args(["--to", &fp.bound.to_string()])
        .args(["--format", format])
        .args(["--rate", "40k", "--duration", "2", "--exporters", "4"])
        .args(["--flows", "5000", "--ipv6-share", ipv6_share])
        .args(["--template-refresh", "0.5", "--json"])
        .output()?;
    ensure!(
        out.status.success(),
        "gen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("gen --json: {}", String::from_utf8_lossy(&out.stdout)))?;
    std::thread::sleep(Duration::from_millis(500));
    let (summary, _) = fp.stop()?;

    let sent = report["records"].as_u64().context("records")?;
    ensure!(
        sent > 60_000,
        "{format}: the generator sent only {sent} records in 2 s at 40k/s"
    );
    ensure!(report["send_errors"].as_u64() == Some(0), "{report}");
    ensure!(
        counter(&summary, "records") == Some(sent),
        "{format}: flowplane decoded other than the {sent} records sent: {summary}"
    );
    for name in ["socket_drops", "decode_errors", "sets_without_template"] {
        ensure!(
            counter(&summary, name) == Some(0),
            "{format}: {name}: {summary}"
        );
    }

    // Valkey: flows per exporter over every second written.
    let client = redis::Client::open(valkey_url())?;
    let mut conn = client.get_connection()?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:h:exporter:*"))
        .query(&mut conn)?;
    let mut per_exporter: BTreeMap<String, u64> = BTreeMap::new();
    for key in keys {
        let fields: BTreeMap<String, u64> = redis::cmd("HGETALL").arg(&key).query(&mut conn)?;
        for (field, n) in fields {
            if let Some(exporter) = field.strip_prefix("f|") {
                *per_exporter.entry(exporter.to_string()).or_default() += n;
            }
        }
    }
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for e in report["exporters"].as_array().context("exporters")? {
        let source = e["source"].as_str().context("source")?;
        let ip = source.rsplit_once(':').map_or(source, |(ip, _)| ip);
        want.insert(ip.to_string(), e["records"].as_u64().context("records")?);
    }
    ensure!(want.len() == 4, "four exporters: {want:?}");
    ensure!(
        per_exporter == want,
        "{format}: Valkey's flows per exporter {per_exporter:?} differ from what the generator \
         sent {want:?}"
    );
    Ok(())
}

#[test]
fn gen_netflow_v5_is_accounted_per_exporter() -> Result<()> {
    gen_is_accounted("v5", "0")
}

#[test]
fn gen_netflow_v9_with_ipv6_is_accounted_per_exporter() -> Result<()> {
    gen_is_accounted("v9", "0.3")
}

#[test]
fn gen_ipfix_with_ipv6_is_accounted_per_exporter() -> Result<()> {
    gen_is_accounted("ipfix", "0.3")
}

#[test]
fn gen_sflow_with_ipv6_is_accounted_per_exporter() -> Result<()> {
    gen_is_accounted("sflow", "0.3")
}

#[test]
fn gen_refuses_bad_settings_with_a_clear_error() -> Result<()> {
    let bin = env::flowplane_bin()?;
    for (args, says) in [
        (
            &["--format", "v5", "--ipv6-share", "0.5"][..],
            "NetFlow v5 carries IPv4 only",
        ),
        (
            &["--format", "v5", "--records-per-datagram", "31"][..],
            "--records-per-datagram must be 1 to 30",
        ),
        (&["--rate", "fast"][..], "is not a count"),
        (&["--exporters", "0"][..], "--exporters must be 1 to 250"),
    ] {
        let out = Command::new(&bin)
            .args(["gen", "--to", "127.0.0.1:9", "--duration", "1"])
            .args(args)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{args:?} was accepted");
        ensure!(
            err.contains(says),
            "{args:?}: `{err}` does not say `{says}`"
        );
        ensure!(!err.contains("panicked"), "{args:?}: {err}");
    }
    Ok(())
}

#[test]
fn bench_one_step_accounts_for_every_record_in_both_sinks() -> Result<()> {
    let out_dir = env::scratch_dir("bench_smoke")?;
    let out = Command::new(env::flowplane_bin()?)
        .current_dir(env::repo_root())
        .arg("bench")
        .args(["--rates", "30k", "--step-secs", "3", "--refine", "0"])
        .args(["--flows", "2000", "--port", "2098"])
        .arg("--out")
        .arg(&out_dir)
        .env_remove("RUST_LOG")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("bench.json"))?)?;
    let steps = json["steps"].as_array().context("steps")?;
    ensure!(steps.len() == 1, "one rate, one step: {json}");
    let s = &steps[0];
    let sent = s["records_sent"].as_u64().context("records_sent")?;
    ensure!(sent > 60_000, "sent {sent}");
    ensure!(s["loss_free"] == true, "a low rate is held: {s}");
    ensure!(
        s["records_accounted"].as_u64() == Some(sent),
        "every record reached both sinks: {s}"
    );
    let sinks = s["sinks"].as_array().context("sinks")?;
    ensure!(sinks.len() == 2, "both sinks live: {s}");
    for sink in sinks {
        ensure!(sink["records"].as_u64() == Some(sent), "{sink}");
        ensure!(sink["windows"].as_u64().unwrap_or(0) >= 3, "{sink}");
    }
    ensure!(s["latency_ms"]["windows"].as_u64().unwrap_or(0) >= 3, "{s}");
    ensure!(
        s["valkey_commands_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{s}"
    );
    ensure!(
        s["kafka_messages_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{s}"
    );
    ensure!(json["sustained"] == false, "3 s steps are not sustained");
    let md = std::fs::read_to_string(out_dir.join("bench.md"))?;
    for needle in [
        "| Event rate | CPU | RAM | Disk | NIC | Verdict | Bottleneck |",
        "500K/s (target)",
        "not a sizing result: short steps",
        "Projection to the tiers (a projection, not a measurement)",
    ] {
        ensure!(md.contains(needle), "bench.md lacks `{needle}`:\n{md}");
    }
    Ok(())
}
