//! The sending side of the generator: every exporter's datagrams are built before the first
//! send, then each sender thread stamps a batch of them (sequence number, export time) and
//! hands it to the kernel with one `sendmmsg`, paced to the target rate.
//!
//! Every exporter has its own socket (its own source address on loopback: 127.0.0.2,
//! 127.0.0.3, ...), its own sequence numbers and its own observation domain / source id, and
//! resends its templates every `template_refresh` as a router does. What was sent is counted
//! per exporter from what the kernel accepted, so that a benchmark can account for every record.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use flowplane_engine::transmit::{SEND_BATCH_MAX, send_batch};
use serde::Serialize;

use super::flows::{Distribution, FlowSpace};
use super::wire::{Encoder, Flow, Format, stamp};

/// Most records kept prebuilt, all exporters together (a few hundred MB at most). A population
/// larger than a pool is still covered across passes only in part; the report says how many
/// distinct flows each pool holds.
const POOL_RECORDS_MAX: usize = 4_000_000;

/// What to send.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Collector address.
    pub to: SocketAddr,
    /// Export format.
    pub format: Format,
    /// Target records per second, all exporters together; `None`: as fast as the socket takes.
    pub rate: Option<f64>,
    /// How long to send; `None`: until `stop`.
    pub duration: Option<Duration>,
    /// Exporters (at least 1, at most 250).
    pub exporters: u32,
    /// Records per data datagram (v5: at most 30).
    pub records_per_datagram: usize,
    /// Distinct flows.
    pub flows: u32,
    /// Order in which each exporter reports flows.
    pub distribution: Distribution,
    /// Zipf exponent `s`.
    pub zipf_exponent: f64,
    /// Fraction of flows over IPv6 (not for v5).
    pub ipv6_share: f64,
    /// Template resend interval (v9, IPFIX).
    pub template_refresh: Duration,
    /// Sender threads; exporters are dealt out among them.
    pub senders: usize,
    /// Core every sender thread is pinned to.
    pub cpu: Option<usize>,
    /// sFlow sampling rate written in flow samples.
    pub sampling_rate: u32,
}

/// What one exporter sent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExporterReport {
    /// Source address and port.
    pub source: String,
    /// Observation domain (IPFIX), source id (v9), engine id (v5) or sub-agent (sFlow).
    pub exporter_id: u32,
    /// Data datagrams the kernel accepted.
    pub datagrams: u64,
    /// Template datagrams the kernel accepted.
    pub template_datagrams: u64,
    /// Records in the data datagrams accepted.
    pub records: u64,
    /// UDP payload bytes accepted (data and templates).
    pub payload_bytes: u64,
    /// Sum of the records' octet counts (as exported, before any sampling scale).
    pub flow_octets: u64,
    /// Sum of the records' packet counts.
    pub flow_packets: u64,
    /// Datagrams the kernel refused (not counted above).
    pub send_errors: u64,
    /// Distinct flows among the exporter's prebuilt records.
    pub distinct_flows: u64,
}

/// What a run sent, all exporters together and each.
#[derive(Clone, Debug, Serialize)]
pub struct GenReport {
    /// Export format.
    pub format: Format,
    /// Collector address.
    pub to: String,
    /// Seconds from the first send to the last.
    pub duration_secs: f64,
    /// Target rate, if any.
    pub target_records_per_sec: Option<f64>,
    /// Records sent per second over the run.
    pub achieved_records_per_sec: f64,
    /// Data records accepted by the kernel.
    pub records: u64,
    /// Data datagrams.
    pub datagrams: u64,
    /// Template datagrams.
    pub template_datagrams: u64,
    /// UDP payload bytes.
    pub payload_bytes: u64,
    /// Sum of octet counts.
    pub flow_octets: u64,
    /// Sum of packet counts.
    pub flow_packets: u64,
    /// Datagrams refused by the kernel.
    pub send_errors: u64,
    /// Records per data datagram.
    pub records_per_datagram: usize,
    /// Distinct flows in the population.
    pub flows: u32,
    /// Flow order.
    pub distribution: Distribution,
    /// Sender threads.
    pub senders: usize,
    /// Core the senders were pinned to.
    pub cpu: Option<usize>,
    /// Per exporter.
    pub exporters: Vec<ExporterReport>,
}

