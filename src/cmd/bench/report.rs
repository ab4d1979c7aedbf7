//! The benchmark's report: every step, this machine's row in the form of the sizing table next
//! to the table's own rows, a projection to the 8-, 16- and 32-core tiers (said to be one), and
//! the targets met or not. Written as JSON and as Markdown.

use std::fmt::Write as _;
use std::path::Path;

use flowplane::config::Config;
use flowplane_hwprofiles::Machine;
use flowplane_hwprofiles::profile::{self, Role};
use flowplane_hwprofiles::verdict::nic_records_per_sec;
use serde::Serialize;

use super::{GenSettings, Step};

/// The sizing table of the product brief (event rate, CPU, RAM, disk, NIC, verdict,
/// bottleneck), for comparison.
const SIZING_TABLE: [[&str; 7]; 5] = [
    [
        "up to 80K/s",
        "8 cores",
        "32 GB",
        "1 TB HDD",
        "1 GbE",
        "fits",
        "disk I/O",
    ],
    [
        "up to 250K/s",
        "8 cores",
        "32 GB",
        "1 TB NVMe",
        "10 GbE",
        "comfortable",
        "CPU",
    ],
    [
        "up to 400K/s",
        "16 cores",
        "64 GB",
        "2 TB NVMe",
        "10 GbE",
        "tight",
        "CPU at peak",
    ],
    [
        "500K/s (target)",
        "32 cores",
        "96 GB",
        "2x1 TB NVMe",
        "25 GbE",
        "recommended",
        "none at 70%",
    ],
    [
        "500K/s + HA",
        "3 x 16 cores",
        "3 x 64 GB",
        "3 x 2 TB NVMe",
        "10 GbE each",
        "production",
        "fully redundant",
    ],
];

