//! The verdict: which profile a machine fits, what rate it should hold, what caps it, and what to
//! change.
//!
//! The rules come from the sizing table in the product brief and from flowplane's own
//! measurements (`docs/hardware-profiles.md` explains each):
//!
//! * **Tier.** The profile that fits is the largest stand-alone tier whose cores and memory the
//!   machine has (cluster-node profiles are only used when named). Its sized rate is a cap: the
//!   table's figure for that much CPU and memory (8 cores: 250K/s, 16: 400K/s, 32: 500K/s at
//!   70% load). Below the smallest tier the table has no row, and this cap is not applied.
//! * **Worker cores.** Workers x [`WORKER_PLANNING_RECORDS_PER_SEC`].
//! * **NIC.** The fastest physical NIC's link speed over [`RECORD_WIRE_BYTES`] per record: 1 GbE is
//!   about 312K records/s, 10 GbE about 3.1M.
//! * **Disk.** With rotational disks and no non-rotational one, [`HDD_RECORDS_PER_SEC`].
//!
//! The rate is the smallest cap; a cap whose input could not be read is left out, and the
//! verdict says so. A profile is refused ([`Misfit`]) when the machine lacks a core it places a
//! thread on, or its memory.

use std::fmt;

use serde::Serialize;

use crate::inspect::{GIB, Machine, cpu_list, gib, link_speed};
use crate::profile::{Profile, Role};

/// Planning figure for one worker core, records/s.
///
/// `benches/scaling.sh` measured one worker (io_uring, NetFlow v5 datagrams of 29 records from a
/// generator on the same 2-core machine) at 8.17M records/s, saturated (the kernel dropped
/// datagrams it could not take); docs/benchmarks.md has the run. The planning figure is a
/// quarter of that: real exports carry fewer records per datagram (IPFIX from a router often
/// 10 to 20), operators configure more dimensions, and the sizing table plans for 70 % load.
pub const WORKER_PLANNING_RECORDS_PER_SEC: u64 = 2_000_000;

/// The measured figure behind the planning one (docs/benchmarks.md, scaling script, 1 worker).
pub const WORKER_MEASURED_RECORDS_PER_SEC: u64 = 8_170_000;

/// Bytes per record the sizing table assumes (as JSON), for the NIC cap.
pub const RECORD_WIRE_BYTES: u64 = 400;

/// The sizing table's rule: an HDD caps the whole pipeline at about 150K records/s.
pub const HDD_RECORDS_PER_SEC: u64 = 150_000;

/// A machine has a tier's `memory_gb` when `MemTotal` is at least this share of it (percent).
/// `MemTotal` leaves out what the firmware and the kernel reserve, a few percent of what is
/// installed, so a 32 GB box shows about 31 GiB.
pub const MEMORY_FIT_PERCENT: u64 = 90;

/// What caps a machine's rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The disks: only rotational ones.
    Disk,
    /// The fastest physical NIC's link speed.
    Nic,
    /// The CPU and memory tier: the profile's sized rate.
    Tier,
    /// The worker cores at the per-core planning figure.
    WorkerCores,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disk => "disk",
            Self::Nic => "NIC",
            Self::Tier => "CPU and memory (tier)",
            Self::WorkerCores => "worker cores",
        })
    }
}

/// One cap on the rate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Cap {
    /// What caps.
    pub part: Part,
    /// Records per second it allows.
    pub records_per_sec: u64,
    /// Where the figure comes from.
    pub reason: String,
}

/// What a machine should hold, and why.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Verdict {
    /// The profile that applies: the one named, or the largest tier that fits. `None` when no
    /// tier fits (the machine can still run, with the engine's defaults).
    pub profile: Option<Profile>,
    /// Worker threads on this machine.
    pub workers: usize,
    /// Their cores, when known.
    pub worker_cores: Vec<usize>,
    /// Records per second this machine should hold: the smallest cap.
    pub records_per_sec: u64,
    /// The part that caps it.
    pub limit: Part,
    /// Every cap applied, in the order tier, worker cores, NIC, disk.
    pub caps: Vec<Cap>,
    /// Caps left out or facts assumed, one line each.
    pub notes: Vec<String>,
    /// What to change, most important first.
    pub advice: Vec<String>,
}

