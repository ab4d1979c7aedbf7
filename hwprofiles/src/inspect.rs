//! Machine inspection: what a box has, read from `/sys` and `/proc` under a root directory.
//!
//! Everything is read below [`Machine::inspect`]'s `root` (`/` on a real machine), so tests feed
//! fake trees. Nothing here panics on odd contents: a file that is missing, unreadable or holds
//! garbage makes that fact unknown (`None`), and a line in [`Machine::unknowns`] says which file
//! and why. Read:
//!
//! * cores: `sys/devices/system/cpu/online`, then per online CPU
//!   `cpuN/topology/{physical_package_id,core_id,thread_siblings_list}`;
//! * memory: `MemTotal` in `proc/meminfo`;
//! * NICs: `sys/class/net/*/speed` (Mb/s), leaving out `lo` and links whose speed reads `-1` or
//!   cannot be read (down, virtual); a NIC is physical when `sys/class/net/NAME/device` exists;
//! * disks: `sys/block/*/queue/rotational`, leaving out `loop*`, `ram*`, `zram*`, `sr*` and `fd*`
//!   (not data disks); `dm-*` and `md*` are reported as the kernel describes them;
//! * io_uring: `proc/sys/kernel/io_uring_disabled` (Linux 6.6 and later) and the kernel release
//!   in `proc/sys/kernel/osrelease`;
//! * kernel settings: `proc/sys/net/core/{rmem_max,rmem_default,netdev_max_backlog,
//!   netdev_budget}`, `proc/sys/vm/max_map_count`, and the memlock limit of this process from
//!   `proc/self/limits`.
//!
//! Not inspected: NUMA nodes, NIC queues and interrupt placement, bonds and teams (a bond has no
//! `device` link, so it is not counted as a physical NIC: its members are), SIMD level.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What the machine has, as far as it could be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Machine {
    /// The root the files were read under.
    pub root: PathBuf,
    /// CPUs and their topology.
    pub cpus: Cpus,
    /// `MemTotal`, in bytes.
    pub memory_bytes: Option<u64>,
    /// NICs with a known link speed, fastest first.
    pub nics: Vec<Nic>,
    /// Interfaces left out of [`Machine::nics`] because their speed is unknown (down, virtual).
    pub nics_without_speed: Vec<String>,
    /// Block devices, by name.
    pub disks: Vec<Disk>,
    /// io_uring support.
    pub io_uring: IoUring,
    /// Kernel settings, in the order of [`SYSCTLS`].
    pub sysctls: Vec<Sysctl>,
    /// `RLIMIT_MEMLOCK` (soft) of this process, bytes; `u64::MAX` for unlimited.
    pub memlock_bytes: Option<u64>,
    /// What could not be read, one line each (file and reason).
    pub unknowns: Vec<String>,
}

/// Online CPUs and their topology.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Cpus {
    /// Online logical CPUs, ascending. `None` when `online` cannot be read.
    pub online: Option<Vec<usize>>,
    /// Distinct `physical_package_id`s (sockets).
    pub packages: Option<usize>,
    /// Distinct (package, `core_id`) pairs: physical cores.
    pub physical_cores: Option<usize>,
    /// Largest number of logical CPUs in one `thread_siblings_list` (2 with SMT on).
    pub threads_per_core: Option<usize>,
}

impl Cpus {
    /// Number of online logical CPUs.
    pub fn count(&self) -> Option<usize> {
        self.online.as_ref().map(Vec::len)
    }
}

/// A network interface with a known link speed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// Link speed, Mb/s.
    pub speed_mbps: u64,
    /// Backed by a device (`sys/class/net/NAME/device` exists), not a virtual interface.
    pub physical: bool,
}

/// A block device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Disk {
    /// Device name (`nvme0n1`, `sda`, `vda`).
    pub name: String,
    /// `queue/rotational`: `Some(true)` for a spinning disk, `None` when unreadable.
    pub rotational: Option<bool>,
}

