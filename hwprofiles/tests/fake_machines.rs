//! Verdicts on fake machines: `/sys` and `/proc` trees built in a temporary directory, one per
//! row of the sizing table, plus this real machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flowplane_hwprofiles::inspect::Machine;
use flowplane_hwprofiles::profile::{self, Profile};
use flowplane_hwprofiles::verdict::{self, Part, Verdict};

/// A fake root directory, removed when dropped.
struct FakeRoot {
    dir: PathBuf,
}

/// How a fake machine looks.
struct Spec {
    cpus: usize,
    /// Logical CPUs per physical core.
    smt: usize,
    mem_gib: u64,
    /// (name, speed file contents, physical).
    nics: Vec<(&'static str, &'static str, bool)>,
    /// (name, rotational file contents).
    disks: Vec<(&'static str, &'static str)>,
    osrelease: &'static str,
    io_uring_disabled: Option<&'static str>,
    rmem_max: u64,
    memlock: &'static str,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            cpus: 8,
            smt: 1,
            mem_gib: 32,
            nics: vec![("eth0", "10000", true)],
            disks: vec![("nvme0n1", "0")],
            osrelease: "6.8.0-45-generic",
            io_uring_disabled: Some("0"),
            rmem_max: 134_217_728,
            memlock: "unlimited",
        }
    }
}

impl FakeRoot {
    fn new(spec: &Spec) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flowplane-hwprofiles-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let root = Self { dir };

        root.write(
            "sys/devices/system/cpu/online",
            &format!("0-{}\n", spec.cpus - 1),
        );
        let physical = spec.cpus / spec.smt;
        for cpu in 0..spec.cpus {
            let core = cpu % physical;
            let siblings: Vec<String> = (0..spec.smt)
                .map(|t| (core + t * physical).to_string())
                .collect();
            let dir = format!("sys/devices/system/cpu/cpu{cpu}/topology");
            root.write(&format!("{dir}/physical_package_id"), "0\n");
            root.write(&format!("{dir}/core_id"), &format!("{core}\n"));
            root.write(
                &format!("{dir}/thread_siblings_list"),
                &format!("{}\n", siblings.join(",")),
            );
        }

        // MemTotal a little below the installed memory, as on real machines (2% reserved).
        let kib = spec.mem_gib * 1024 * 1024 * 98 / 100;
        root.write(
            "proc/meminfo",
            &format!("MemTotal:       {kib} kB\nMemFree:        1000 kB\n"),
        );

        root.write("sys/class/net/lo/speed", "garbage-never-read\n");
        for (name, speed, physical) in &spec.nics {
            root.write(
                &format!("sys/class/net/{name}/speed"),
                &format!("{speed}\n"),
            );
            if *physical {
                root.mkdir(&format!("sys/class/net/{name}/device"));
            }
        }
        root.write("sys/block/loop0/queue/rotational", "1\n");
        for (name, rot) in &spec.disks {
            root.write(
                &format!("sys/block/{name}/queue/rotational"),
                &format!("{rot}\n"),
            );
        }

        root.write(
            "proc/sys/kernel/osrelease",
            &format!("{}\n", spec.osrelease),
        );
        if let Some(d) = spec.io_uring_disabled {
            root.write("proc/sys/kernel/io_uring_disabled", &format!("{d}\n"));
        }
        for (name, value) in [
            ("net/core/rmem_max", spec.rmem_max),
            ("net/core/rmem_default", 67_108_864),
            ("net/core/netdev_max_backlog", 1_000_000),
            ("net/core/netdev_budget", 2_000),
            ("vm/max_map_count", 262_144),
        ] {
            root.write(&format!("proc/sys/{name}"), &format!("{value}\n"));
        }
        root.write(
            "proc/self/limits",
            &format!(
                "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max locked memory         {0:<20} {0:<20} bytes     \n",
                spec.memlock
            ),
        );
        root
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.dir.join(rel)).unwrap();
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn profiles() -> Vec<Profile> {
    profile::builtin().unwrap()
}

fn auto(spec: &Spec) -> (Machine, Verdict) {
    let root = FakeRoot::new(spec);
    let machine = Machine::inspect(root.path());
    let verdict = verdict::assess(&machine, &profiles(), None).unwrap();
    (machine, verdict)
}

fn profile_name(v: &Verdict) -> Option<&str> {
    v.profile.as_ref().map(|p| p.name.as_str())
}