/// Counts of one prebuilt datagram.
#[derive(Clone, Copy, Debug)]
struct Meta {
    records: u32,
    seq_step: u32,
    octets: u64,
    packets: u64,
}

/// One exporter: its socket, prebuilt datagrams and counters.
struct Exporter {
    socket: UdpSocket,
    /// Prebuilt data datagrams, with their record, octet and packet counts and how far each
    /// moves the sequence number.
    pool: Vec<Vec<u8>>,
    meta: Vec<Meta>,
    template: Option<Vec<u8>>,
    cursor: usize,
    /// The format's sequence counter (see [`stamp`]).
    seq: u32,
    next_template: Instant,
    report: ExporterReport,
}

impl GenConfig {
    /// Checks the settings against each other.
    ///
    /// # Errors
    ///
    /// A setting out of range, with the reason.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=250).contains(&self.exporters),
            "--exporters must be 1 to 250"
        );
        let max = if self.format == Format::V5 { 30 } else { 200 };
        anyhow::ensure!(
            (1..=max).contains(&self.records_per_datagram),
            "--records-per-datagram must be 1 to {max} for {:?}",
            self.format
        );
        anyhow::ensure!(self.flows >= 1, "--flows must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.ipv6_share),
            "--ipv6-share must be 0 to 1"
        );
        anyhow::ensure!(
            self.format != Format::V5 || self.ipv6_share == 0.0,
            "NetFlow v5 carries IPv4 only: --ipv6-share must be 0"
        );
        anyhow::ensure!(
            self.zipf_exponent > 0.0 && self.zipf_exponent.is_finite(),
            "--zipf-exponent must be positive"
        );
        if let Some(r) = self.rate {
            anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
        }
        anyhow::ensure!(
            (1..=64).contains(&self.senders),
            "--senders must be 1 to 64"
        );
        anyhow::ensure!(
            self.sampling_rate >= 1,
            "--sampling-rate must be at least 1"
        );
        Ok(())
    }
}

