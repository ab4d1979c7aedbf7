//! `flowplane top`: the hot window, from Valkey.

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use flowplane::config::Config;
use flowplane_engine::Totals;
use flowplane_sinks::valkey;
use serde_json::{Map, Value, json};

use super::utc_ms;

#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    /// Dimension to rank, as named in `engine.dimensions` (e.g. `dst_port`,
    /// `src_ip+dst_port+protocol`). Required unless `--interfaces` is given.
    #[arg(long, short, required_unless_present = "interfaces")]
    dimension: Option<String>,

    /// Rank interfaces by their latest utilisation (sFlow counter samples) instead of a
    /// dimension's keys; with `--key AGENT|IFINDEX`, show that interface's readings.
    #[arg(long, conflicts_with = "dimension")]
    interfaces: bool,

    /// How far back: `1m`, `5m`, or a number of seconds (1 to 300).
    #[arg(long, short, default_value = "1m", value_parser = parse_window)]
    window: u64,

    /// How many keys to show.
    #[arg(short = 'n', long = "top", default_value_t = 10)]
    n: usize,

    /// Show this key's per-second series over the window instead of the ranking (with
    /// `--interfaces`, an interface as `AGENT|IFINDEX`, e.g. `192.0.2.1|7`).
    #[arg(long, short)]
    key: Option<String>,

    /// Configuration file, for the Valkey address and key prefix.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Answers from Valkey: the ranking of a dimension's keys, or one key's per-second series, over