/// What is known about io_uring on this kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct IoUring {
    /// `kernel.io_uring_disabled`: 0 enabled, 1 only for `kernel.io_uring_group`, 2 disabled.
    /// `None` when the file is absent (kernels before 6.6 have no such setting).
    pub disabled_sysctl: Option<u64>,
    /// `kernel.osrelease`, as read.
    pub kernel_release: Option<String>,
    /// (major, minor) parsed from the release.
    pub kernel_version: Option<(u32, u32)>,
}

impl IoUring {
    /// Provided-buffer rings (`IORING_REGISTER_PBUF_RING`): Linux 5.19.
    pub fn provided_buffer_rings(&self) -> Option<bool> {
        self.kernel_version.map(|v| v >= (5, 19))
    }

    /// Multishot `recvmsg` (`IORING_RECV_MULTISHOT`): Linux 6.0.
    pub fn multishot_recvmsg(&self) -> Option<bool> {
        self.kernel_version.map(|v| v >= (6, 0))
    }

    /// Whether the engine's io_uring receive path should work, as far as files can tell: the
    /// kernel is new enough and io_uring is not disabled. `None` when the kernel version is
    /// unknown. Seccomp filters and container runtimes can still block io_uring; the engine
    /// probes with a real datagram at start.
    pub fn usable(&self) -> Option<bool> {
        if self.disabled_sysctl == Some(2) {
            return Some(false);
        }
        self.multishot_recvmsg()
    }
}

/// One kernel setting as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Sysctl {
    /// Dotted name (`net.core.rmem_max`).
    pub name: &'static str,
    /// Value, `None` when unreadable.
    pub value: Option<u64>,
}

/// The kernel settings inspected, in order.
pub const SYSCTLS: [&str; 5] = [
    "net.core.rmem_max",
    "net.core.rmem_default",
    "net.core.netdev_max_backlog",
    "net.core.netdev_budget",
    "vm.max_map_count",
];

impl Machine {
    /// Reads the machine under `root` (`Path::new("/")` for this machine).
    pub fn inspect(root: &Path) -> Self {
        let mut r = Reader {
            root,
            unknowns: Vec::new(),
        };
        let cpus = r.cpus();
        let memory_bytes = r.mem_total();
        let (nics, nics_without_speed) = r.nics();
        let disks = r.disks();
        let io_uring = r.io_uring();
        let sysctls = SYSCTLS
            .iter()
            .map(|&name| Sysctl {
                name,
                value: r.number(&format!("proc/sys/{}", name.replace('.', "/"))),
            })
            .collect();
        let memlock_bytes = r.memlock();
        Self {
            root: root.to_path_buf(),
            cpus,
            memory_bytes,
            nics,
            nics_without_speed,
            disks,
            io_uring,
            sysctls,
            memlock_bytes,
            unknowns: r.unknowns,
        }
    }

    /// The value of a kernel setting from [`SYSCTLS`], when it was read.
    pub fn sysctl(&self, name: &str) -> Option<u64> {
        self.sysctls.iter().find(|s| s.name == name)?.value
    }