#[test]
fn eight_cores_ten_gbe_nvme_is_tier_8_at_250k_cpu_bound() {
    let (m, v) = auto(&Spec::default());
    assert_eq!(m.cpus.count(), Some(8));
    assert_eq!(m.cpus.physical_cores, Some(8));
    assert_eq!(m.nics.len(), 1);
    assert_eq!(m.disks.len(), 1, "loop devices are left out: {:?}", m.disks);
    assert!(m.unknowns.is_empty(), "{:?}", m.unknowns);

    assert_eq!(profile_name(&v), Some("tier-8"));
    assert_eq!(v.records_per_sec, 250_000);
    assert_eq!(v.limit, Part::Tier);
    assert_eq!(v.workers, 5);
    assert_eq!(v.worker_cores, [1, 2, 3, 4, 5]);
    let caps: Vec<(Part, u64)> = v.caps.iter().map(|c| (c.part, c.records_per_sec)).collect();
    assert_eq!(
        caps,
        [
            (Part::Tier, 250_000),
            (Part::WorkerCores, 10_000_000),
            (Part::Nic, 3_125_000)
        ]
    );
    // Next tier advice names what is missing for tier-16.
    assert_eq!(v.advice.len(), 1, "{:?}", v.advice);
    assert!(v.advice[0].contains("tier-16"), "{}", v.advice[0]);
    assert!(
        v.advice[0].contains("core(s) 8-15 missing"),
        "{}",
        v.advice[0]
    );
    assert!(v.advice[0].contains("64 GB"), "{}", v.advice[0]);
}

#[test]
fn sixteen_cores_is_tier_16_at_400k() {
    let (_, v) = auto(&Spec {
        cpus: 16,
        mem_gib: 64,
        ..Spec::default()
    });
    assert_eq!(profile_name(&v), Some("tier-16"));
    assert_eq!(v.records_per_sec, 400_000);
    assert_eq!(v.limit, Part::Tier);
    assert_eq!(v.workers, 12);
}

#[test]
fn sixteen_cores_with_32_gb_is_held_to_tier_8_by_memory() {
    let (_, v) = auto(&Spec {
        cpus: 16,
        mem_gib: 32,
        ..Spec::default()
    });
    assert_eq!(profile_name(&v), Some("tier-8"));
    assert_eq!(v.records_per_sec, 250_000);
    assert!(
        v.advice
            .iter()
            .any(|a| a.contains("tier-16") && a.contains("it needs 64 GB")),
        "{:?}",
        v.advice
    );
}

#[test]
fn thirty_two_cores_25_gbe_is_tier_32_at_500k() {
    let (m, v) = auto(&Spec {
        cpus: 32,
        smt: 2,
        mem_gib: 96,
        nics: vec![
            ("ens1f0", "25000", true),
            ("ens1f1", "-1", true),
            ("veth0", "10000", false),
        ],
        disks: vec![("nvme0n1", "0"), ("nvme1n1", "0")],
        ..Spec::default()
    });
    assert_eq!(m.cpus.physical_cores, Some(16));
    assert_eq!(m.cpus.threads_per_core, Some(2));
    assert_eq!(m.nics_without_speed, ["ens1f1"]);
    assert_eq!(m.fastest_physical_nic().unwrap().name, "ens1f0");

    assert_eq!(profile_name(&v), Some("tier-32"));
    assert_eq!(v.records_per_sec, 500_000);
    assert_eq!(v.limit, Part::Tier);
    assert_eq!(v.workers, 26);
    let nic = v.caps.iter().find(|c| c.part == Part::Nic).unwrap();
    assert_eq!(nic.records_per_sec, 7_812_500);
    assert!(v.notes.iter().any(|n| n.contains("SMT")), "{:?}", v.notes);
    assert!(
        v.advice.iter().any(|a| a.contains("largest tier")),
        "{:?}",
        v.advice
    );
}

#[test]
fn one_gbe_nic_caps_at_312k() {
    let (_, v) = auto(&Spec {
        cpus: 16,
        mem_gib: 64,
        nics: vec![("eno1", "1000", true)],
        ..Spec::default()
    });
    assert_eq!(profile_name(&v), Some("tier-16"));
    assert_eq!(v.records_per_sec, 312_500);
    assert_eq!(v.limit, Part::Nic);
    assert!(
        v.advice[0].starts_with("Use a faster NIC: eno1 at 1 GbE carries about 312,500"),
        "{}",
        v.advice[0]
    );
}

#[test]
fn only_an_hdd_caps_at_150k() {
    let (_, v) = auto(&Spec {
        cpus: 16,
        mem_gib: 64,
        disks: vec![("sda", "1"), ("sdb", "1"), ("dm-0", "1")],
        ..Spec::default()
    });
    assert_eq!(profile_name(&v), Some("tier-16"));
    assert_eq!(v.records_per_sec, 150_000);
    assert_eq!(v.limit, Part::Disk);
    assert!(v.advice[0].contains("(sda, sdb, dm-0)") || v.advice[0].contains("(dm-0, sda, sdb)"));
    assert!(
        v.advice[0].starts_with("Add an SSD or NVMe disk"),
        "{}",
        v.advice[0]
    );

    // One SSD among the HDDs lifts the cap.
    let (_, v) = auto(&Spec {
        cpus: 16,
        mem_gib: 64,
        disks: vec![("sda", "1"), ("sdb", "0")],
        ..Spec::default()
    });
    assert_eq!(v.records_per_sec, 400_000);
}

