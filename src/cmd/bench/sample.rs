//! What the benchmark reads off the machine during a step: per-core CPU time (/proc/stat), a
//! process's CPU time and resident memory (/proc/PID/stat, /proc/PID/status), and Valkey's
//! command counter (`INFO stats`).

use std::collections::BTreeMap;
use std::fs;

/// Clock ticks per second of /proc's CPU times (`USER_HZ`, 100 on every Linux architecture
/// flowplane runs on).
const USER_HZ: f64 = 100.0;

/// Busy and total ticks per CPU at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct CpuTimes(BTreeMap<usize, (u64, u64)>);

impl CpuTimes {
    /// Reads /proc/stat; empty when it cannot be read.
    pub(crate) fn now() -> Self {
        let Ok(text) = fs::read_to_string("/proc/stat") else {
            return Self::default();
        };
        Self::parse(&text)
    }

    fn parse(text: &str) -> Self {
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let Some(name) = f.next() else { continue };
            let Some(cpu) = name.strip_prefix("cpu").and_then(|n| n.parse().ok()) else {
                continue;
            };
            let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            if v.len() < 5 {
                continue;
            }
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            let total: u64 = v.iter().take(8).sum();
            let idle = v[3] + v[4];
            map.insert(cpu, (total - idle, total));
        }
        Self(map)
    }

    /// Percent busy per CPU between `earlier` and `self`.
    pub(crate) fn busy_since(&self, earlier: &Self) -> Vec<(usize, f64)> {
        self.0
            .iter()
            .filter_map(|(&cpu, &(busy, total))| {
                let &(b0, t0) = earlier.0.get(&cpu)?;
                let dt = total.saturating_sub(t0);
                (dt > 0).then(|| (cpu, 100.0 * busy.saturating_sub(b0) as f64 / dt as f64))
            })
            .collect()
    }
}

/// User plus system CPU seconds a process has used (`None` when it cannot be read).
pub(crate) fn process_cpu_secs(pid: u32) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ... utime is field 14 of the line, index 11 here; stime 12.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Resident memory of a process in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The pid in a pidfile (Valkey's and the broker's, written by scripts/services.sh), when that
/// process exists.
pub(crate) fn pid_from_file(path: &std::path::Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
    fs::metadata(format!("/proc/{pid}")).ok()?;
    Some(pid)
}

/// Bytes waiting in the receive queues of the UDP sockets bound to local `port`
/// (/proc/net/udp and udp6, `rx_queue`); `None` when no such socket is listed.
pub(crate) fn udp_rx_queue(port: u16) -> Option<u64> {
    let mut found = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for q in udp_queues(&text, port) {
            *found.get_or_insert(0) += q;
        }
    }
    found
}

fn udp_queues(text: &str, port: u16) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit_once(':')?.1;
            if u16::from_str_radix(local_port, 16).ok()? != port {
                return None;
            }
            let rx = f.get(4)?.split_once(':')?.1;
            u64::from_str_radix(rx, 16).ok()
        })
        .collect()
}

/// Valkey's `total_commands_processed`.
pub(crate) fn valkey_commands(conn: &mut redis::Connection) -> Option<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query(conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The CPU model name from /proc/cpuinfo.
pub(crate) fn cpu_model() -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_per_cpu_busy_time() {
        let a = CpuTimes::parse(
            "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 40 0 0 0 0 0 0\n",
        );
        let b = CpuTimes::parse(
            "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 55 0 5 90 0 0 0 0 0 0\ncpu1 5 0 5 140 0 0 0 0 0 0\n",
        );
        assert_eq!(b.busy_since(&a), vec![(0, 50.0), (1, 0.0)]);
    }

    #[test]
    fn reads_udp_receive_queues() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                    \x20 1: 0100007F:0833 00000000:0000 07 00000000:00001A00 00:00000000 00000000     0        0 1 2 0 0\n\
                    \x20 2: 0100007F:0833 00000000:0000 07 00000000:00000100 00:00000000 00000000     0        0 1 2 0 0\n\
                    \x20 3: 0100007F:0834 00000000:0000 07 00000000:00000005 00:00000000 00000000     0        0 1 2 0 0\n";
        assert_eq!(udp_queues(text, 2099), vec![0x1a00, 0x100]);
        assert!(udp_queues(text, 80).is_empty());
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert_eq!(udp_rx_queue(port), Some(0));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(process_cpu_secs(me).is_some());
        assert!(rss_bytes(me).unwrap() > 1 << 20);
    }
}
