//! Hardware profiles: the data files in `hwprofiles/profiles/`, embedded in the binary.
//!
//! A profile names the tier of the sizing table it implements, the rate it is sized for, which
//! core runs what, and the engine, sink and kernel settings that go with that layout. The files
//! are parsed with serde into [`Profile`] and checked by [`Profile::validate`]; a test parses and
//! validates every embedded file, so a broken file never ships.
//!
//! The engine crate depends on this one, not the other way round: the settings here are plain
//! numbers, and the binary maps them onto `EngineConfig` and the sink configurations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The profiles compiled into the binary: (file name without `.toml`, contents).
const BUILTIN: [(&str, &str); 4] = [
    ("tier-8", include_str!("../profiles/tier-8.toml")),
    ("tier-16", include_str!("../profiles/tier-16.toml")),
    ("tier-32", include_str!("../profiles/tier-32.toml")),
    ("ha-3x16", include_str!("../profiles/ha-3x16.toml")),
];

/// One hardware profile.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Profile {
    /// Short name, the file name without `.toml` (`tier-8`).
    pub name: String,
    /// One line for operators.
    pub description: String,
    /// A stand-alone box or one node of a redundant cluster.
    pub role: Role,
    /// What the tier is sized for and what hardware it assumes.
    pub sizing: Sizing,
    /// Which core runs what.
    pub cores: Cores,
    /// Socket and io_uring receive sizes.
    pub receive: Receive,
    /// Aggregation table and sink queue sizes.
    pub aggregation: Aggregation,
    /// Valkey sink settings.
    pub valkey: Valkey,
    /// Kafka sink settings.
    pub kafka: Kafka,
    /// Kernel settings the profile expects.
    pub kernel: Kernel,
    /// How the nodes of a cluster share exporters, Kafka and Valkey (`role = "ha_node"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<Ha>,
}

/// A stand-alone box or a cluster node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// One node of several sharing exporters, Kafka and Valkey. `--profile auto` never picks
    /// such a profile: whether a box is part of a cluster is the operator's decision.
    HaNode,
    /// A stand-alone appliance.
    Single,
}

/// The sizing-table row a profile implements.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Sizing {
    /// Records per second the profile is sized to hold (per node for a cluster node).
    pub records_per_sec: u64,
    /// Logical CPUs the tier assumes.
    pub cores: usize,
    /// Installed memory the tier assumes, in GB (GiB, as memory is sold).
    pub memory_gb: u64,
    /// Link speed of the NIC the tier assumes, in Gb/s.
    pub nic_gbps: u64,
}

/// Which logical CPU runs what. Numbers are the kernel's CPU numbers (`/sys/devices/system/cpu/
/// cpuN`), the same numbers `taskset` and `engine.worker_cores` use.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Cores {
    /// Left to the operating system and the NIC's interrupts; flowplane runs nothing here.
    pub os: Vec<usize>,
    /// One worker thread per core (receive, decode, aggregate), in worker order.
    pub workers: Vec<usize>,
    /// Merger threads (merge the per-worker tables, Z-score).
    pub mergers: Vec<usize>,
    /// Sink threads (Valkey, Kafka).
    pub sinks: Vec<usize>,
}

impl Cores {
    /// Every core the profile uses, OS cores included.
    pub fn all(&self) -> impl Iterator<Item = usize> + '_ {
        self.os
            .iter()
            .chain(&self.workers)
            .chain(&self.mergers)
            .chain(&self.sinks)
            .copied()
    }
}

/// Receive sizes, per worker.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Receive {
    /// `SO_RCVBUF` requested per socket (`engine.rcvbuf_bytes`).
    pub rcvbuf_bytes: u64,
    /// Datagrams per `recvmmsg` call (`engine.recv_batch`).
    pub recv_batch: u64,
    /// io_uring submission queue entries per worker ring (`engine.uring_entries`).
    pub uring_entries: u64,
    /// io_uring provided buffers per worker (`engine.uring_buffers`).
    pub uring_buffers: u64,
    /// Bytes per provided buffer (`engine.uring_datagram_bytes`).
    pub uring_datagram_bytes: u64,
}

/// Aggregation sizes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Aggregation {
    /// Slots per table, per worker and per dimension (`engine.table_capacity`).
    pub table_capacity: u64,
    /// Windows buffered per sink (`engine.sink_queue_windows`).
    pub sink_queue_windows: u64,
}

/// Valkey sink settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Valkey {
    /// Commands per transaction (`valkey.max_pipeline_commands`).
    pub max_pipeline_commands: u64,
}