/// the `window` seconds that end with the current second (a second still being aggregated
/// shows what has been flushed of it so far, usually nothing).
pub(crate) fn top(args: &TopArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let valkey = &config.valkey.sink;
    let mut conn = valkey::connect(valkey)?;
    let end_sec = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prefix = valkey.key_prefix.as_str();

    let Some(dimension) = args.dimension.as_deref() else {
        return interfaces(args, &mut conn, prefix, end_sec);
    };
    // `src_ip + dst_port` in the configuration is stored as `src_ip+dst_port`; match that.
    let dimension = &dimension
        .split('+')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("+");
    let known = valkey::dimensions(&mut conn, prefix)?;
    if !known.iter().any(|d| d == dimension) {
        let hint = if known.is_empty() {
            "nothing was written in the last 5 minutes".to_owned()
        } else {
            format!("written recently: {}", known.join(", "))
        };
        // Not fatal: a dimension configured but idle for 5 minutes is a valid, empty answer.
        eprintln!(
            "flowplane top: no data for dimension `{dimension}` under prefix `{prefix}` ({hint})"
        );
    }

    let mut out = io::stdout().lock();
    match &args.key {
        Some(key) => {
            let points = valkey::series(&mut conn, prefix, dimension, key, end_sec, args.window)?;
            if args.json {
                let doc = json!({
                    "dimension": dimension,
                    "key": key,
                    "from": points.first().map_or(end_sec, |p| p.sec),
                    "to": end_sec,
                    "series": points.iter().map(|p| {
                        let mut o = totals_json(&p.totals);
                        o.insert("sec".into(), p.sec.into());
                        Value::Object(o)
                    }).collect::<Vec<_>>(),
                });
                writeln!(out, "{doc}")?;
            } else {
                writeln!(
                    out,
                    "{dimension} = {key}, last {} s (UTC; seconds without the key omitted)",
                    args.window
                )?;
                writeln!(
                    out,
                    "{:<24} {:>14} {:>12} {:>8}",
                    "second", "bytes", "packets", "flows"
                )?;
                let mut shown = 0;
                for p in points
                    .iter()
                    .filter(|p| p.totals.flows > 0 || p.totals.bytes > 0)
                {
                    writeln!(
                        out,
                        "{:<24} {:>14} {:>12} {:>8}",
                        utc_ms(p.sec * 1_000),
                        p.totals.bytes,
                        p.totals.packets,
                        p.totals.flows
                    )?;
                    shown += 1;
                }
                let total = points.iter().fold(Totals::default(), |mut t, p| {
                    t.add(&p.totals);
                    t
                });
                writeln!(
                    out,
                    "{shown} of {} seconds had the key; total {} bytes, {} packets, {} flows",
                    points.len(),
                    total.bytes,
                    total.packets,
                    total.flows
                )?;
            }
        }
        None => {
            let r = valkey::top(&mut conn, prefix, dimension, end_sec, args.window, args.n)?;
            if args.json {
                let doc = json!({
                    "dimension": dimension,
                    "from": r.from_sec,
                    "to": r.to_sec,
                    "distinct_keys": r.distinct_keys,
                    "window": Value::Object(totals_json(&r.window)),
                    "overflow": Value::Object(totals_json(&r.overflow)),
                    "keys": r.keys.iter().map(|k| {
                        let mut o = totals_json(&k.totals);
                        o.insert("key".into(), Value::String(k.key.clone()));
                        Value::Object(o)
                    }).collect::<Vec<_>>(),
                });
                writeln!(out, "{doc}")?;
            } else {
                writeln!(
                    out,
                    "top {} of {dimension} by bytes, {} to {} ({} s, {} distinct keys)",
                    r.keys.len(),
                    utc_ms(r.from_sec * 1_000),
                    utc_ms(r.to_sec * 1_000),
                    args.window,
                    r.distinct_keys
                )?;
                writeln!(
                    out,
                    "{:<40} {:>14} {:>6} {:>12} {:>8}",
                    "key", "bytes", "%", "packets", "flows"
                )?;
                for k in &r.keys {
                    writeln!(
                        out,
                        "{:<40} {:>14} {:>6.1} {:>12} {:>8}",
                        k.key,
                        k.totals.bytes,
                        percent(k.totals.bytes, r.window.bytes),
                        k.totals.packets,
                        k.totals.flows
                    )?;
                }
                writeln!(
                    out,
                    "{:<40} {:>14} {:>6} {:>12} {:>8}",
                    "(all keys)", r.window.bytes, "", r.window.packets, r.window.flows
                )?;
                if r.overflow.flows > 0 {
                    writeln!(
                        out,
                        "{:<40} {:>14} {:>6.1} {:>12} {:>8}",
                        "(table overflow, no key)",
                        r.overflow.bytes,
                        percent(r.overflow.bytes, r.window.bytes),
                        r.overflow.packets,
                        r.overflow.flows
                    )?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--interfaces`: the busiest interfaces, or one interface's readings per second.
fn interfaces(
    args: &TopArgs,
    conn: &mut redis::Connection,
    prefix: &str,
    end_sec: u64,
) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    if let Some(key) = &args.key {
        let points = valkey::interface_series(conn, prefix, key, end_sec, args.window)?;
        let sampled: Vec<&valkey::InterfaceReading> =
            points.iter().filter(|p| p.sampled()).collect();
        if args.json {
            let doc = json!({
                "interface": key,
                "from": points.first().map_or(end_sec, |p| p.sec),
                "to": end_sec,
                "series": sampled.iter().map(|p| reading_json(p)).collect::<Vec<_>>(),
            });
            writeln!(out, "{doc}")?;
        } else {
            writeln!(
                out,
                "interface {key}, last {} s (UTC; seconds without a sample omitted)",
                args.window
            )?;
            writeln!(
                out,
                "{:<24} {:>7} {:>14} {:>14} {:>14} {:>10} {:>10}",
                "second", "util %", "in bit/s", "out bit/s", "speed", "in err", "out err"
            )?;
            for p in &sampled {
                writeln!(
                    out,
                    "{:<24} {:>7} {:>14} {:>14} {:>14} {:>10} {:>10}",
                    utc_ms(p.sec * 1_000),
                    opt_pct(p.utilisation),
                    opt_f(p.in_bps),
                    opt_f(p.out_bps),
                    opt_u(p.speed),
                    opt_u(p.in_errors),
                    opt_u(p.out_errors),
                )?;
            }
            writeln!(
                out,
                "{} of {} seconds had a sample",
                sampled.len(),
                points.len()
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let seen = valkey::interfaces_seen(conn, prefix)?;
    if seen.is_empty() {
        eprintln!(
            "flowplane top: no interface counter samples under prefix `{prefix}` in the last \
             5 minutes"
        );
    }
    let r = valkey::interfaces(conn, prefix, end_sec, args.window, args.n)?;
    if args.json {
        let doc = json!({
            "from": r.from_sec,
            "to": r.to_sec,
            "distinct_interfaces": r.distinct_interfaces,
            "interfaces_seen": seen.len(),
            "interfaces": r.interfaces.iter().map(|i| {
                let mut o = reading_json(&i.latest);
                if let Value::Object(m) = &mut o {
                    m.insert("interface".into(), Value::String(i.key.clone()));
                }
                o
            }).collect::<Vec<_>>(),
        });
        writeln!(out, "{doc}")?;
    } else {
        writeln!(
            out,
            "top {} interfaces by latest utilisation, {} to {} ({} s, {} with a utilisation, {} seen)",
            r.interfaces.len(),
            utc_ms(r.from_sec * 1_000),
            utc_ms(r.to_sec * 1_000),
            args.window,
            r.distinct_interfaces,
            seen.len()
        )?;
        writeln!(
            out,
            "{:<40} {:>7} {:>14} {:>14} {:>14} {:<24}",
            "interface", "util %", "in bit/s", "out bit/s", "speed", "sampled"
        )?;
        for i in &r.interfaces {
            let p = &i.latest;
            writeln!(
                out,
                "{:<40} {:>7} {:>14} {:>14} {:>14} {:<24}",
                i.key,
                opt_pct(p.utilisation),
                opt_f(p.in_bps),
                opt_f(p.out_bps),
                opt_u(p.speed),
                utc_ms(p.sec * 1_000)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn reading_json(p: &valkey::InterfaceReading) -> Value {
    json!({
        "sec": p.sec,
        "utilisation": p.utilisation,
        "in_bps": p.in_bps,
        "out_bps": p.out_bps,
        "speed": p.speed,
        "in_octets": p.in_octets,
        "out_octets": p.out_octets,
        "in_errors": p.in_errors,
        "out_errors": p.out_errors,
        "in_discards": p.in_discards,
        "out_discards": p.out_discards,
    })
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}", v * 100.0))
}

fn opt_f(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

fn opt_u(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn totals_json(t: &Totals) -> Map<String, Value> {
    let mut o = Map::new();
    for (name, v) in [
        ("bytes", t.bytes),
        ("packets", t.packets),
        ("flows", t.flows),
        ("raw_bytes", t.raw_bytes),
        ("raw_packets", t.raw_packets),
    ] {
        o.insert(name.into(), v.into());
    }
    o
}

/// `1m`, `5m`, `90s` or `90` to seconds, within the 300 s Valkey keeps.
fn parse_window(s: &str) -> Result<u64, String> {
    let secs = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>().ok().and_then(|m| m.checked_mul(60))
    } else {
        s.strip_suffix('s').unwrap_or(s).parse::<u64>().ok()
    };
    match secs {
        Some(secs @ 1..=300) => Ok(secs),
        Some(_) => Err(format!("{s} is outside 1 s to 5 m (Valkey keeps 300 s)")),
        None => Err(format!(
            "`{s}` is not a window: use 1m, 5m or a number of seconds"
        )),
    }
}