/// The target for this 2-core machine, records/s with both sinks live.
const TARGET_RECORDS_PER_SEC: f64 = 4_000_000.0;
/// The target for window close to visible in Valkey and Kafka, p99, ms.
const TARGET_LATENCY_P99_MS: u64 = 50;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) flowplane_version: &'static str,
    pub(crate) started_unix_secs: u64,
    pub(crate) machine: MachineRow,
    pub(crate) generator: GenSettings,
    pub(crate) profile: Option<String>,
    pub(crate) sinks_live: bool,
    pub(crate) engine: EngineRow,
    pub(crate) cores: String,
    /// Every step lasted at least 30 s.
    pub(crate) sustained: bool,
    pub(crate) steps: Vec<Step>,
    pub(crate) max_loss_free_records_per_sec: Option<f64>,
    pub(crate) records_per_sec_per_worker_core: Option<f64>,
    pub(crate) bottleneck: String,
    pub(crate) sizing_row: [String; 7],
    pub(crate) projection: Vec<Projection>,
    pub(crate) targets: Vec<Target>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct MachineRow {
    pub(crate) cpu_model: Option<String>,
    pub(crate) cores: Option<usize>,
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) disk: String,
    pub(crate) nic: String,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct EngineRow {
    pub(crate) workers: usize,
    pub(crate) pin_cores: bool,
    pub(crate) receive: String,
    pub(crate) dimensions: Vec<String>,
    pub(crate) merger_shards: usize,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Projection {
    pub(crate) profile: String,
    pub(crate) cores: usize,
    pub(crate) worker_cores: usize,
    /// Measured records/s per worker core here, times the tier's worker cores.
    pub(crate) projected_records_per_sec: f64,
    /// What the tier's NIC carries at 400 bytes per record.
    pub(crate) nic_cap_records_per_sec: u64,
    /// The smaller of the two: what the tier would hold if the projection is right.
    pub(crate) projected_capped_records_per_sec: f64,
    /// The sizing table's rate for that tier.
    pub(crate) sizing_table_records_per_sec: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Target {
    pub(crate) what: String,
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) met: bool,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &Config,
        generator: &GenSettings,
        gen_cpu: Option<usize>,
        collector: &[usize],
        profile_name: Option<&str>,
        no_sinks: bool,
        steps: Vec<Step>,
        sustained_secs: f64,
    ) -> Self {
        let machine = Machine::inspect(Path::new("/"));
        let best = steps
            .iter()
            .filter(|s| s.loss_free)
            .map(|s| s.achieved_records_per_sec)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
        let e = &config.engine;
        let workers = e.workers.max(1);
        let per_core = best.map(|b| b / workers as f64);
        let sustained = !steps.is_empty() && generator.step_secs >= sustained_secs;
        let bottleneck = bottleneck(&steps);
        let machine_row = MachineRow {
            cpu_model: super::sample::cpu_model(),
            cores: machine.cpus.count(),
            memory_bytes: machine.memory_bytes,
            disk: disk_text(&machine),
            nic: nic_text(&machine),
        };
        let cores = match gen_cpu {
            Some(g) if !collector.contains(&g) => format!(
                "generator alone on core {g}; flowplane (workers, merger, sinks) on cores {}; \
                 Valkey and the broker were not pinned and ran wherever the kernel put them",
                flowplane_hwprofiles::inspect::cpu_list(collector)
            ),
            Some(g) => format!(
                "generator on core {g}, which flowplane shares (cores {}): the figures are a floor",
                flowplane_hwprofiles::inspect::cpu_list(collector)
            ),
            None => format!(
                "one core: generator, flowplane, Valkey and the broker all shared core(s) {}; \
                 the figures are a floor",
                flowplane_hwprofiles::inspect::cpu_list(collector)
            ),
        };
        let sizing_row = sizing_row(&machine_row, best, &bottleneck, no_sinks, sustained);
        let projection = per_core.map_or_else(Vec::new, projection);
        let targets = targets(&steps, best, no_sinks, sustained);
        Self {
            flowplane_version: env!("CARGO_PKG_VERSION"),
            started_unix_secs: super::meter::unix_ms() / 1_000,
            machine: machine_row,
            generator: generator.clone(),
            profile: profile_name.map(str::to_string),
            sinks_live: !no_sinks,
            engine: EngineRow {
                workers,
                pin_cores: e.pin_cores,
                receive: format!("{:?}", e.receive).to_lowercase(),
                dimensions: e.dimensions.clone(),
                merger_shards: e.merger_shards,
            },
            cores,
            sustained,
            steps,
            max_loss_free_records_per_sec: best,
            records_per_sec_per_worker_core: per_core,
            bottleneck,
            sizing_row,
            projection,
            targets,
        }
    }

    pub(crate) fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let g = &self.generator;
        let _ = writeln!(o, "# flowplane bench\n");
        let _ = writeln!(
            o,
            "flowplane {} on {} ({} cores, {} RAM). Generator: {:?}, {} distinct flows ({:?}), {} \
             exporters, {} records per datagram, {:.0} s per step, to {}. Engine: {} worker(s), \
             receive {}, {} dimensions, sinks {}.\n",
            self.flowplane_version,
            m.cpu_model.as_deref().unwrap_or("unknown CPU"),
            m.cores.map_or_else(|| "?".into(), |c| c.to_string()),
            m.memory_bytes.map_or_else(|| "?".into(), gb),
            g.format,
            g.flows,
            g.distribution,
            g.exporters,
            g.records_per_datagram,
            g.step_secs,
            g.to,
            self.engine.workers,
            self.engine.receive,
            self.engine.dimensions.len(),
            if self.sinks_live {
                "live (Valkey and Kafka)"
            } else {
                "OFF (data plane only: not a sizing result)"
            },
        );
        let _ = writeln!(o, "Cores: {}.\n", self.cores);
        if !self.sustained {
            let _ = writeln!(
                o,
                "**Short check:** steps of {:.0} s are under the 30 s a sustained rate needs; \
                 these figures are not a sizing result.\n",
                g.step_secs
            );
        }
        let _ = writeln!(o, "## Steps\n");
        let _ = writeln!(
            o,
            "| offered rec/s | sent rec/s | accounted | loss | held | busy % per core | process CPU % | RSS | close→visible ms p50/p99/max | Valkey cmd/s | Kafka msg/s | keys/window | reduction |"
        );
        let _ = writeln!(
            o,
            "|---:|---:|---:|---:|:---:|---|---|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.steps {
            let cores: Vec<String> = s
                .cpu_busy_percent
                .iter()
                .map(|c| format!("{}:{:.0} ({})", c.cpu, c.busy_percent, c.role))
                .collect();
            let procs: Vec<String> = s
                .process_cpu_percent
                .iter()
                .map(|(n, p)| format!("{n} {p:.0}"))
                .collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.4} % | {} | {} | {} | {} | {}/{}/{} | {} | {} | {:.0} | {} |",
                si(s.offered_records_per_sec),
                si(s.achieved_records_per_sec),
                s.records_accounted,
                100.0 * s.loss,
                match (s.loss_free, s.generator_limited) {
                    (true, false) => "yes",
                    (true, true) => "yes (generator-limited)",
                    (false, _) => "**no**",
                },
                cores.join(", "),
                procs.join(", "),
                gb(s.rss_max_bytes),
                s.latency_ms.p50,
                s.latency_ms.p99,
                s.latency_ms.max,
                s.valkey_commands_per_sec.map_or_else(|| "-".into(), si),
                s.kafka_messages_per_sec.map_or_else(|| "-".into(), si),
                s.keys_per_window,
                s.reduction_factor
                    .map_or_else(|| "-".into(), |r| format!("{r:.0}x")),
            );
        }
        let _ = writeln!(o);
        for s in self.steps.iter().filter(|s| !s.loss_free) {
            let l = &s.losses;
            let _ = writeln!(
                o,
                "Losses at {} rec/s: {} records not received (kernel socket drops: {} datagrams; \
                 decode errors {}; sets without template {}), {} received but not written by \
                 every sink (sink windows dropped {}, merger-behind records {}, late records {}), \
                 table overflow additions {}.\n",
                si(s.offered_records_per_sec),
                l.not_received,
                l.socket_drops_datagrams,
                l.decode_errors,
                l.sets_without_template,
                l.not_written,
                l.sink_windows_dropped,
                l.merger_behind_records,
                l.late_records,
                l.table_overflow_additions,
            );
        }
        let _ = writeln!(
            o,
            "Highest loss-free rate: **{}** records/s{}. Bottleneck: {}.\n",
            self.max_loss_free_records_per_sec
                .map_or_else(|| "none".into(), si),
            self.records_per_sec_per_worker_core
                .map_or_else(String::new, |p| format!(" ({} per worker core)", si(p))),
            self.bottleneck
        );

        let _ = writeln!(o, "## This machine in the sizing table\n");
        let _ = writeln!(
            o,
            "| Event rate | CPU | RAM | Disk | NIC | Verdict | Bottleneck |\n|---|---|---|---|---|---|---|"
        );
        for row in SIZING_TABLE {
            let _ = writeln!(o, "| {} |", row.join(" | "));
        }
        let _ = writeln!(o, "| **{}** |\n", self.sizing_row.join("** | **"));

        if !self.projection.is_empty() {
            let _ = writeln!(
                o,
                "## Projection to the tiers (a projection, not a measurement)\n\n\
                 Measured records/s per worker core here, times the tier profile's worker cores. \
                 It assumes the rate grows with worker cores, that the merger and sinks keep up \
                 on their own cores (their work grows with keys per second, not records), that \
                 Valkey and the broker run elsewhere, and that the generator is elsewhere; the \
                 NIC column is the sizing table's 400 bytes per record rule, which caps every \
                 tier long before its cores do. Run `flowplane bench` on the tier's machine for \
                 its measured row.\n"
            );
            let _ = writeln!(
                o,
                "| Tier | cores | worker cores | projected rec/s | NIC cap rec/s | projected, NIC-capped | sizing table rec/s |\n|---|---:|---:|---:|---:|---:|---:|"
            );
            for p in &self.projection {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    p.profile,
                    p.cores,
                    p.worker_cores,
                    si(p.projected_records_per_sec),
                    si(p.nic_cap_records_per_sec as f64),
                    si(p.projected_capped_records_per_sec),
                    si(p.sizing_table_records_per_sec as f64)
                );
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(
            o,
            "## Targets\n\n| Target | Wanted | Measured | Met |\n|---|---|---|---|"
        );
        for t in &self.targets {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                t.what,
                t.target,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
        o
    }
}