/// A profile the machine cannot run, and what is missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("profile {profile} does not fit this machine: {}", missing.join("; "))]
#[non_exhaustive]
pub struct Misfit {
    /// The profile refused.
    pub profile: String,
    /// One line per missing part.
    pub missing: Vec<String>,
}

/// Checks that the machine has every core the profile places a thread on, and its memory.
///
/// Unreadable memory is not a refusal (it is noted in the verdict); unreadable cores are, since
/// nothing could be pinned.
///
/// # Errors
///
/// [`Misfit`] listing what is missing.
pub fn check_fit(machine: &Machine, profile: &Profile) -> Result<(), Misfit> {
    let mut missing = Vec::new();
    let need = profile.cores_needed();
    let c = &profile.cores;
    let mut threads: Vec<usize> = c
        .workers
        .iter()
        .chain(&c.mergers)
        .chain(&c.sinks)
        .copied()
        .collect();
    threads.sort_unstable();
    let layout = format!(
        "it runs {} worker(s), {} merger(s) and {} sink core(s) on cores {} with {} for the OS, so \
         it needs cores 0-{} online",
        c.workers.len(),
        c.mergers.len(),
        c.sinks.len(),
        cpu_list(&threads),
        cpu_list(&c.os),
        need.saturating_sub(1)
    );
    match &machine.cpus.online {
        None => missing.push(format!(
            "{layout}; which cores are online could not be read"
        )),
        Some(online) => {
            let absent: Vec<usize> = (0..need).filter(|n| !online.contains(n)).collect();
            if !absent.is_empty() {
                missing.push(format!(
                    "{layout}; this machine has {} ({}): core(s) {} missing",
                    online.len(),
                    cpu_list(online),
                    cpu_list(&absent)
                ));
            }
        }
    }
    if let Some(have) = machine.memory_bytes {
        let need_bytes = memory_needed(profile);
        if have < need_bytes {
            missing.push(format!(
                "it needs {} GB of memory (MemTotal of at least {}); this machine has {}: {} short",
                profile.sizing.memory_gb,
                gib(need_bytes),
                gib(have),
                gib(need_bytes - have)
            ));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Misfit {
        profile: profile.name.clone(),
        missing,
    })
}

/// The largest stand-alone tier the machine fits, if any.
pub fn best_fit<'a>(machine: &Machine, profiles: &'a [Profile]) -> Option<&'a Profile> {
    profiles
        .iter()
        .filter(|p| p.role == Role::Single && check_fit(machine, p).is_ok())
        .max_by_key(|p| (p.sizing.cores, p.sizing.memory_gb, p.sizing.records_per_sec))
}