/// Builds every exporter's datagrams, then sends until the duration is over or `stop` is set.
///
/// # Errors
///
/// Invalid settings, a socket that cannot be bound or connected, a thread that cannot start.
pub fn run(cfg: &GenConfig, stop: &AtomicBool) -> anyhow::Result<GenReport> {
    cfg.validate()?;
    let space = FlowSpace::new(cfg.flows, cfg.ipv6_share);
    let per_exporter = (cfg.flows as usize)
        .clamp(4_096, POOL_RECORDS_MAX / cfg.exporters as usize)
        .next_multiple_of(cfg.records_per_datagram);
    let mut exporters = Vec::with_capacity(cfg.exporters as usize);
    let now = Instant::now();
    for e in 0..cfg.exporters {
        exporters.push(build_exporter(cfg, &space, e, per_exporter, now)?);
    }

    let senders = cfg.senders.min(exporters.len());
    let mut groups: Vec<Vec<Exporter>> = (0..senders).map(|_| Vec::new()).collect();
    for (i, e) in exporters.into_iter().enumerate() {
        groups[i % senders].push(e);
    }
    let started = Instant::now();
    let uptime_base = 1_000_000u32;
    let results: Vec<anyhow::Result<Vec<Exporter>>> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(t, mut group)| {
                let share = group.len() as f64 / f64::from(cfg.exporters);
                let rate = cfg.rate.map(|r| r * share);
                std::thread::Builder::new()
                    .name(format!("fp-gen-{t}"))
                    .spawn_scoped(s, move || {
                        if let Some(cpu) = cfg.cpu {
                            anyhow::ensure!(
                                core_affinity::set_for_current(core_affinity::CoreId { id: cpu }),
                                "cannot pin the generator to core {cpu}"
                            );
                        }
                        send_loop(cfg, &mut group, rate, started, uptime_base, stop);
                        Ok(group)
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a sender thread panicked"))),
                Err(e) => Err(anyhow::Error::new(e).context("cannot start a sender thread")),
            })
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut reports = Vec::new();
    for r in results {
        reports.extend(r?.into_iter().map(|e| e.report));
    }
    reports.sort_by_key(|r| r.exporter_id);
    let sum = |f: fn(&ExporterReport) -> u64| reports.iter().map(f).sum::<u64>();
    let records = sum(|r| r.records);
    Ok(GenReport {
        format: cfg.format,
        to: cfg.to.to_string(),
        duration_secs: secs,
        target_records_per_sec: cfg.rate,
        achieved_records_per_sec: if secs > 0.0 {
            records as f64 / secs
        } else {
            0.0
        },
        records,
        datagrams: sum(|r| r.datagrams),
        template_datagrams: sum(|r| r.template_datagrams),
        payload_bytes: sum(|r| r.payload_bytes),
        flow_octets: sum(|r| r.flow_octets),
        flow_packets: sum(|r| r.flow_packets),
        send_errors: sum(|r| r.send_errors),
        records_per_datagram: cfg.records_per_datagram,
        flows: cfg.flows,
        distribution: cfg.distribution,
        senders,
        cpu: cfg.cpu,
        exporters: reports,
    })
}

/// Source address of exporter `e`: its own loopback address when the collector is on
/// loopback (so a collector sees distinct exporters), else the unspecified address (the
/// exporters then differ by source port and exporter id only).
fn source_for(to: SocketAddr, e: u32) -> SocketAddr {
    match to.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2 + e as u8), 0))
        }
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(ip) if ip.is_loopback() => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

fn build_exporter(
    cfg: &GenConfig,
    space: &FlowSpace,
    e: u32,
    records: usize,
    now: Instant,
) -> anyhow::Result<Exporter> {
    let src = source_for(cfg.to, e);
    let socket =
        UdpSocket::bind(src).with_context(|| format!("cannot bind exporter {e} to {src}"))?;
    socket
        .connect(cfg.to)
        .with_context(|| format!("cannot connect exporter {e} to {}", cfg.to))?;
    let encoder = Encoder::new(cfg.format, e).with_sampling_rate(cfg.sampling_rate);
    let order = space.schedule(cfg.distribution, cfg.zipf_exponent, e, records);
    let mut distinct = vec![false; space.len() as usize];
    let mut pool = Vec::with_capacity(records / cfg.records_per_datagram);
    let mut meta = Vec::with_capacity(pool.capacity());
    let mut flows: Vec<Flow> = Vec::with_capacity(cfg.records_per_datagram);
    for chunk in order.chunks(cfg.records_per_datagram) {
        flows.clear();
        flows.extend(chunk.iter().map(|&i| {
            distinct[i as usize] = true;
            space.flow(i)
        }));
        let d = encoder
            .data(&flows)
            .with_context(|| format!("cannot build a {:?} datagram", cfg.format))?;
        meta.push(Meta {
            records: encoder.records(&d),
            seq_step: encoder.sequence_step(&d),
            octets: flows.iter().map(|f| f.octets).sum(),
            packets: flows.iter().map(|f| f.packets).sum(),
        });
        pool.push(d);
    }
    let local = socket.local_addr().map_or(src, |a| a);
    Ok(Exporter {
        socket,
        pool,
        meta,
        template: encoder.template(),
        cursor: 0,
        seq: 0,
        next_template: now,
        report: ExporterReport {
            source: local.to_string(),
            exporter_id: e + 1,
            distinct_flows: distinct.iter().filter(|&&d| d).count() as u64,
            ..ExporterReport::default()
        },
    })
}