/// 4_100_000 -> "4.10M", 350_000 -> "350K".
pub(crate) fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / (1u64 << 30) as f64)
}

fn disk_text(m: &Machine) -> String {
    if m.disks.is_empty() {
        return "unknown".into();
    }
    let ssd = m
        .disks
        .iter()
        .filter(|d| d.rotational == Some(false))
        .count();
    let hdd = m
        .disks
        .iter()
        .filter(|d| d.rotational == Some(true))
        .count();
    match (ssd, hdd) {
        (0, 0) => "unknown type".into(),
        (s, 0) => format!("{s} non-rotational"),
        (0, h) => format!("{h} HDD"),
        (s, h) => format!("{s} non-rotational, {h} HDD"),
    }
}

fn nic_text(m: &Machine) -> String {
    m.fastest_physical_nic().map_or_else(
        || "no physical NIC with a known speed (tested on loopback)".into(),
        |n| format!("{} {} Mb/s", n.name, n.speed_mbps),
    )
}

/// What limited the ladder: the first step that lost records, by its largest loss, or the
/// generator when every step held.
fn bottleneck(steps: &[Step]) -> String {
    let busiest = |s: &Step| {
        s.cpu_busy_percent
            .iter()
            .filter(|c| c.role == "flowplane")
            .map(|c| c.busy_percent)
            .fold(0.0f64, f64::max)
    };
    if let Some(s) = steps.iter().find(|s| !s.loss_free) {
        let l = &s.losses;
        let rpd = if s.datagrams_sent > 0 {
            s.records_sent as f64 / s.datagrams_sent as f64
        } else {
            0.0
        };
        let dropped_records = l.socket_drops_datagrams as f64 * rpd;
        let parts = [
            (
                dropped_records,
                "receive: the kernel dropped datagrams the workers did not read in time",
            ),
            (
                l.not_written as f64,
                "sinks: windows did not reach every sink",
            ),
            (
                l.merger_behind_records as f64,
                "merger: workers discarded windows",
            ),
            (l.table_overflow_additions as f64, "aggregation tables full"),
            (
                (l.decode_errors + l.sets_without_template) as f64,
                "decoding refused datagrams",
            ),
        ];
        let (_, what) =
            parts.iter().copied().fold(
                (0.0, "unaccounted loss"),
                |m, p| if p.0 > m.0 { p } else { m },
            );
        return format!(
            "{what} (at {} rec/s; busiest flowplane core {:.0} % busy)",
            si(s.offered_records_per_sec),
            busiest(s)
        );
    }
    match steps.last() {
        Some(s) if s.generator_limited => format!(
            "the generator: it could not offer more than {} rec/s on its core, and flowplane \
             held all of it (busiest flowplane core {:.0} % busy)",
            si(s.achieved_records_per_sec),
            busiest(s)
        ),
        Some(s) => format!(
            "none reached: every rate offered was held (raise --rates; busiest flowplane core \
             {:.0} % busy at the top rate)",
            busiest(s)
        ),
        None => "no step ran".into(),
    }
}