/// The verdict for `machine`: with `chosen` (a named profile, checked to fit) or, when `None`,
/// the largest tier of `profiles` that fits (or none).
///
/// # Errors
///
/// [`Misfit`] when `chosen` does not fit.
pub fn assess(
    machine: &Machine,
    profiles: &[Profile],
    chosen: Option<&Profile>,
) -> Result<Verdict, Misfit> {
    let profile = match chosen {
        Some(p) => {
            check_fit(machine, p)?;
            Some(p)
        }
        None => best_fit(machine, profiles),
    };
    let mut caps = Vec::new();
    let mut notes = Vec::new();
    let mut advice = Vec::new();

    // Tier and workers.
    let (workers, worker_cores) = match profile {
        Some(p) => {
            caps.push(Cap {
                part: Part::Tier,
                records_per_sec: p.sizing.records_per_sec,
                reason: format!(
                    "{} is sized for {} records/s ({} cores / {} GB in the sizing table)",
                    p.name,
                    grouped(p.sizing.records_per_sec),
                    p.sizing.cores,
                    p.sizing.memory_gb
                ),
            });
            (p.cores.workers.len(), p.cores.workers.clone())
        }
        None => {
            notes.push(
                "No tier fits, and the sizing table has no row below 8 cores / 32 GB: the tier cap \
                 is not applied. flowplane still runs here with the engine's defaults."
                    .to_owned(),
            );
            // The engine's default: every online CPU but one (core 0) runs a worker, at least 1.
            match &machine.cpus.online {
                Some(online) if online.len() > 1 => (online.len() - 1, online[1..].to_vec()),
                Some(online) => (1, online.clone()),
                None => (1, Vec::new()),
            }
        }
    };
    caps.push(Cap {
        part: Part::WorkerCores,
        records_per_sec: workers as u64 * WORKER_PLANNING_RECORDS_PER_SEC,
        reason: format!(
            "{workers} worker(s) x {} records/s per worker core (planning figure: a quarter of \
             the {} records/s measured on one saturated worker; docs/benchmarks.md)",
            grouped(WORKER_PLANNING_RECORDS_PER_SEC),
            grouped(WORKER_MEASURED_RECORDS_PER_SEC)
        ),
    });

    // NIC.
    match machine.fastest_physical_nic() {
        Some(nic) => caps.push(Cap {
            part: Part::Nic,
            records_per_sec: nic_records_per_sec(nic.speed_mbps),
            reason: format!(
                "{} at {} carries about {} records/s of {RECORD_WIRE_BYTES} bytes",
                nic.name,
                link_speed(nic.speed_mbps),
                grouped(nic_records_per_sec(nic.speed_mbps))
            ),
        }),
        None => notes.push(format!(
            "NIC cap not applied: no physical NIC with a known link speed{}.",
            if machine.nics_without_speed.is_empty() {
                String::new()
            } else {
                format!(
                    " (speed unknown: {})",
                    machine.nics_without_speed.join(", ")
                )
            }
        )),
    }

    // Disk.
    let rotational: Vec<&str> = machine
        .disks
        .iter()
        .filter(|d| d.rotational == Some(true))
        .map(|d| d.name.as_str())
        .collect();
    let solid = machine.disks.iter().any(|d| d.rotational == Some(false));
    if !solid && !rotational.is_empty() {
        caps.push(Cap {
            part: Part::Disk,
            records_per_sec: HDD_RECORDS_PER_SEC,
            reason: format!(
                "only rotational disks ({}): an HDD caps the pipeline at about {} records/s",
                rotational.join(", "),
                grouped(HDD_RECORDS_PER_SEC)
            ),
        });
    } else if !solid {
        notes.push("Disk cap not applied: no disk whose rotational flag could be read.".to_owned());
    }

    if machine.memory_bytes.is_none() {
        notes.push(
            "Memory could not be read (proc/meminfo): the tier fit assumes it is enough.".into(),
        );
    }
    if let Some(t) = machine.cpus.threads_per_core.filter(|&t| t > 1) {
        notes.push(format!(
            "SMT is on ({t} threads per core): tiers count logical CPUs, and two workers on sibling \
             threads share one core's execution units."
        ));
    }

    // The rate is the smallest cap; ties go to the earlier cap. `caps` always holds the
    // worker-cores cap, so the fold starts from it.
    let limit_cap = caps.iter().fold(&caps[0], |best, c| {
        if c.records_per_sec < best.records_per_sec {
            c
        } else {
            best
        }
    });
    let (records_per_sec, limit) = (limit_cap.records_per_sec, limit_cap.part);

    limit_advice(machine, profiles, profile, limit, &rotational, &mut advice);
    if profile.is_none() && !matches!(limit, Part::Tier | Part::WorkerCores) {
        // The limit is elsewhere, but the operator still needs to know what a tier would take.
        limit_advice(
            machine,
            profiles,
            None,
            Part::Tier,
            &rotational,
            &mut advice,
        );
    }
    kernel_advice(machine, profiles, profile, &mut advice, &mut notes);

    Ok(Verdict {
        profile: profile.cloned(),
        workers,
        worker_cores,
        records_per_sec,
        limit,
        caps,
        notes,
        advice,
    })
}

/// Records/s a link of `mbps` carries at [`RECORD_WIRE_BYTES`] per record.
pub fn nic_records_per_sec(mbps: u64) -> u64 {
    mbps.saturating_mul(1_000_000) / (8 * RECORD_WIRE_BYTES)
}

