//! `flowplane gen`: a flow-export generator for load tests and benchmarks.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use flowplane::r#gen::flows::Distribution;
use flowplane::r#gen::send::{self, GenConfig, GenReport};
use flowplane::r#gen::wire::Format;

#[derive(Debug, clap::Args)]
pub(crate) struct GenArgs {
    /// Collector address, e.g. 127.0.0.1:2055. On loopback every exporter sends from its own
    /// address (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, value_name = "ADDR", value_parser = super::replay::parse_to)]
    to: SocketAddr,

    /// Export format.
    #[arg(long, short, value_enum, default_value = "v9")]
    format: Format,

    /// Records per second, all exporters together (`2000000`, `2M`, `500k`). Without it,
    /// records go out as fast as the socket takes them.
    #[arg(long, value_name = "RECORDS_PER_SEC", value_parser = parse_count)]
    rate: Option<f64>,

    /// Seconds to send; 0 sends until interrupted (SIGINT or SIGTERM ends the run and prints
    /// the report).
    #[arg(long, short, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,

    /// Exporters: each its own socket, sequence numbers and observation domain / source id.
    #[arg(long, value_name = "N", default_value_t = 4)]
    exporters: u32,

    /// Records per data datagram (NetFlow v5 holds at most 30).
    #[arg(long, value_name = "N", default_value_t = 24)]
    records_per_datagram: usize,

    /// Distinct flows (5-tuples) in the population the exporters report.
    #[arg(long, value_name = "N", default_value = "100000", value_parser = parse_count_u32)]
    flows: u32,

    /// How often each flow is reported: `zipf` (heavy hitters, as on a real network) or
    /// `uniform`.
    #[arg(long, value_enum, default_value = "zipf")]
    distribution: Distribution,

    /// Exponent of the Zipf distribution.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    zipf_exponent: f64,

    /// Fraction of flows over IPv6 (v9, IPFIX, sFlow), exported with the IPv6 template.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    ipv6_share: f64,

    /// Seconds between template resends (v9, IPFIX); the first goes out before any data.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    template_refresh: f64,

    /// Sender threads; the exporters are dealt out among them.
    #[arg(long, value_name = "N", default_value_t = 1)]
    senders: usize,

    /// Pin the sender threads to this core (keep the generator off the collector's cores).
    #[arg(long, value_name = "CORE")]
    cpu: Option<usize>,

    /// sFlow sampling rate written in the flow samples (a collector scales by it).
    #[arg(long, value_name = "N", default_value_t = 1)]
    sampling_rate: u32,

    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Parses a count with an optional `k`/`M`/`G` suffix (`500k`, `2M`, `1.5M`, `2000000`).
pub(crate) fn parse_count(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a count (e.g. 500000, 500k, 2M)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}` must be positive"));
    }
    Ok(v * mult)
}

fn parse_count_u32(s: &str) -> Result<u32, String> {
    let v = parse_count(s)?.round();
    if v > f64::from(u32::MAX) {
        return Err(format!("`{s}` is too large"));
    }
    Ok(v as u32)
}

impl GenArgs {
    fn config(&self) -> anyhow::Result<GenConfig> {
        anyhow::ensure!(
            self.duration >= 0.0 && self.duration.is_finite(),
            "--duration must be 0 or more seconds"
        );
        anyhow::ensure!(
            self.template_refresh > 0.0 && self.template_refresh.is_finite(),
            "--template-refresh must be positive"
        );
        Ok(GenConfig {
            to: self.to,
            format: self.format,
            rate: self.rate,
            duration: (self.duration > 0.0).then(|| Duration::from_secs_f64(self.duration)),
            exporters: self.exporters,
            records_per_datagram: self.records_per_datagram,
            flows: self.flows,
            distribution: self.distribution,
            zipf_exponent: self.zipf_exponent,
            ipv6_share: self.ipv6_share,
            template_refresh: Duration::from_secs_f64(self.template_refresh),
            senders: self.senders,
            cpu: self.cpu,
            sampling_rate: self.sampling_rate,
        })
    }
}

/// Sends, then prints what was sent.
pub(crate) fn r#gen(args: &GenArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
    let report = send::run(&cfg, &stop)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.records == 0 && report.send_errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(r: &GenReport) {
    println!(
        "gen: {:?} to {} for {:.3} s: {} records in {} datagrams ({:.0} records/s{}), {} template \
         datagrams, {} send errors",
        r.format,
        r.to,
        r.duration_secs,
        r.records,
        r.datagrams,
        r.achieved_records_per_sec,
        r.target_records_per_sec
            .map_or(String::new(), |t| format!(", target {t:.0}")),
        r.template_datagrams,
        r.send_errors,
    );
    println!(
        "{:<24} {:>8} {:>12} {:>14} {:>10} {:>16} {:>14} {:>10} {:>8}",
        "exporter",
        "id",
        "datagrams",
        "records",
        "templates",
        "octets",
        "packets",
        "flows",
        "errors"
    );
    for e in &r.exporters {
        println!(
            "{:<24} {:>8} {:>12} {:>14} {:>10} {:>16} {:>14} {:>10} {:>8}",
            e.source,
            e.exporter_id,
            e.datagrams,
            e.records,
            e.template_datagrams,
            e.flow_octets,
            e.flow_packets,
            e.distinct_flows,
            e.send_errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_suffixes() {
        assert_eq!(parse_count("2000000"), Ok(2e6));
        assert_eq!(parse_count("2M"), Ok(2e6));
        assert_eq!(parse_count("1.5m"), Ok(1.5e6));
        assert_eq!(parse_count("500k"), Ok(5e5));
        assert_eq!(parse_count("1_000"), Ok(1e3));
        assert!(parse_count("0").is_err());
        assert!(parse_count("fast").is_err());
        assert!(parse_count("-3").is_err());
        assert_eq!(parse_count_u32("100k"), Ok(100_000));
        assert!(parse_count_u32("5G").is_err());
    }
}