    /// The fastest physical NIC with a known speed.
    pub fn fastest_physical_nic(&self) -> Option<&Nic> {
        self.nics
            .iter()
            .filter(|n| n.physical)
            .max_by_key(|n| n.speed_mbps)
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unknown = "unknown";
        writeln!(f, "Machine (read under {}):", self.root.display())?;
        let c = &self.cpus;
        match &c.online {
            Some(online) => {
                write!(
                    f,
                    "  cores:    {} online ({})",
                    online.len(),
                    cpu_list(online)
                )?;
                let parts: Vec<String> = [
                    c.packages.map(|n| format!("{n} package(s)")),
                    c.physical_cores.map(|n| format!("{n} physical core(s)")),
                    c.threads_per_core
                        .map(|n| format!("{n} thread(s) per core")),
                ]
                .into_iter()
                .flatten()
                .collect();
                if parts.is_empty() {
                    writeln!(f)?;
                } else {
                    writeln!(f, "; {}", parts.join(", "))?;
                }
            }
            None => writeln!(f, "  cores:    {unknown}")?,
        }
        match self.memory_bytes {
            Some(b) => writeln!(f, "  memory:   {} (MemTotal)", gib(b))?,
            None => writeln!(f, "  memory:   {unknown}")?,
        }
        if self.nics.is_empty() {
            writeln!(f, "  NICs:     none with a known link speed")?;
        }
        for n in &self.nics {
            let kind = if n.physical {
                "physical"
            } else {
                "virtual, not counted"
            };
            writeln!(
                f,
                "  NIC:      {} {} ({kind})",
                n.name,
                link_speed(n.speed_mbps)
            )?;
        }
        if !self.nics_without_speed.is_empty() {
            writeln!(
                f,
                "            speed unknown (down or virtual): {}",
                self.nics_without_speed.join(", ")
            )?;
        }
        if self.disks.is_empty() {
            writeln!(f, "  disks:    none found")?;
        }
        for d in &self.disks {
            let kind = match d.rotational {
                Some(true) => "rotational (HDD)",
                Some(false) => "non-rotational (SSD/NVMe)",
                None => "rotational unknown",
            };
            writeln!(f, "  disk:     {} {kind}", d.name)?;
        }
        let u = &self.io_uring;
        let disabled = match u.disabled_sysctl {
            None => "kernel.io_uring_disabled absent (assumed enabled)".to_owned(),
            Some(0) => "kernel.io_uring_disabled = 0 (enabled)".to_owned(),
            Some(1) => "kernel.io_uring_disabled = 1 (only for kernel.io_uring_group)".to_owned(),
            Some(n) => format!("kernel.io_uring_disabled = {n} (disabled)"),
        };
        let features = match (u.provided_buffer_rings(), u.multishot_recvmsg()) {
            (Some(pb), Some(ms)) => format!(
                "provided buffer rings {}, multishot recvmsg {}",
                yes_no(pb),
                yes_no(ms)
            ),
            _ => "kernel version unknown".to_owned(),
        };
        writeln!(
            f,
            "  io_uring: kernel {}; {disabled}; {features}",
            u.kernel_release.as_deref().unwrap_or(unknown)
        )?;
        for s in &self.sysctls {
            match s.value {
                Some(v) => writeln!(f, "  sysctl:   {} = {v}", s.name)?,
                None => writeln!(f, "  sysctl:   {} {unknown}", s.name)?,
            }
        }
        match self.memlock_bytes {
            Some(u64::MAX) => writeln!(f, "  memlock:  unlimited (this process)")?,
            Some(b) => writeln!(f, "  memlock:  {b} bytes (this process)")?,
            None => writeln!(f, "  memlock:  {unknown}")?,
        }
        for u in &self.unknowns {
            writeln!(f, "  unknown:  {u}")?;
        }
        Ok(())
    }
}

/// Reads files under the root, noting what it cannot read.
struct Reader<'a> {
    root: &'a Path,
    unknowns: Vec<String>,
}