/// `MemTotal` bytes a profile needs: [`MEMORY_FIT_PERCENT`] of its `memory_gb` GiB.
pub fn memory_needed(profile: &Profile) -> u64 {
    profile.sizing.memory_gb.saturating_mul(GIB) / 100 * MEMORY_FIT_PERCENT
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.profile {
            Some(p) => {
                writeln!(f, "Profile: {} ({})", p.name, p.description)?;
                let c = &p.cores;
                writeln!(
                    f,
                    "  layout: OS and interrupts on {}; workers on {}; merger(s) on {}; sinks on {}",
                    cpu_list(&c.os),
                    cpu_list(&c.workers),
                    cpu_list(&c.mergers),
                    cpu_list(&c.sinks)
                )?;
                if let Some(ha) = &p.ha {
                    writeln!(
                        f,
                        "  cluster: {} nodes, {} records/s together; each node holds {} so that \
                         the others carry a failed node's share",
                        ha.nodes,
                        grouped(ha.cluster_records_per_sec),
                        grouped(p.sizing.records_per_sec)
                    )?;
                }
            }
            None => {
                writeln!(
                    f,
                    "Profile: none fits (the smallest tier needs 8 cores and 32 GB)"
                )?;
                writeln!(
                    f,
                    "  layout: {} worker(s) on {}; merger and sinks unpinned (engine defaults)",
                    self.workers,
                    if self.worker_cores.is_empty() {
                        "unknown cores".to_owned()
                    } else {
                        cpu_list(&self.worker_cores)
                    }
                )?;
            }
        }
        writeln!(
            f,
            "Expected rate: {} records/s, capped by the {}",
            grouped(self.records_per_sec),
            self.limit
        )?;
        writeln!(f, "Caps:")?;
        for c in &self.caps {
            let mark = if c.part == self.limit && c.records_per_sec == self.records_per_sec {
                "  <- limit"
            } else {
                ""
            };
            writeln!(
                f,
                "  {:<22} {:>11} records/s  {}{mark}",
                c.part.to_string(),
                grouped(c.records_per_sec),
                c.reason
            )?;
        }
        if !self.notes.is_empty() {
            writeln!(f, "Notes:")?;
            for n in &self.notes {
                writeln!(f, "  - {n}")?;
            }
        }
        if self.advice.is_empty() {
            writeln!(f, "To change: nothing")?;
        } else {
            writeln!(f, "To change:")?;
            for a in &self.advice {
                writeln!(f, "  - {a}")?;
            }
        }
        Ok(())
    }
}

/// Advice on the part that caps the rate.
fn limit_advice(
    machine: &Machine,
    profiles: &[Profile],
    profile: Option<&Profile>,
    limit: Part,
    rotational: &[&str],
    advice: &mut Vec<String>,
) {
    match limit {
        Part::Disk => {
            let mut a = format!(
                "Add an SSD or NVMe disk for data (Kafka's log, Valkey persistence, OpenSearch): with \
                 only rotational disks ({}) the pipeline caps at about {} records/s.",
                rotational.join(", "),
                grouped(HDD_RECORDS_PER_SEC)
            );
            if rotational
                .iter()
                .any(|n| n.starts_with("vd") || n.starts_with("xvd"))
            {
                a.push_str(
                    " Virtual disks often report rotational = 1 whatever backs them; if this one \
                     is SSD-backed, the cap does not apply.",
                );
            }
            advice.push(a);
        }
        Part::Nic => {
            if let Some(nic) = machine.fastest_physical_nic() {
                advice.push(format!(
                    "Use a faster NIC: {} at {} carries about {} records/s; 10 GbE carries about {}.",
                    nic.name,
                    link_speed(nic.speed_mbps),
                    grouped(nic_records_per_sec(nic.speed_mbps)),
                    grouped(nic_records_per_sec(10_000))
                ));
            }
        }
        Part::Tier | Part::WorkerCores => {
            let current = profile.map_or(0, |p| p.sizing.cores);
            let next = profiles
                .iter()
                .filter(|p| p.role == Role::Single && p.sizing.cores > current)
                .min_by_key(|p| p.sizing.cores);
            match next {
                Some(n) => advice.push(format!(
                    "{} {} ({} records/s): {}.",
                    if profile.is_some() {
                        "For more, move to"
                    } else {
                        "To run a tier, start with"
                    },
                    n.name,
                    grouped(n.sizing.records_per_sec),
                    match check_fit(machine, n) {
                        Ok(()) => "this machine already fits it".to_owned(),
                        Err(m) => m.missing.join("; "),
                    }
                )),
                None => advice.push(
                    "This is the largest tier: for more, add nodes that write to the same Kafka \
                     and Valkey (see ha-3x16)."
                        .to_owned(),
                ),
            }
        }
    }
}