#[test]
fn named_profile_that_does_not_fit_is_refused_with_what_is_missing() {
    let root = FakeRoot::new(&Spec::default());
    let m = Machine::inspect(root.path());
    let tier16 = profile::by_name("tier-16").unwrap();
    let e = verdict::assess(&m, &profiles(), Some(&tier16)).unwrap_err();
    assert_eq!(e.profile, "tier-16");
    assert_eq!(e.missing.len(), 2, "{e}");
    assert_eq!(
        e.missing[0],
        "it runs 12 worker(s), 1 merger(s) and 2 sink core(s) on cores 1-15 with 0 for the OS, so \
         it needs cores 0-15 online; this machine has 8 (0-7): core(s) 8-15 missing"
    );
    assert!(
        e.missing[1].starts_with(
            "it needs 64 GB of memory (MemTotal of at least 57.6 GiB); this machine has 31.4 GiB"
        ),
        "{}",
        e.missing[1]
    );
    assert!(
        e.to_string()
            .starts_with("profile tier-16 does not fit this machine: ")
    );

    // The cluster node profile is never picked by auto, but can be named.
    let root = FakeRoot::new(&Spec {
        cpus: 16,
        mem_gib: 64,
        ..Spec::default()
    });
    let m = Machine::inspect(root.path());
    let ha = profile::by_name("ha-3x16").unwrap();
    let v = verdict::assess(&m, &profiles(), Some(&ha)).unwrap();
    assert_eq!(profile_name(&v), Some("ha-3x16"));
    assert_eq!(v.records_per_sec, 250_000);
    assert!(v.to_string().contains("cluster: 3 nodes"), "{v}");
}

#[test]
fn kernel_settings_memlock_and_io_uring_give_advice() {
    let (_, v) = auto(&Spec {
        rmem_max: 4_194_304,
        memlock: "8388608",
        osrelease: "5.15.0-105-generic",
        io_uring_disabled: None,
        ..Spec::default()
    });
    assert_eq!(v.records_per_sec, 250_000);
    let rmem = v
        .advice
        .iter()
        .find(|a| a.contains("net.core.rmem_max"))
        .unwrap();
    assert_eq!(
        rmem,
        "Raise net.core.rmem_max to at least 67108864 (now 4194304; the kernel caps every socket \
         buffer at it, and tier-8 asks for 33554432): `sysctl -w net.core.rmem_max=67108864`, and \
         keep it in /etc/sysctl.d/90-flowplane.conf."
    );
    assert!(
        v.advice
            .iter()
            .any(|a| a.contains("memlock limit to at least 67108864 bytes"))
    );
    assert!(
        v.advice
            .iter()
            .any(|a| a.contains("Kernel 5.15.0-105-generic has no multishot recvmsg"))
    );

    let (_, v) = auto(&Spec {
        io_uring_disabled: Some("2"),
        ..Spec::default()
    });
    assert!(
        v.advice.iter().any(|a| a.contains("io_uring is disabled")),
        "{:?}",
        v.advice
    );
}