fn clock(started: Instant, uptime_base: u32) -> (u32, u32) {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    let uptime = uptime_base.wrapping_add(started.elapsed().as_millis() as u32);
    (unix, uptime)
}

/// Sends for one thread's exporters, round robin, a batch at a time, paced to `rate` (records
/// per second for these exporters together).
fn send_loop(
    cfg: &GenConfig,
    exporters: &mut [Exporter],
    rate: Option<f64>,
    started: Instant,
    uptime_base: u32,
    stop: &AtomicBool,
) {
    let deadline = cfg.duration.map(|d| started + d);
    // Records handed to the kernel (accepted or refused): what the pacing counts.
    let mut attempted = 0u64;
    let mut next = 0usize;
    loop {
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d) {
            break;
        }
        // Templates first, as an exporter sends them before the data that needs them.
        for ex in exporters.iter_mut() {
            if now >= ex.next_template
                && let Some(t) = ex.template.as_mut()
            {
                let (unix, uptime) = clock(started, uptime_base);
                stamp(cfg.format, t, ex.seq, unix, uptime);
                match ex.socket.send(t) {
                    Ok(n) => {
                        ex.report.template_datagrams += 1;
                        ex.report.payload_bytes += n as u64;
                        if cfg.format == Format::V9 {
                            ex.seq = ex.seq.wrapping_add(1);
                        }
                    }
                    Err(_) => ex.report.send_errors += 1,
                }
                ex.next_template = now + cfg.template_refresh;
            }
        }
        // How many datagrams this batch may hold to stay on the rate.
        let mut batch = SEND_BATCH_MAX;
        if let Some(rate) = rate {
            let due = started.elapsed().as_secs_f64() * rate;
            let ahead = attempted as f64 - due;
            if ahead >= 0.0 {
                // Sleep until the rate has caught up, at least 200 µs (so the generator sends
                // bursts of a fraction of a millisecond's worth instead of spinning on a core
                // the collector may need) and at most 5 ms (so stop and templates are seen).
                let wait = ((ahead + 1.0) / rate).clamp(0.000_2, 0.005);
                std::thread::sleep(Duration::from_secs_f64(wait));
                continue;
            }
            let behind = (-ahead / cfg.records_per_datagram as f64).ceil() as usize;
            batch = batch.min(behind.max(1));
        }

        let count = exporters.len();
        let ex = &mut exporters[next];
        next = (next + 1) % count;
        let n = batch.min(ex.pool.len() - ex.cursor);
        let (unix, uptime) = clock(started, uptime_base);
        let mut seq = ex.seq;
        for i in ex.cursor..ex.cursor + n {
            stamp(cfg.format, &mut ex.pool[i], seq, unix, uptime);
            seq = seq.wrapping_add(ex.meta[i].seq_step);
        }
        let mut refs: [&[u8]; SEND_BATCH_MAX] = [&[]; SEND_BATCH_MAX];
        for (r, d) in refs.iter_mut().zip(&ex.pool[ex.cursor..ex.cursor + n]) {
            *r = d;
        }
        let sent = match send_batch(&ex.socket, &refs[..n]) {
            Ok(k) => k,
            Err(_) => {
                // The first datagram was refused (e.g. port unreachable): count it and go on
                // with the next; its sequence number is reused.
                ex.report.send_errors += 1;
                attempted += u64::from(ex.meta[ex.cursor].records);
                ex.cursor = (ex.cursor + 1) % ex.pool.len();
                continue;
            }
        };
        for i in ex.cursor..ex.cursor + sent {
            let m = ex.meta[i];
            ex.report.datagrams += 1;
            ex.report.records += u64::from(m.records);
            ex.report.payload_bytes += ex.pool[i].len() as u64;
            ex.report.flow_octets += m.octets;
            ex.report.flow_packets += m.packets;
            ex.seq = ex.seq.wrapping_add(m.seq_step);
            attempted += u64::from(m.records);
        }
        ex.cursor = (ex.cursor + sent) % ex.pool.len();
    }
}
