//! `flowplane run`: the data plane.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use flowplane::config::{Config, LogConfig, LogFormat, profile_defaults};
use flowplane_sinks::{KafkaSink, ValkeySink};
use tracing_subscriber::EnvFilter;

/// Loads the configuration (under the hardware profile's settings when one is named), starts
/// logging, installs the signal handlers and runs the engine until SIGINT or SIGTERM.
pub(crate) fn run(config_path: Option<&Path>, profile: Option<&str>) -> anyhow::Result<ExitCode> {
    let selected = profile.map(super::profile::select_for_run).transpose()?;
    let config = match &selected {
        None => Config::load(config_path)?,
        Some((p, _)) => Config::load_with_defaults(config_path, &profile_defaults(p))?,
    };
    init_logging(&config.log)?;
    let shutdown = install_signal_handlers()?;

    if let Some((p, verdict)) = &selected {
        tracing::info!(
            profile = %p.name,
            expected_records_per_sec = verdict.records_per_sec,
            limit = %verdict.limit,
            "Hardware profile applied; the configuration file overrides its settings."
        );
        for advice in &verdict.advice {
            tracing::warn!(profile = %p.name, "{advice}");
        }
    }

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config_path.map_or("(defaults)".into(), |p| p.display().to_string()),
        workers = config.engine.workers,
        dimensions = ?config
            .engine
            .dimension_specs()
            .map(|d| d.iter().map(|d| d.name().to_string()).collect::<Vec<_>>())
            .unwrap_or_default(),
        "flowplane starting"
    );
    let e = &config.engine;
    tracing::info!(
        pin_cores = e.pin_cores,
        worker_cores = ?e.worker_cores,
        merger_shards = e.merger_shards,
        merger_cores = ?e.merger_cores,
        sink_cores = ?e.sink_cores,
        "Thread layout (empty core lists: engine defaults; the engine logs the cores it uses)."
    );

    let sinks = build_sinks(&config)?;

    let report = flowplane_engine::run(&config.engine, sinks, shutdown)?;
    let c = &report.counters;
    tracing::info!(
        datagrams = c.workers.datagrams,
        records = c.workers.records,
        windows = c.windows_closed,
        "flowplane stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// The sinks the configuration enables. Building one never touches the network: a sink that is
/// down at start shows up as failed sends (buffered and retried), not as a refusal to start.
fn build_sinks(config: &Config) -> anyhow::Result<Vec<Box<dyn flowplane_engine::Sink>>> {
    let mut sinks: Vec<Box<dyn flowplane_engine::Sink>> = Vec::new();
    if config.valkey.enabled {
        let sink =
            ValkeySink::new(config.valkey.sink.clone()).context("cannot set up the Valkey sink")?;
        tracing::info!(url = %config.valkey.sink.url, prefix = %config.valkey.sink.key_prefix,
            ttl_secs = config.valkey.sink.ttl_secs, "Writing windows to Valkey.");
        sinks.push(Box::new(sink));
    }
    if config.kafka.enabled {
        let sink =
            KafkaSink::new(config.kafka.sink.clone()).context("cannot set up the Kafka sink")?;
        tracing::info!(brokers = %config.kafka.sink.brokers,
            aggregates = %config.kafka.sink.aggregates_topic,
            alerts = %config.kafka.sink.alerts_topic,
            counters = %config.kafka.sink.counters_topic, "Writing windows to Kafka.");
        sinks.push(Box::new(sink));
    }
    if sinks.is_empty() {
        tracing::warn!(
            "Both sinks are disabled: windows are aggregated and counted, then dropped."
        );
    }
    Ok(sinks)
}

/// Logging to stderr, filtered by `RUST_LOG` when set, else by `log.level`.
pub(crate) fn init_logging(log: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::builder()
            .parse(&env)
            .with_context(|| format!("RUST_LOG=`{env}` is not a log filter"))?,
        _ => EnvFilter::builder()
            .parse(&log.level)
            .with_context(|| format!("invalid setting `log.level`: `{}`", log.level))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// SIGINT and SIGTERM set the returned flag, which asks the engine to flush and stop; a second
/// signal while it is stopping exits at once (status 1).
fn install_signal_handlers() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let shutdown = Arc::new(AtomicBool::new(false));
    // The handlers only queue the signal; a small thread says what it does with each. SIGHUP (a
    // closed terminal, logrotate's habit) would otherwise end the process without a flush: it
    // is logged and ignored; there is no reload.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot install the signal handlers")?;
    let flag = Arc::clone(&shutdown);
    std::thread::Builder::new()
        .name("fp-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    tracing::info!(
                        "SIGHUP ignored: flowplane has no reload; restart it to apply a new \
                         configuration."
                    );
                } else if !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!(
                        signal,
                        "Stopping: the open window is flushed first (a second signal exits at \
                         once)."
                    );
                } else {
                    tracing::warn!(
                        signal,
                        "Second signal: exiting at once; windows not yet written to the sinks \
                         are lost (the last summary line has the counts)."
                    );
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(shutdown)
}
