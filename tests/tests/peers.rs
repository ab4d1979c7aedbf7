//! `benches/peers.sh --self-check`: the side-by-side benchmark with nfcapd and nfacctd (and
//! `flowplane bench` when the binary has it) run end to end at a low rate, one 2-second step each,
//! so that CI notices when the script no longer matches the tools it drives. The numbers are not
//! a benchmark; the test only asserts that every collector had a loss-free step and that the
//! report's JSON holds what the Markdown table is made from.
//!
//! Without `flowplane gen` in the binary the script's stand-in generator replays a NetFlow v9
//! capture of the shared corpus (`FLOWPLANE_SKIP_CORPUS=1` then skips this test).

use std::net::UdpSocket;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use flowplane_tests::{corpus, env};

/// Whether the binary has a subcommand (`flowplane NAME --help` succeeds).
fn has_command(bin: &std::path::Path, name: &str) -> bool {
    Command::new(bin)
        .args([name, "--help"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn peers_self_check() -> Result<()> {
    for tool in [
        "nfcapd", "nfdump", "nfacctd", "pmacct", "jq", "taskset", "ss", "python3",
    ] {
        env::require_tool(tool)?;
    }
    let bin = env::flowplane_bin()?;
    let has_gen = has_command(&bin, "gen");
    let has_bench = has_command(&bin, "bench");
    let mut cmd = Command::new("bash");
    if !has_gen {
        let Some(dir) = corpus::dir_or_skip("peers_self_check (stand-in generator)") else {
            return Ok(());
        };
        cmd.env(
            "FLOWPLANE_PEERS_CAPTURE",
            dir.join("pmacct/101-NFv9-CISCO-cust_primitives_traffic-00.pcap"),
        );
    }
    // A port nobody holds right now, for every collector in turn.
    let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let out = env::scratch_dir("peers")?;
    let script = env::repo_root().join("benches/peers.sh");
    let run = cmd
        .arg(&script)
        .arg("--self-check")
        .arg("--out")
        .arg(&out)
        .env("FLOWPLANE_BIN", &bin)
        .env("FLOWPLANE_PEERS_PORT", port.to_string())
        // At 20000 records/s the default buffers do; a test leaves the sysctl alone.
        .env("FLOWPLANE_PEERS_RAISE_RMEM", "0")
        .output()
        .context("run benches/peers.sh")?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    ensure!(
        run.status.success(),
        "benches/peers.sh --self-check failed ({}):\n{stderr}",
        run.status
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("peers.json"))?)?;
    ensure!(
        json["self_check"] == true && json["short_check"] == true,
        "{json}"
    );
    let mut expected = vec!["nfcapd", "nfacctd"];
    if has_bench {
        expected.push("flowplane");
    }
    let collectors = json["collectors"].as_array().context("collectors")?;
    for name in &expected {
        let c = collectors
            .iter()
            .find(|c| c["collector"] == *name)
            .with_context(|| format!("{name} missing from peers.json; stderr:\n{stderr}"))?;
        ensure!(
            c["version"].as_str().is_some_and(|v| !v.is_empty()),
            "{name}: no version in {c}"
        );
        let steps = c["steps"].as_array().context("steps")?;
        ensure!(
            steps.iter().any(|s| s["loss_free"] == true),
            "{name}: no loss-free step: {c}"
        );
        ensure!(
            c["max_loss_free_records_per_sec"].as_u64() == Some(20_000),
            "{name}: expected 20000 records/s loss-free: {c}"
        );
        if *name != "flowplane" {
            for s in steps {
                let sent = s["records_sent"].as_u64().context("records_sent")?;
                ensure!(
                    sent >= 30_000,
                    "{name}: only {sent} records sent in 2 s: {s}"
                );
                ensure!(s["records_counted"].as_u64().is_some(), "{name}: {s}");
            }
        }
    }
    let md = std::fs::read_to_string(out.join("peers.md"))?;
    ensure!(
        md.contains("Short check"),
        "peers.md does not say it is a short check:\n{md}"
    );
    for name in &expected {
        ensure!(
            md.contains(&format!("| {name} |")),
            "no {name} row in peers.md:\n{md}"
        );
    }
    std::fs::remove_dir_all(&out)?;
    Ok(())
}