/// Advice on kernel settings, the memlock limit and io_uring, against the profile (or the
/// smallest tier when none fits).
fn kernel_advice(
    machine: &Machine,
    profiles: &[Profile],
    profile: Option<&Profile>,
    advice: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let Some(reference) = profile.or_else(|| {
        profiles
            .iter()
            .filter(|p| p.role == Role::Single)
            .min_by_key(|p| p.sizing.cores)
    }) else {
        return;
    };
    let whose = if profile.is_some() {
        reference.name.clone()
    } else {
        format!("{} (the smallest tier)", reference.name)
    };
    for (name, want) in reference.kernel.sysctls() {
        match machine.sysctl(name) {
            Some(have) if have >= want => {}
            Some(have) => {
                let why = if name == "net.core.rmem_max" {
                    format!(
                        "; the kernel caps every socket buffer at it, and {whose} asks for {}",
                        reference.receive.rcvbuf_bytes
                    )
                } else {
                    String::new()
                };
                advice.push(format!(
                    "Raise {name} to at least {want} (now {have}{why}): `sysctl -w {name}={want}`, \
                     and keep it in /etc/sysctl.d/90-flowplane.conf."
                ));
            }
            None => notes.push(format!(
                "{name} could not be read; {whose} expects at least {want}."
            )),
        }
    }

    let want = reference.kernel.memlock_bytes;
    match machine.memlock_bytes {
        Some(have) if have >= want => {}
        Some(have) => advice.push(format!(
            "Raise the memlock limit to at least {want} bytes for io_uring (now {have}; \
             `LimitMEMLOCK={want}` in flowplane's systemd unit, or `memlock` in \
             /etc/security/limits.conf). This reads the limit of `flowplane profile` itself; the \
             daemon's own limit is what counts."
        )),
        None => notes.push(format!(
            "The memlock limit could not be read; {whose} expects {want} bytes."
        )),
    }

    let u = &machine.io_uring;
    match (u.disabled_sysctl, u.multishot_recvmsg()) {
        (Some(2), _) => advice.push(
            "io_uring is disabled (kernel.io_uring_disabled = 2): the workers will use recvmmsg. \
             Set it to 0 for the io_uring receive path."
                .to_owned(),
        ),
        (Some(1), _) => advice.push(
            "io_uring is limited to members of kernel.io_uring_group (kernel.io_uring_disabled = \
             1): run flowplane in that group or set it to 0, or the workers use recvmmsg."
                .to_owned(),
        ),
        (_, Some(false)) => advice.push(format!(
            "Kernel {} has no multishot recvmsg (Linux 6.0; provided buffer rings need 5.19): the \
             workers will use recvmmsg. Upgrade the kernel for the io_uring receive path.",
            u.kernel_release.as_deref().unwrap_or("?")
        )),
        (_, None) => notes.push(
            "The kernel version could not be read: io_uring support is unknown (the engine probes it \
             at start)."
                .to_owned(),
        ),
        (_, Some(true)) => notes.push(
            "io_uring: the kernel has what the receive path needs; assumed that no seccomp filter or \
             container runtime blocks it (the engine probes with a real datagram at start)."
                .to_owned(),
        ),
    }
}

/// `1234567` as `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_caps_follow_the_sizing_table() {
        assert_eq!(nic_records_per_sec(1_000), 312_500);
        assert_eq!(nic_records_per_sec(10_000), 3_125_000);
        assert_eq!(nic_records_per_sec(25_000), 7_812_500);
        assert_eq!(nic_records_per_sec(u64::MAX), u64::MAX / 3_200);
    }

    #[test]
    fn groups_digits() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(312_500), "312,500");
        assert_eq!(grouped(1_000_000), "1,000,000");
    }

    #[test]
    fn memory_needed_leaves_room_for_what_the_kernel_reserves() {
        let p = crate::profile::by_name("tier-8").unwrap();
        // 90% of 32 GiB: 28.8 GiB.
        assert_eq!(memory_needed(&p), 32 * GIB / 100 * 90);
    }
}
