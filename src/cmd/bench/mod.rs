//! `flowplane bench`: how many records per second this machine holds, loss-free, with both sinks
//! live, against the sizing table.
//!
//! The engine runs in this process on the collector cores, writing to the configured Valkey and
//! Kafka (under a key prefix and topics of its own, so a benchmark never mixes with live data);
//! `flowplane gen` runs as a child process pinned to the generator core. Every step starts a
//! fresh engine, offers one rate for `--step-secs`, stops the engine (which flushes every
//! window to the sinks) and accounts for each record the generator says it sent: received by the
//! workers, and written by every sink. The ladder climbs until a step loses 0.01 % or more, then
//! bisects between the last good rate and the first bad one.

mod meter;
mod report;
mod sample;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flowplane::config::{Config, profile_defaults};
use flowplane::r#gen::flows::Distribution;
use flowplane::r#gen::wire::Format;
use flowplane_engine::{CountersSnapshot, Sink};
use flowplane_sinks::{KafkaSink, ValkeySink};
use serde::Serialize;

use self::meter::{Metered, Meters, latency_histogram};
use self::sample::CpuTimes;

/// Loss below which a step holds (0.01 %).
pub(crate) const LOSS_FREE: f64 = 0.0001;

/// Shortest step that counts as sustained (the rule, and what the sizing table means).
const SUSTAINED_SECS: f64 = 30.0;

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Configuration file whose engine and sink settings the benchmark uses (listen addresses,
    /// Valkey key prefix and Kafka topics are replaced by the benchmark's own).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Hardware profile to run under (as `run --profile`): `auto` or a profile name.
    #[arg(long, short, value_name = "NAME|auto")]
    profile: Option<String>,

    /// Rates to climb, records per second, comma-separated (`500k,1M,2M`).
    #[arg(long, value_name = "LIST", default_value = "500k,1M,2M,3M,4M,5M,6M,8M", value_delimiter = ',', value_parser = super::r#gen::parse_count)]
    rates: Vec<f64>,

    /// Seconds each rate is offered. Under 30 s the report marks every result as a short
    /// check, not a sustained rate.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    step_secs: f64,

    /// Bisection steps between the highest rate held and the first one that was not.
    #[arg(long, value_name = "N", default_value_t = 2)]
    refine: u32,

    /// Export format the generator sends.
    #[arg(long, short, value_enum, default_value = "v9")]
    format: Format,

    /// Distinct flows the generator's exporters report.
    #[arg(long, value_name = "N", default_value = "100000", value_parser = parse_flows)]
    flows: u32,

    /// Generator exporters.
    #[arg(long, value_name = "N", default_value_t = 4)]
    exporters: u32,

    /// Records per data datagram.
    #[arg(long, value_name = "N", default_value_t = 24)]
    records_per_datagram: usize,

    /// Flow order of the generator.
    #[arg(long, value_enum, default_value = "zipf")]
    distribution: Distribution,

    /// Share of IPv6 flows (not for v5).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    ipv6_share: f64,

    /// UDP port on 127.0.0.1 the engine listens on for the benchmark.
    #[arg(long, value_name = "PORT", default_value_t = 2099)]
    port: u16,

    /// Core of the generator (default: the last available core when there are two or more).
    #[arg(long, value_name = "CORE")]
    gen_cpu: Option<usize>,

    /// Generator sender threads (all on the generator core).
    #[arg(long, value_name = "N", default_value_t = 1)]
    gen_senders: usize,

    /// Cores of the engine, e.g. `0` or `0-6` or `1,2,3` (default: every available core but
    /// the generator's).
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    collector_cpus: Option<CpuList>,

    /// Run without the sinks: measures the data plane alone (not a sizing-table result).
    #[arg(long)]
    no_sinks: bool,

    /// Directory for the results (`bench.json`, `bench.md`).
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    out: PathBuf,
}

/// A parsed CPU list.
#[derive(Clone, Debug)]
pub(crate) struct CpuList(Vec<usize>);

fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    flowplane_hwprofiles::inspect::parse_cpu_list(s)
        .filter(|v| !v.is_empty())
        .map(CpuList)
        .ok_or_else(|| format!("`{s}` is not a CPU list (e.g. 0, 0-6, 1,3,5)"))
}

fn parse_flows(s: &str) -> Result<u32, String> {
    let v = super::r#gen::parse_count(s)?.round();
    if v > 16_000_000.0 {
        return Err(format!("`{s}`: at most 16M flows"));
    }
    Ok(v as u32)
}

/// One step's result.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Step {
    pub(crate) offered_records_per_sec: f64,
    pub(crate) achieved_records_per_sec: f64,
    /// The generator fell more than 3 % short of the offered rate.
    pub(crate) generator_limited: bool,
    pub(crate) duration_secs: f64,
    pub(crate) records_sent: u64,
    pub(crate) datagrams_sent: u64,
    pub(crate) records_received: u64,
    /// Fewest records any sink wrote.
    pub(crate) records_accounted: u64,
    pub(crate) lost_records: u64,
    pub(crate) loss: f64,
    pub(crate) loss_free: bool,
    pub(crate) losses: Losses,
    pub(crate) sinks: Vec<SinkStep>,
    /// Window close to written in every sink, ms.
    pub(crate) latency_ms: Latency,
    pub(crate) cpu_busy_percent: Vec<CoreBusy>,
    pub(crate) process_cpu_percent: Vec<(String, f64)>,
    pub(crate) rss_max_bytes: u64,
    pub(crate) valkey_commands_per_sec: Option<f64>,
    pub(crate) kafka_messages_per_sec: Option<f64>,
    pub(crate) keys_per_window: f64,
    /// Records in per key written.
    pub(crate) reduction_factor: Option<f64>,
    pub(crate) windows: u64,
}

/// Where records went missing in a step.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Losses {
    pub(crate) socket_drops_datagrams: u64,
    pub(crate) decode_errors: u64,
    pub(crate) sets_without_template: u64,
    pub(crate) table_overflow_additions: u64,
    pub(crate) merger_behind_records: u64,
    pub(crate) late_records: u64,
    pub(crate) sink_windows_dropped: u64,
    /// Sent by the generator but never decoded (socket drops and anything before decoding).
    pub(crate) not_received: u64,
    /// Decoded but missing from at least one sink.
    pub(crate) not_written: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct SinkStep {
    pub(crate) name: &'static str,
    pub(crate) windows: u64,
    pub(crate) records: u64,
    pub(crate) keys: u64,
    pub(crate) documents: u64,
    pub(crate) failures: u64,
    pub(crate) latency_ms: Latency,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
    pub(crate) windows: u64,
}