fn sizing_row(
    m: &MachineRow,
    best: Option<f64>,
    bottleneck: &str,
    no_sinks: bool,
    sustained: bool,
) -> [String; 7] {
    let rate = best.map_or_else(
        || "none loss-free".into(),
        |b| format!("{}/s measured", si(b)),
    );
    let verdict = match best {
        _ if no_sinks => "not a sizing result: sinks off".to_string(),
        _ if !sustained => "not a sizing result: short steps".to_string(),
        Some(b) if b >= 500_000.0 => format!(
            "holds the 500K/s target row ({:.1}x) on this machine",
            b / 500_000.0
        ),
        Some(b) if b >= 250_000.0 => "between the 250K/s and 500K/s rows".to_string(),
        Some(_) => "below the 250K/s row".to_string(),
        None => "holds no rate loss-free".to_string(),
    };
    [
        rate,
        format!(
            "{} cores{}",
            m.cores.map_or_else(|| "?".into(), |c| c.to_string()),
            m.cpu_model
                .as_deref()
                .map_or_else(String::new, |c| format!(" ({c})"))
        ),
        m.memory_bytes.map_or_else(|| "?".into(), gb),
        m.disk.clone(),
        m.nic.clone(),
        verdict,
        bottleneck
            .split(" (")
            .next()
            .unwrap_or(bottleneck)
            .to_string(),
    ]
}

fn projection(per_core: f64) -> Vec<Projection> {
    let Ok(all) = profile::builtin() else {
        return Vec::new();
    };
    all.iter()
        .filter(|p| p.role == Role::Single)
        .map(|p| Projection {
            profile: p.name.clone(),
            cores: p.sizing.cores,
            worker_cores: p.cores.workers.len(),
            projected_records_per_sec: per_core * p.cores.workers.len() as f64,
            nic_cap_records_per_sec: nic_records_per_sec(p.sizing.nic_gbps * 1_000),
            projected_capped_records_per_sec: (per_core * p.cores.workers.len() as f64)
                .min(nic_records_per_sec(p.sizing.nic_gbps * 1_000) as f64),
            sizing_table_records_per_sec: p.sizing.records_per_sec,
        })
        .collect()
}

fn targets(steps: &[Step], best: Option<f64>, no_sinks: bool, sustained: bool) -> Vec<Target> {
    let caveat = match (no_sinks, sustained) {
        (true, _) => " (sinks off: does not count)",
        (false, false) => " (short steps: does not count)",
        _ => "",
    };
    let b = best.unwrap_or(0.0);
    let p99 = steps
        .iter()
        .filter(|s| s.loss_free && s.latency_ms.windows > 0)
        .map(|s| s.latency_ms.p99)
        .max();
    vec![
        Target {
            what:
                "records/s held with loss under 0.01 %, both sinks live, generator on this machine"
                    .into(),
            target: format!(">= {}", si(TARGET_RECORDS_PER_SEC)),
            measured: format!("{}{caveat}", si(b)),
            met: b >= TARGET_RECORDS_PER_SEC && caveat.is_empty(),
        },
        Target {
            what: "window close to visible in Valkey and Kafka, p99 (worst loss-free step)".into(),
            target: format!("< {TARGET_LATENCY_P99_MS} ms"),
            measured: p99.map_or_else(
                || "no window measured".into(),
                |p| format!("{p} ms{caveat}"),
            ),
            met: p99.is_some_and(|p| p < TARGET_LATENCY_P99_MS) && caveat.is_empty(),
        },
    ]
}