/// Kafka producer settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Kafka {
    /// `linger.ms` (`kafka.linger_ms`).
    pub linger_ms: u64,
    /// `batch.size` (`kafka.batch_size_bytes`).
    pub batch_size_bytes: u64,
    /// Partitions of topics flowplane creates (`kafka.topic_partitions`).
    pub topic_partitions: u64,
    /// Replication factor of topics flowplane creates (`kafka.topic_replication`); absent
    /// leaves the configuration's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_replication: Option<u64>,
}

/// Kernel settings a profile expects (minimums).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Kernel {
    /// `net.core.rmem_max`, bytes.
    pub rmem_max: u64,
    /// `net.core.rmem_default`, bytes.
    pub rmem_default: u64,
    /// `net.core.netdev_max_backlog`, packets.
    pub netdev_max_backlog: u64,
    /// `net.core.netdev_budget`, packets.
    pub netdev_budget: u64,
    /// `vm.max_map_count`, when the profile needs it (only where OpenSearch shares the box).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_max_map_count: Option<u64>,
    /// `RLIMIT_MEMLOCK` for io_uring, bytes.
    pub memlock_bytes: u64,
}

impl Kernel {
    /// The sysctls as (name, expected minimum), in a fixed order.
    pub fn sysctls(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("net.core.rmem_max", self.rmem_max),
            ("net.core.rmem_default", self.rmem_default),
            ("net.core.netdev_max_backlog", self.netdev_max_backlog),
            ("net.core.netdev_budget", self.netdev_budget),
        ];
        if let Some(n) = self.vm_max_map_count {
            v.push(("vm.max_map_count", n));
        }
        v
    }
}

/// How the nodes of a cluster share the work.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Ha {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Rate of the whole cluster with every node up.
    pub cluster_records_per_sec: u64,
    /// How exporters reach the nodes.
    pub exporters: String,
    /// How the nodes share Kafka.
    pub kafka: String,
    /// How the nodes share Valkey.
    pub valkey: String,
}

