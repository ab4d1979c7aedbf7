//! The `flowplane` binary: `run` (the data plane), `top` (ask Valkey), `decode` (debug an
//! exporter from a capture), `replay` (send a capture to a collector), `gen` (generate flow
//! exports at a rate), `bench` (measure this machine against the sizing table), `kafka-tail` (read
//! back what went to Kafka) and `profile` (which hardware profile this machine fits).
//!
//! Commands print their answer to stdout; diagnostics and summaries go to stderr. A command that
//! cannot start (bad configuration, unreadable file, unreachable Valkey for `top`) exits with
//! status 1 and one clear line saying why.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

mod cmd;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Flow telemetry data plane: NetFlow v5/v9 and IPFIX in, 1-second aggregates out to Valkey and
/// Kafka.
#[derive(Debug, Parser)]
#[command(name = "flowplane", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the data plane: receive flow exports, aggregate per second, write to the sinks.
    ///
    /// Stops on SIGINT or SIGTERM after flushing the open window (a second signal exits at once).
    Run {
        /// Configuration file (TOML). Without one, the defaults apply (see
        /// flowplane.example.toml).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,

        /// Hardware profile whose settings become the defaults: `auto` (the largest tier this
        /// machine fits) or tier-8, tier-16, tier-32, ha-3x16. The configuration file overrides
        /// them. A profile that does not fit this machine is refused.
        #[arg(long, short, value_name = "NAME|auto")]
        profile: Option<String>,
    },

    /// Top keys of a dimension by bytes over the last minute(s), or one key's per-second
    /// series, from Valkey.
    Top(cmd::top::TopArgs),

    /// Decode a pcap / pcapng capture or a raw datagram dump and print every flow record as
    /// one JSON object per line; a summary goes to stderr.
    Decode(cmd::decode::DecodeArgs),

    /// Send the UDP payloads of a capture to a collector.
    Replay(cmd::replay::ReplayArgs),

    /// Generate flow exports (NetFlow v5/v9, IPFIX, sFlow) at a target rate from several
    /// exporters, and report exactly what was sent: a load generator for collectors.
    Gen(cmd::r#gen::GenArgs),

    /// Measure the highest rate this machine holds loss-free with both sinks live: runs the
    /// engine and the generator at a ladder of rates and reports each step, this machine's row
    /// of the sizing table and a projection to the tiers (JSON and Markdown).
    Bench(cmd::bench::BenchArgs),

    /// Inspect this machine (cores, memory, NICs, disks, io_uring, kernel settings) and say
    /// which hardware profile fits, what rate it should hold, what caps it and what to change.
    Profile(cmd::profile::ProfileArgs),

    /// Print the newest messages of a Kafka topic (by default the aggregates topic), one
    /// payload per line: a check of what flowplane wrote.
    KafkaTail(cmd::kafka_tail::KafkaTailArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, profile } => cmd::run::run(config.as_deref(), profile.as_deref()),
        Command::Top(args) => cmd::top::top(&args),
        Command::Decode(args) => cmd::decode::decode(&args),
        Command::Replay(args) => cmd::replay::replay(&args),
        Command::Gen(args) => cmd::r#gen::r#gen(&args),
        Command::Bench(args) => cmd::bench::bench(&args),
        Command::KafkaTail(args) => cmd::kafka_tail::kafka_tail(&args),
        Command::Profile(args) => cmd::profile::profile(&args),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`flowplane top | head`): its choice, not a failure, and stderr
        // may be the same closed pipe.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowplane: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, "what failed: why", leaving out a cause whose text the
/// message already carries (many errors print their source themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