impl Latency {
    fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            windows: h.len(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct CoreBusy {
    pub(crate) cpu: usize,
    pub(crate) busy_percent: f64,
    pub(crate) role: &'static str,
}

/// Everything fixed for a run.
struct Ctx {
    config: Config,
    gen_cpu: Option<usize>,
    collector_cpus: Vec<usize>,
    args: GenSettings,
    exe: PathBuf,
    valkey_pid: Option<u32>,
    broker_pid: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct GenSettings {
    pub(crate) format: Format,
    pub(crate) flows: u32,
    pub(crate) exporters: u32,
    pub(crate) records_per_datagram: usize,
    pub(crate) distribution: Distribution,
    pub(crate) ipv6_share: f64,
    pub(crate) senders: usize,
    pub(crate) step_secs: f64,
    pub(crate) to: SocketAddr,
}

/// Runs the ladder and writes the report.
pub(crate) fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.step_secs >= 1.0 && args.step_secs.is_finite(),
        "--step-secs must be at least 1"
    );
    anyhow::ensure!(!args.rates.is_empty(), "--rates is empty");
    let selected = args
        .profile
        .as_deref()
        .map(super::profile::select_for_run)
        .transpose()?;
    let mut config = match &selected {
        None => Config::load(args.config.as_deref())?,
        Some((p, _)) => Config::load_with_defaults(args.config.as_deref(), &profile_defaults(p))?,
    };
    super::run::init_logging(&flowplane::config::LogConfig {
        level: "warn".into(),
        ..config.log.clone()
    })?;

    let available = flowplane_engine::current_thread_cpus().context("cannot read the CPU mask")?;
    let gen_cpu = match args.gen_cpu {
        Some(c) => {
            anyhow::ensure!(available.contains(&c), "--gen-cpu {c} is not available");
            Some(c)
        }
        None if available.len() >= 2 => available.last().copied(),
        None => None,
    };
    let collector_cpus = match &args.collector_cpus {
        Some(CpuList(v)) => {
            if let Some(c) = v.iter().find(|c| !available.contains(c)) {
                anyhow::bail!("--collector-cpus names core {c}, which is not available");
            }
            v.clone()
        }
        None => available
            .iter()
            .copied()
            .filter(|c| Some(*c) != gen_cpu)
            .collect(),
    };
    let to = SocketAddr::from(([127, 0, 0, 1], args.port));
    prepare_engine(
        &mut config,
        to,
        &collector_cpus,
        args.config.is_none() && selected.is_none(),
        args.no_sinks,
    );
    config
        .validate()
        .context("the benchmark's engine settings")?;

    let repo_run = Path::new(".run");
    let ctx = Ctx {
        config,
        gen_cpu,
        collector_cpus,
        args: GenSettings {
            format: args.format,
            flows: args.flows,
            exporters: args.exporters,
            records_per_datagram: args.records_per_datagram,
            distribution: args.distribution,
            ipv6_share: args.ipv6_share,
            senders: args.gen_senders,
            step_secs: args.step_secs,
            to,
        },
        exe: std::env::current_exe().context("cannot find the flowplane binary")?,
        valkey_pid: sample::pid_from_file(&repo_run.join("valkey.pid")),
        broker_pid: sample::pid_from_file(&repo_run.join("tansu.pid")),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }

    let mut rates = args.rates.clone();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let mut steps: Vec<Step> = Vec::new();
    let mut best: Option<f64> = None;
    let mut first_bad: Option<f64> = None;
    for &rate in &rates {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let s = run_step(&ctx, rate, &stop)?;
        progress(&s);
        let (ok, limited) = (s.loss_free, s.generator_limited);
        if ok {
            best = Some(best.map_or(s.achieved_records_per_sec, |b: f64| {
                b.max(s.achieved_records_per_sec)
            }));
        } else {
            first_bad = Some(rate);
        }
        steps.push(s);
        if !ok || limited {
            break;
        }
    }
    for _ in 0..args.refine {
        let (Some(good), Some(bad)) = (best, first_bad) else {
            break;
        };
        if stop.load(Ordering::Relaxed) || bad - good < 0.04 * bad {
            break;
        }
        let mid = ((good + bad) / 2.0 / 10_000.0).round() * 10_000.0;
        let s = run_step(&ctx, mid, &stop)?;
        progress(&s);
        if s.loss_free {
            best = Some(good.max(s.achieved_records_per_sec));
        } else {
            first_bad = Some(mid);
        }
        steps.push(s);
    }

    let result = report::Report::new(
        &ctx.config,
        &ctx.args,
        ctx.gen_cpu,
        &ctx.collector_cpus,
        args.profile.as_deref(),
        args.no_sinks,
        steps,
        SUSTAINED_SECS,
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let json_path = args.out.join("bench.json");
    let md_path = args.out.join("bench.md");
    std::fs::write(&json_path, serde_json::to_string_pretty(&result)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let md = result.markdown();
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(md.as_bytes())?;
    writeln!(
        out,
        "\nResults written to {} and {}.",
        json_path.display(),
        md_path.display()
    )?;
    Ok(if result.max_loss_free_records_per_sec.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line per step on stderr while the ladder runs.
fn progress(s: &Step) {
    eprintln!(
        "bench: offered {:>10.0} records/s, sent {:>10.0}/s, loss {:.5} % {}{}",
        s.offered_records_per_sec,
        s.achieved_records_per_sec,
        100.0 * s.loss,
        if s.loss_free { "held" } else { "LOST" },
        if s.generator_limited {
            " (generator-limited)"
        } else {
            ""
        }
    );
}

/// The benchmark's own listener, key prefix and topics; on the engine's defaults, a thread
/// layout that fits the collector cores.
fn prepare_engine(
    config: &mut Config,
    to: SocketAddr,
    collector: &[usize],
    defaults: bool,
    no_sinks: bool,
) {
    let e = &mut config.engine;
    e.listen = vec![to];
    e.stats_interval_secs = 3_600;
    if defaults {
        // One worker per collector core but one (the merger and sinks share that one); with a
        // single core everything shares it, unpinned.
        e.workers = collector.len().saturating_sub(1).max(1);
        e.pin_cores = collector.len() >= 2;
        e.worker_cores.clear();
        e.merger_cores.clear();
        e.sink_cores.clear();
    }
    config.valkey.sink.key_prefix = "fpbench".into();
    let k = &mut config.kafka.sink;
    k.aggregates_topic = "flowplane-bench.aggregates".into();
    k.alerts_topic = "flowplane-bench.alerts".into();
    k.counters_topic = "flowplane-bench.counters".into();
    if no_sinks {
        config.valkey.enabled = false;
        config.kafka.enabled = false;
    }
}

fn build_sinks(
    config: &Config,
    meters: &meter::SharedMeters,
    names: &[&'static str],
) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    for (i, &name) in names.iter().enumerate() {
        let inner: Box<dyn Sink> = match name {
            "valkey" => Box::new(
                ValkeySink::new(config.valkey.sink.clone())
                    .context("cannot set up the Valkey sink")?,
            ),
            _ => Box::new(
                KafkaSink::new(config.kafka.sink.clone())
                    .context("cannot set up the Kafka sink")?,
            ),
        };
        sinks.push(Box::new(Metered::new(inner, i, Arc::clone(meters))));
    }
    Ok(sinks)
}

/// Runs one rate: fresh engine, generator for the step, stop, account.
fn run_step(ctx: &Ctx, rate: f64, stop: &Arc<AtomicBool>) -> anyhow::Result<Step> {
    let mut names: Vec<&'static str> = Vec::new();
    if ctx.config.valkey.enabled {
        names.push("valkey");
    }
    if ctx.config.kafka.enabled {
        names.push("kafka");
    }
    let meters = Meters::new(&names);
    let sinks = build_sinks(&ctx.config, &meters, &names)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let engine_cfg = ctx.config.engine.clone();
    let cores = ctx.collector_cpus.clone();
    let flag = Arc::clone(&shutdown);
    let engine = std::thread::Builder::new()
        .name("fp-bench-engine".into())
        .spawn(move || {
            flowplane_engine::confine_current_thread(&cores)?;
            let r = flowplane_engine::run_with(&engine_cfg, sinks, flag, |_| {
                let _ = ready_tx.send(());
            });
            Ok::<_, anyhow::Error>(r?)
        })
        .context("cannot start the engine thread")?;
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        shutdown.store(true, Ordering::SeqCst);
        return match engine.join() {
            Ok(Err(e)) => Err(e.context("the engine did not start")),
            _ => Err(anyhow::anyhow!("the engine did not start within 30 s")),
        };
    }

    let mut valkey = if ctx.config.valkey.enabled {
        flowplane_sinks::valkey::connect(&ctx.config.valkey.sink).ok()
    } else {
        None
    };
    let cmds0 = valkey.as_mut().and_then(sample::valkey_commands);

    let mut cmd = Command::new(&ctx.exe);
    let a = &ctx.args;
    cmd.arg("gen")
        .args(["--to", &a.to.to_string()])
        .args(["--format", &format_name(a.format)])
        .args(["--rate", &format!("{rate:.0}")])
        .args(["--duration", &a.step_secs.to_string()])
        .args(["--exporters", &a.exporters.to_string()])
        .args([
            "--records-per-datagram",
            &a.records_per_datagram.to_string(),
        ])
        .args(["--flows", &a.flows.to_string()])
        .args(["--distribution", &distribution_name(a.distribution)])
        .args(["--ipv6-share", &a.ipv6_share.to_string()])
        .args(["--senders", &a.senders.to_string()])
        .arg("--json")
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    if let Some(c) = ctx.gen_cpu {
        cmd.args(["--cpu", &c.to_string()]);
    }
    let me = std::process::id();
    let mut watched: Vec<(String, u32)> = vec![("flowplane".into(), me)];
    if let Some(p) = ctx.valkey_pid {
        watched.push(("valkey".into(), p));
    }
    if let Some(p) = ctx.broker_pid {
        watched.push(("broker".into(), p));
    }
    let mut child = cmd.spawn().context("cannot start `flowplane gen`")?;
    watched.push(("generator".into(), child.id()));

    // Steady-state samples: from a little after the start to the end of sending.
    let started = Instant::now();
    let warm = Duration::from_secs_f64((a.step_secs / 5.0).min(3.0));
    let mut cpu0: Option<(CpuTimes, Instant, Vec<Option<f64>>)> = None;
    let mut last: (CpuTimes, Instant, Vec<Option<f64>>) = (CpuTimes::default(), started, vec![]);
    let mut rss_max = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait().context("cannot wait for the generator")? {
            break s;
        }
        if stop.load(Ordering::Relaxed) {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
        }
        rss_max = rss_max.max(sample::rss_bytes(me).unwrap_or(0));
        let snap = || {
            (
                CpuTimes::now(),
                Instant::now(),
                watched
                    .iter()
                    .map(|(_, p)| sample::process_cpu_secs(*p))
                    .collect::<Vec<_>>(),
            )
        };
        if cpu0.is_none() && started.elapsed() >= warm {
            cpu0 = Some(snap());
        }
        if cpu0.is_some() {
            last = snap();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stdout = String::new();
    if let Some(mut o) = child.stdout.take() {
        std::io::Read::read_to_string(&mut o, &mut stdout)?;
    }
    let generated: Option<GenSummary> = serde_json::from_str(stdout.trim()).ok();

    // Let the workers read what is still queued on their sockets (a datagram left there at
    // shutdown would be lost without a count) and hand off the last window, then stop: the
    // engine flushes every open window to the sinks before `run` returns.
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while sample::udp_rx_queue(ctx.args.to.port()).is_some_and(|q| q > 0)
        && Instant::now() < drain_deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1_200));
    shutdown.store(true, Ordering::SeqCst);
    let report = match engine.join() {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the engine thread panicked"),
    };
    let Some(generated) = generated else {
        anyhow::bail!("`flowplane gen` failed ({status}) and printed no report: {stdout}");
    };
    let cmds1 = valkey.as_mut().and_then(sample::valkey_commands);

    let (cpu_busy, proc_cpu) = match &cpu0 {
        Some((c0, t0, p0)) => {
            let (c1, t1, p1) = &last;
            let secs = t1.duration_since(*t0).as_secs_f64().max(1e-3);
            let busy = c1
                .busy_since(c0)
                .into_iter()
                .map(|(cpu, b)| CoreBusy {
                    cpu,
                    busy_percent: b,
                    role: if Some(cpu) == ctx.gen_cpu {
                        "generator"
                    } else if ctx.collector_cpus.contains(&cpu) {
                        "flowplane"
                    } else {
                        "other"
                    },
                })
                .collect();
            let procs = watched
                .iter()
                .zip(p0.iter().zip(p1))
                .filter_map(|((name, _), (a, b))| {
                    Some((name.clone(), 100.0 * (b.as_ref()? - a.as_ref()?) / secs))
                })
                .collect();
            (busy, procs)
        }
        None => (Vec::new(), Vec::new()),
    };

    let m = meters.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(account(
        rate,
        &generated,
        &report.counters,
        &m,
        cpu_busy,
        proc_cpu,
        rss_max,
        cmds0.zip(cmds1).map(|(a, b)| b.saturating_sub(a)),
    ))
}

/// The part of `flowplane gen --json` the benchmark reads.
#[derive(Clone, Debug, serde::Deserialize)]
struct GenSummary {
    records: u64,
    datagrams: u64,
    duration_secs: f64,
    achieved_records_per_sec: f64,
}

fn format_name(f: Format) -> String {
    clap::ValueEnum::to_possible_value(&f).map_or_else(String::new, |v| v.get_name().to_string())
}

fn distribution_name(d: Distribution) -> String {
    clap::ValueEnum::to_possible_value(&d).map_or_else(String::new, |v| v.get_name().to_string())
}

/// Puts one step's numbers together.
#[allow(clippy::too_many_arguments)]
fn account(
    rate: f64,
    generated: &GenSummary,
    c: &CountersSnapshot,
    m: &Meters,
    cpu_busy_percent: Vec<CoreBusy>,
    process_cpu_percent: Vec<(String, f64)>,
    rss_max_bytes: u64,
    valkey_commands: Option<u64>,
) -> Step {
    let sent = generated.records;
    let received = c.workers.records;
    let accounted = if m.sinks.is_empty() {
        // Without sinks, what the engine decoded is all there is to account for.
        received
    } else {
        m.sinks.iter().map(|s| s.records).min().unwrap_or(0)
    };
    let overflow = c.workers.table_overflow + c.merge_overflow;
    let lost = sent.saturating_sub(accounted) + overflow;
    let loss = if sent > 0 {
        lost as f64 / sent as f64
    } else {
        1.0
    };
    let secs = generated.duration_secs.max(1e-3);
    let windows = m.sinks.iter().map(|s| s.windows).max().unwrap_or(0);
    let keys = m.sinks.first().map_or(0, |s| s.keys);
    let kafka = m.sinks.iter().find(|s| s.name == "kafka");
    Step {
        offered_records_per_sec: rate,
        achieved_records_per_sec: generated.achieved_records_per_sec,
        generator_limited: generated.achieved_records_per_sec < 0.97 * rate,
        duration_secs: generated.duration_secs,
        records_sent: sent,
        datagrams_sent: generated.datagrams,
        records_received: received,
        records_accounted: accounted,
        lost_records: lost,
        loss,
        loss_free: sent > 0 && loss < LOSS_FREE,
        losses: Losses {
            socket_drops_datagrams: c.workers.socket_drops,
            decode_errors: c.decode_errors_total(),
            sets_without_template: c.workers.sets_without_template,
            table_overflow_additions: overflow,
            merger_behind_records: c.workers.merger_behind_records,
            late_records: c.late_records,
            sink_windows_dropped: c.sinks.iter().map(|s| s.windows_dropped).sum(),
            not_received: sent.saturating_sub(received),
            not_written: received.saturating_sub(accounted),
        },
        sinks: m
            .sinks
            .iter()
            .map(|s| SinkStep {
                name: s.name,
                windows: s.windows,
                records: s.records,
                keys: s.keys,
                documents: s.documents,
                failures: s.failures,
                latency_ms: Latency::of(&s.close_to_written_ms),
            })
            .collect(),
        latency_ms: if m.sinks.is_empty() {
            Latency::of(&latency_histogram())
        } else {
            Latency::of(&m.all_sinks_latency())
        },
        cpu_busy_percent,
        process_cpu_percent,
        rss_max_bytes,
        valkey_commands_per_sec: valkey_commands.map(|n| n as f64 / secs),
        kafka_messages_per_sec: kafka.map(|k| k.documents as f64 / secs),
        keys_per_window: if windows > 0 {
            keys as f64 / windows as f64
        } else {
            0.0
        },
        reduction_factor: (keys > 0).then(|| accounted as f64 / keys as f64),
        windows,
    }
}