impl Profile {
    /// Parses profile text; `source` names it in errors (a file name or a built-in name).
    ///
    /// # Errors
    ///
    /// [`ProfileError::Parse`] for TOML syntax, wrong types, missing and unknown keys (the
    /// message names the key and line), [`ProfileError::Invalid`] for what
    /// [`Profile::validate`] refuses.
    pub fn parse(source: &str, text: &str) -> Result<Self, ProfileError> {
        let p: Self = toml::from_str(text).map_err(|e| ProfileError::Parse {
            source_name: source.to_owned(),
            message: e.to_string(),
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Checks the profile is self-consistent: at least one worker, merger and sink core, no core
    /// used twice, core 0 left to the OS, every core below `sizing.cores`, sizes within the
    /// ranges the engine and sinks accept, `rmem_max` at least the socket buffer.
    ///
    /// # Errors
    ///
    /// [`ProfileError::Invalid`] naming the first setting refused.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |setting: &str, reason: String| ProfileError::Invalid {
            profile: self.name.clone(),
            setting: setting.to_owned(),
            reason,
        };
        let c = &self.cores;
        if self.sizing.records_per_sec == 0 {
            return Err(bad("sizing.records_per_sec", "must be above 0".into()));
        }
        if c.workers.is_empty() {
            return Err(bad(
                "cores.workers",
                "needs at least one worker core".into(),
            ));
        }
        if c.mergers.is_empty() {
            return Err(bad(
                "cores.mergers",
                "needs at least one merger core".into(),
            ));
        }
        if c.sinks.is_empty() {
            return Err(bad("cores.sinks", "needs at least one sink core".into()));
        }
        if !c.os.contains(&0) {
            return Err(bad(
                "cores.os",
                "must contain core 0 (the OS and interrupts)".into(),
            ));
        }
        let mut owner: BTreeMap<usize, &str> = BTreeMap::new();
        for (role, list) in [
            ("os", &c.os),
            ("workers", &c.workers),
            ("mergers", &c.mergers),
            ("sinks", &c.sinks),
        ] {
            for &core in list {
                if let Some(prev) = owner.insert(core, role) {
                    return Err(bad(
                        &format!("cores.{role}"),
                        format!("core {core} is already used by cores.{prev}"),
                    ));
                }
                if core >= self.sizing.cores {
                    return Err(bad(
                        &format!("cores.{role}"),
                        format!(
                            "core {core} does not exist on a {}-core tier (cores 0 to {})",
                            self.sizing.cores,
                            self.sizing.cores - 1
                        ),
                    ));
                }
            }
        }

        let r = &self.receive;
        range(
            &bad,
            "receive.rcvbuf_bytes",
            r.rcvbuf_bytes,
            65_536,
            i32::MAX as u64,
        )?;
        range(&bad, "receive.recv_batch", r.recv_batch, 1, 1_024)?;
        range(&bad, "receive.uring_entries", r.uring_entries, 8, 4_096)?;
        range(&bad, "receive.uring_buffers", r.uring_buffers, 8, 32_768)?;
        power_of_two(&bad, "receive.uring_buffers", r.uring_buffers)?;
        range(
            &bad,
            "receive.uring_datagram_bytes",
            r.uring_datagram_bytes,
            1_472,
            65_507,
        )?;
        let a = &self.aggregation;
        range(
            &bad,
            "aggregation.table_capacity",
            a.table_capacity,
            16,
            1 << 24,
        )?;
        power_of_two(&bad, "aggregation.table_capacity", a.table_capacity)?;
        range(
            &bad,
            "aggregation.sink_queue_windows",
            a.sink_queue_windows,
            1,
            86_400,
        )?;
        range(
            &bad,
            "valkey.max_pipeline_commands",
            self.valkey.max_pipeline_commands,
            100,
            10_000_000,
        )?;
        let k = &self.kafka;
        range(&bad, "kafka.linger_ms", k.linger_ms, 0, 60_000)?;
        range(
            &bad,
            "kafka.batch_size_bytes",
            k.batch_size_bytes,
            1,
            i32::MAX as u64,
        )?;
        range(
            &bad,
            "kafka.topic_partitions",
            k.topic_partitions,
            1,
            10_000,
        )?;
        if let Some(rf) = k.topic_replication {
            range(&bad, "kafka.topic_replication", rf, 1, 100)?;
        }
        if self.kernel.rmem_max < r.rcvbuf_bytes {
            return Err(bad(
                "kernel.rmem_max",
                format!(
                    "{} is below receive.rcvbuf_bytes ({}): the kernel would cap every socket",
                    self.kernel.rmem_max, r.rcvbuf_bytes
                ),
            ));
        }

        match (self.role, &self.ha) {
            (Role::HaNode, None) => Err(bad(
                "ha",
                "a cluster node profile needs an [ha] table".into(),
            )),
            (Role::Single, Some(_)) => Err(bad(
                "ha",
                "only a profile with role = \"ha_node\" has an [ha] table".into(),
            )),
            (Role::HaNode, Some(ha)) if ha.nodes < 2 => Err(bad(
                "ha.nodes",
                format!("{} nodes is not a cluster", ha.nodes),
            )),
            _ => Ok(()),
        }
    }

    /// Cores the profile needs the machine to have: the highest core it names, plus one.
    pub fn cores_needed(&self) -> usize {
        self.cores.all().max().map_or(0, |c| c + 1)
    }
}

/// Every built-in profile, in tier order (tier-8, tier-16, tier-32, ha-3x16).
///
/// # Errors
///
/// A built-in file that does not parse or validate (a test keeps this from shipping).
pub fn builtin() -> Result<Vec<Profile>, ProfileError> {
    BUILTIN
        .iter()
        .map(|(name, text)| {
            let p = Profile::parse(&format!("built-in profile {name}"), text)?;
            if p.name != *name {
                return Err(ProfileError::Invalid {
                    profile: (*name).to_owned(),
                    setting: "name".to_owned(),
                    reason: format!("says `{}`; it must match the file name", p.name),
                });
            }
            Ok(p)
        })
        .collect()
}

/// Names of the built-in profiles.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// The text of a built-in profile, as shipped.
pub fn builtin_text(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A built-in profile by name.
///
/// # Errors
///
/// [`ProfileError::Unknown`] listing the names there are.
pub fn by_name(name: &str) -> Result<Profile, ProfileError> {
    builtin()?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ProfileError::Unknown {
            name: name.to_owned(),
            known: builtin_names().join(", "),
        })
}

/// Why a profile cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// A value is out of range or contradicts another.
    #[error("profile {profile}: invalid `{setting}`: {reason}")]
    Invalid {
        /// The profile's name.
        profile: String,
        /// The setting, with its table (`cores.workers`).
        setting: String,
        /// Why.
        reason: String,
    },
    /// The text is not a profile (TOML syntax, types, missing or unknown keys).
    #[error("{source_name}: {message}")]
    Parse {
        /// Where the text came from.
        source_name: String,
        /// The TOML parser's message, naming the key and line.
        message: String,
    },
    /// No built-in profile has this name.
    #[error("no hardware profile named `{name}` (known: {known}, or `auto`)")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names there are, comma-separated.
        known: String,
    },
}