impl Reader<'_> {
    fn cpus(&mut self) -> Cpus {
        let Some(text) = self.text("sys/devices/system/cpu/online") else {
            return Cpus::default();
        };
        let Some(online) = parse_cpu_list(&text) else {
            self.note(
                "sys/devices/system/cpu/online",
                format!("not a CPU list: {:?}", text.trim()),
            );
            return Cpus::default();
        };

        // Topology: any CPU whose files are missing or garbled makes that figure unknown.
        let mut cores = BTreeSet::new();
        let mut packages = BTreeSet::new();
        let mut threads = 0;
        let mut complete = true;
        for &cpu in &online {
            let dir = format!("sys/devices/system/cpu/cpu{cpu}/topology");
            let package = self.number(&format!("{dir}/physical_package_id"));
            let core = self.number(&format!("{dir}/core_id"));
            let siblings = self
                .text(&format!("{dir}/thread_siblings_list"))
                .and_then(|t| parse_cpu_list(&t));
            match (package, core, siblings) {
                (Some(p), Some(c), Some(s)) => {
                    packages.insert(p);
                    cores.insert((p, c));
                    threads = threads.max(s.len());
                }
                _ => complete = false,
            }
        }
        Cpus {
            online: Some(online),
            packages: complete.then_some(packages.len()),
            physical_cores: complete.then_some(cores.len()),
            threads_per_core: complete.then_some(threads),
        }
    }

    fn mem_total(&mut self) -> Option<u64> {
        let text = self.text("proc/meminfo")?;
        let kib = text.lines().find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            let mut it = rest.split_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            (it.next() == Some("kB")).then_some(n)
        });
        match kib.and_then(|k| k.checked_mul(1024)) {
            Some(b) => Some(b),
            None => {
                self.note("proc/meminfo", "no readable `MemTotal: N kB` line".into());
                None
            }
        }
    }

    fn nics(&mut self) -> (Vec<Nic>, Vec<String>) {
        let mut nics = Vec::new();
        let mut without = Vec::new();
        for name in self.entries("sys/class/net") {
            if name == "lo" {
                continue;
            }
            let dir = self.root.join("sys/class/net").join(&name);
            // A link that is down or virtual reads -1 or fails with EINVAL; neither is a fault.
            let speed = std::fs::read_to_string(dir.join("speed"))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .filter(|s| (1..=MAX_LINK_MBPS).contains(s));
            let Some(speed_mbps) = speed else {
                without.push(name);
                continue;
            };
            nics.push(Nic {
                physical: dir.join("device").exists(),
                name,
                speed_mbps,
            });
        }
        nics.sort_by(|a, b| b.speed_mbps.cmp(&a.speed_mbps).then(a.name.cmp(&b.name)));
        (nics, without)
    }

    fn disks(&mut self) -> Vec<Disk> {
        let mut disks = Vec::new();
        for name in self.entries("sys/block") {
            if ["loop", "ram", "zram", "sr", "fd"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                continue;
            }
            let rotational = match self.number(&format!("sys/block/{name}/queue/rotational")) {
                Some(0) => Some(false),
                Some(1) => Some(true),
                Some(n) => {
                    self.note(
                        &format!("sys/block/{name}/queue/rotational"),
                        format!("{n} is not 0 or 1"),
                    );
                    None
                }
                None => None,
            };
            disks.push(Disk { name, rotational });
        }
        disks
    }

    fn io_uring(&mut self) -> IoUring {
        let path = "proc/sys/kernel/io_uring_disabled";
        // Absent on kernels before 6.6: not an unknown, the setting does not exist there.
        let disabled_sysctl = if self.root.join(path).exists() {
            self.number(path)
        } else {
            None
        };
        let kernel_release = self
            .text("proc/sys/kernel/osrelease")
            .map(|t| t.trim().to_owned());
        let kernel_version = kernel_release.as_deref().and_then(parse_kernel_version);
        if kernel_version.is_none()
            && let Some(r) = &kernel_release
        {
            self.note(
                "proc/sys/kernel/osrelease",
                format!("cannot read a version from {r:?}"),
            );
        }
        IoUring {
            disabled_sysctl,
            kernel_release,
            kernel_version,
        }
    }

    fn memlock(&mut self) -> Option<u64> {
        let text = self.text("proc/self/limits")?;
        // "Max locked memory         8388608              8388608              bytes"
        let value = text.lines().find_map(|l| {
            let soft = l
                .strip_prefix("Max locked memory")?
                .split_whitespace()
                .next()?;
            if soft == "unlimited" {
                Some(u64::MAX)
            } else {
                soft.parse().ok()
            }
        });
        if value.is_none() {
            self.note(
                "proc/self/limits",
                "no readable `Max locked memory` line".into(),
            );
        }
        value
    }

    /// Directory entry names, sorted; an unreadable directory is noted and gives none.
    fn entries(&mut self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.root.join(rel)) {
            Ok(dir) => dir
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect(),
            Err(e) => {
                self.note(rel, e.to_string());
                return Vec::new();
            }
        };
        names.sort();
        names
    }

    fn text(&mut self, rel: &str) -> Option<String> {
        match std::fs::read_to_string(self.root.join(rel)) {
            Ok(t) => Some(t),
            Err(e) => {
                self.note(rel, e.to_string());
                None
            }
        }
    }

    fn number(&mut self, rel: &str) -> Option<u64> {
        let text = self.text(rel)?;
        match text.trim().parse() {
            Ok(n) => Some(n),
            Err(_) => {
                self.note(rel, format!("not a number: {:?}", text.trim()));
                None
            }
        }
    }

    fn note(&mut self, rel: &str, why: String) {
        self.unknowns
            .push(format!("{}: {why}", self.root.join(rel).display()));
    }
}