#[test]
fn garbage_and_missing_files_are_unknown_not_panics() {
    let root = FakeRoot::new(&Spec::default());
    root.write("proc/meminfo", "MemTotal: lots\n");
    root.write(
        "sys/devices/system/cpu/cpu3/topology/core_id",
        "\u{0}\u{ff}x\n",
    );
    root.write("sys/class/net/eth0/speed", "4294967295\n");
    root.write("sys/block/nvme0n1/queue/rotational", "7\n");
    root.write("proc/sys/kernel/osrelease", "unknown\n");
    root.write("proc/self/limits", "nothing here\n");
    fs::remove_file(root.path().join("proc/sys/net/core/netdev_budget")).unwrap();

    let m = Machine::inspect(root.path());
    assert_eq!(m.cpus.count(), Some(8));
    assert_eq!(m.cpus.physical_cores, None);
    assert_eq!(m.memory_bytes, None);
    assert!(m.nics.is_empty());
    assert_eq!(m.disks[0].rotational, None);
    assert_eq!(m.io_uring.kernel_version, None);
    assert_eq!(m.memlock_bytes, None);
    assert_eq!(m.sysctl("net.core.netdev_budget"), None);
    for needle in [
        "meminfo",
        "core_id",
        "rotational",
        "osrelease",
        "limits",
        "netdev_budget",
    ] {
        assert!(
            m.unknowns.iter().any(|u| u.contains(needle)),
            "{needle}: {:?}",
            m.unknowns
        );
    }

    // Memory unknown does not refuse tier-8; the caps that could not be computed are noted.
    let v = verdict::assess(&m, &profiles(), None).unwrap();
    assert_eq!(profile_name(&v), Some("tier-8"));
    assert_eq!(v.records_per_sec, 250_000);
    for needle in [
        "NIC cap not applied",
        "Disk cap not applied",
        "Memory could not be read",
    ] {
        assert!(
            v.notes.iter().any(|n| n.contains(needle)),
            "{needle}: {:?}",
            v.notes
        );
    }
    // Both render without panicking.
    let _ = format!("{m}{v}");

    // An empty root: nothing known, still a verdict (one worker, no tier).
    let empty =
        std::env::temp_dir().join(format!("flowplane-hwprofiles-empty-{}", std::process::id()));
    fs::create_dir_all(&empty).unwrap();
    let m = Machine::inspect(&empty);
    let v = verdict::assess(&m, &profiles(), None).unwrap();
    let _ = fs::remove_dir_all(&empty);
    assert_eq!(v.profile, None);
    assert_eq!(v.workers, 1);
    assert_eq!(
        v.records_per_sec,
        verdict::WORKER_PLANNING_RECORDS_PER_SEC,
        "one worker, no other cap known"
    );
    let tier8 = profile::by_name("tier-8").unwrap();
    let e = verdict::assess(&m, &profiles(), Some(&tier8)).unwrap_err();
    assert!(
        e.missing[0].contains("which cores are online could not be read"),
        "{e}"
    );
}

/// This machine, read from `/`: the verdict must agree with what the test reads itself.
#[test]
fn this_machine_gets_an_honest_verdict() {
    let m = Machine::inspect(Path::new("/"));
    let v = verdict::assess(&m, &profiles(), None).unwrap();
    let text = format!("{m}{v}");

    // Cores, counted independently of the inspector.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib: Option<u64> = fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    });

    // The tier: the largest whose cores are online and whose memory (90% of it) is present.
    let online = m.cpus.count().unwrap_or(0);
    assert!(
        online >= cpus,
        "{online} online CPUs, {cpus} available to the process"
    );
    let expected_tier = [("tier-32", 32, 96), ("tier-16", 16, 64), ("tier-8", 8, 32)]
        .into_iter()
        .find(|&(_, c, g)| {
            online >= c && mem_kib.is_none_or(|k| k * 1024 >= g * (1 << 30) / 100 * 90)
        })
        .map(|(n, _, _)| n);
    assert_eq!(profile_name(&v), expected_tier, "{text}");

    // Without a tier: every online CPU but one runs a worker, at least one.
    if expected_tier.is_none() {
        assert_eq!(v.workers, online.saturating_sub(1).max(1), "{text}");
        assert!(text.contains("Profile: none fits"), "{text}");
    }

    // The disk cap applies exactly when every data disk the kernel reports is rotational.
    let mut rot = Vec::new();
    if let Ok(dir) = fs::read_dir("/sys/block") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "zram", "sr", "fd"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                continue;
            }
            if let Ok(t) = fs::read_to_string(e.path().join("queue/rotational")) {
                rot.push(t.trim() == "1");
            }
        }
    }
    let hdd_only = !rot.is_empty() && rot.iter().all(|&r| r);
    assert_eq!(
        v.caps.iter().any(|c| c.part == Part::Disk),
        hdd_only,
        "{text}"
    );

    // The rate is the smallest cap, and the limit names it.
    let min = v.caps.iter().map(|c| c.records_per_sec).min().unwrap();
    assert_eq!(v.records_per_sec, min, "{text}");
    assert!(
        v.caps
            .iter()
            .any(|c| c.part == v.limit && c.records_per_sec == min)
    );
    if hdd_only && expected_tier.is_none() {
        assert_eq!(
            (v.records_per_sec, v.limit),
            (150_000, Part::Disk),
            "{text}"
        );
    }

    // The sysctl advice matches the values the kernel reports.
    if let Some(rmem_max) = fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    {
        let wanted = profiles()[0].kernel.rmem_max;
        let advised = v
            .advice
            .iter()
            .any(|a| a.starts_with("Raise net.core.rmem_max"));
        assert_eq!(advised, rmem_max < wanted, "{text}");
    }
    if expected_tier.is_none() {
        assert!(
            v.advice
                .iter()
                .any(|a| a.starts_with("To run a tier, start with tier-8")),
            "{text}"
        );
    }
    eprintln!("{text}");
}