fn range(
    bad: &impl Fn(&str, String) -> ProfileError,
    setting: &str,
    v: u64,
    lo: u64,
    hi: u64,
) -> Result<(), ProfileError> {
    if v < lo || v > hi {
        return Err(bad(
            setting,
            format!("{v} is outside the allowed range {lo} to {hi}"),
        ));
    }
    Ok(())
}

fn power_of_two(
    bad: &impl Fn(&str, String) -> ProfileError,
    setting: &str,
    v: u64,
) -> Result<(), ProfileError> {
    if !v.is_power_of_two() {
        return Err(bad(setting, format!("{v} is not a power of two")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier8_with(from: &str, to: &str) -> Result<Profile, ProfileError> {
        let text = builtin_text("tier-8").unwrap();
        assert!(text.contains(from), "tier-8.toml has no `{from}`");
        Profile::parse("test", &text.replacen(from, to, 1))
    }

    fn invalid(r: Result<Profile, ProfileError>) -> (String, String) {
        match r {
            Err(ProfileError::Invalid {
                setting, reason, ..
            }) => (setting, reason),
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn every_builtin_profile_parses_and_validates() {
        let all = builtin().unwrap();
        let names: Vec<_> = all.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["tier-8", "tier-16", "tier-32", "ha-3x16"]);
        for p in &all {
            assert_eq!(
                p.cores_needed(),
                p.sizing.cores,
                "{}: uses every core",
                p.name
            );
            assert!(p.kernel.rmem_max >= p.receive.rcvbuf_bytes);
        }
        let rates: Vec<_> = all.iter().map(|p| p.sizing.records_per_sec).collect();
        assert_eq!(rates, [250_000, 400_000, 500_000, 250_000]);
        let ha = by_name("ha-3x16").unwrap();
        assert_eq!(ha.role, Role::HaNode);
        let cluster = ha.ha.as_ref().unwrap();
        // Two nodes left must carry the whole cluster's rate.
        assert!(ha.sizing.records_per_sec * (cluster.nodes - 1) >= cluster.cluster_records_per_sec);
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let e = by_name("tier-64").unwrap_err().to_string();
        assert_eq!(
            e,
            "no hardware profile named `tier-64` (known: tier-8, tier-16, tier-32, ha-3x16, or \
             `auto`)"
        );
    }

    #[test]
    fn refuses_inconsistent_profiles() {
        let (s, r) = invalid(tier8_with(
            "workers = [1, 2, 3, 4, 5]",
            "workers = [1, 2, 3, 4, 6]",
        ));
        assert_eq!(s, "cores.mergers");
        assert_eq!(r, "core 6 is already used by cores.workers");

        let (s, r) = invalid(tier8_with("workers = [1, 2, 3, 4, 5]", "workers = []"));
        assert_eq!(
            (s.as_str(), r.as_str()),
            ("cores.workers", "needs at least one worker core")
        );

        let (s, r) = invalid(tier8_with("sinks = [7]", "sinks = [8]"));
        assert_eq!(s, "cores.sinks");
        assert!(r.contains("core 8 does not exist on a 8-core tier"), "{r}");

        let (s, _) = invalid(tier8_with("os = [0]", "os = [7]"));
        assert_eq!(s, "cores.os");

        let (s, r) = invalid(tier8_with(
            "table_capacity = 65_536",
            "table_capacity = 60_000",
        ));
        assert_eq!(
            (s.as_str(), r.as_str()),
            ("aggregation.table_capacity", "60000 is not a power of two")
        );

        let (s, _) = invalid(tier8_with("uring_buffers = 2_048", "uring_buffers = 3_000"));
        assert_eq!(s, "receive.uring_buffers");

        let (s, r) = invalid(tier8_with("rmem_max = 67_108_864", "rmem_max = 212_992"));
        assert_eq!(s, "kernel.rmem_max");
        assert!(r.contains("below receive.rcvbuf_bytes"), "{r}");

        let (s, _) = invalid(tier8_with("role = \"single\"", "role = \"ha_node\""));
        assert_eq!(s, "ha");
    }

    #[test]
    fn parse_errors_name_the_key_and_line() {
        let e = tier8_with("netdev_budget = 600", "netdev_budgte = 600")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test: "), "{e}");
        assert!(e.contains("unknown field `netdev_budgte`"), "{e}");
        assert!(e.contains("line "), "{e}");
        let e = tier8_with("records_per_sec = 250_000", "records_per_sec = -1").unwrap_err();
        assert!(matches!(e, ProfileError::Parse { .. }), "{e}");
    }
}