/// Parses a kernel CPU list (`0-3,8,10-11`). `None` on anything else, or on a list longer
/// than [`MAX_CPUS`] (a garbled range).
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    let mut cpus = BTreeSet::new();
    for part in text.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (
                lo.trim().parse::<usize>().ok()?,
                hi.trim().parse::<usize>().ok()?,
            ),
            None => {
                let n = part.trim().parse::<usize>().ok()?;
                (n, n)
            }
        };
        if lo > hi || hi >= MAX_CPUS {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    Some(cpus.into_iter().collect())
}

/// Formats CPUs as a kernel CPU list (`0-3,8`).
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// (major, minor) of a kernel release such as `6.8.0-45-generic` or `6.18.44-fc-v1252`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Bytes as GiB with one decimal.
pub(crate) fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

/// A link speed in Mb/s as operators say it (`10 GbE`, `100 Mb/s`).
pub(crate) fn link_speed(mbps: u64) -> String {
    if mbps >= 1_000 && mbps.is_multiple_of(1_000) {
        format!("{} GbE", mbps / 1_000)
    } else if mbps >= 1_000 {
        format!("{:.1} GbE", mbps as f64 / 1_000.0)
    } else {
        format!("{mbps} Mb/s")
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// One GiB.
pub(crate) const GIB: u64 = 1 << 30;
/// CPU numbers at or above this are taken as garbage (Linux's NR_CPUS tops out at 8192).
const MAX_CPUS: usize = 8_192;
/// Link speeds above 1.6 Tb/s are taken as garbage (`4294967295` is SPEED_UNKNOWN as u32).
const MAX_LINK_MBPS: u64 = 1_600_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        for garbage in ["3-1", "a", "0-", "0,,1", "0-99999999", "-1"] {
            assert_eq!(parse_cpu_list(garbage), None, "{garbage:?}");
        }
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn parses_kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v1252\n"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.15.0-105-generic"), Some((5, 15)));
        assert_eq!(parse_kernel_version("6.0"), Some((6, 0)));
        assert_eq!(parse_kernel_version("linux"), None);
        assert_eq!(parse_kernel_version("6"), None);
    }

    #[test]
    fn io_uring_features_follow_the_kernel() {
        let at = |v, d| IoUring {
            disabled_sysctl: d,
            kernel_release: None,
            kernel_version: v,
        };
        assert_eq!(at(Some((5, 19)), None).provided_buffer_rings(), Some(true));
        assert_eq!(at(Some((5, 19)), None).multishot_recvmsg(), Some(false));
        assert_eq!(at(Some((6, 1)), Some(0)).usable(), Some(true));
        assert_eq!(at(Some((6, 8)), Some(2)).usable(), Some(false));
        assert_eq!(at(None, Some(2)).usable(), Some(false));
        assert_eq!(at(None, None).usable(), None);
    }

    #[test]
    fn formats_link_speeds() {
        assert_eq!(link_speed(1_000), "1 GbE");
        assert_eq!(link_speed(25_000), "25 GbE");
        assert_eq!(link_speed(2_500), "2.5 GbE");
        assert_eq!(link_speed(100), "100 Mb/s");
    }
}
