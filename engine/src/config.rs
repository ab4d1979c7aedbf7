//! Engine configuration: the `[engine]` table of the flowplane configuration file.
//!
//! Every setting has a default that works on one small machine (see [`EngineConfig::default`]),
//! and [`EngineConfig::validate`] refuses impossible values at start with a message that names
//! the setting (`engine.<name>`) and the reason.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use flowplane_decoders::DecoderLimits;
use serde::Deserialize;

use crate::key::Dimension;

/// The receive path of the workers (`engine.receive`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiveBackend {
    /// io_uring where the kernel allows it, else `recvmmsg`.
    #[default]
    Auto,
    /// io_uring or nothing: start fails, saying why, when the kernel does not allow it.
    IoUring,
    /// `recvmmsg` batches (the portable path).
    Recvmmsg,
}

/// Settings of the data plane.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// UDP addresses to receive flow exports on. Any listener accepts any format (NetFlow v5,
    /// v9, IPFIX; the version is read from each datagram). Every worker opens its own socket on
    /// each address with `SO_REUSEPORT`, and the kernel spreads exporters over the workers by
    /// their address and port, so one exporter always reaches the same worker (its templates
    /// live there). Default: `["0.0.0.0:2055", "0.0.0.0:4739", "0.0.0.0:6343"]` (the NetFlow, IPFIX and
    /// sFlow ports).
    pub listen: Vec<SocketAddr>,

    /// Number of receive/aggregate worker threads. Default: the number of CPUs available to
    /// the process minus one (the merger and sink threads use the remaining one), at least 1.
    pub workers: usize,

    /// Pin each worker thread to its own core. Default: `true`.
    pub pin_cores: bool,

    /// Explicit cores for the workers, one per worker, in worker order (e.g. `[2, 3, 4, 5]`).
    /// Empty (the default) means workers go to cores 1, 2, ... (wrapping), leaving core 0 to
    /// the merger, sinks and the operating system. Ignored when `pin_cores` is false.
    pub worker_cores: Vec<usize>,

    /// Cores for the merger threads, one per merger shard (`merger_shards` of them, distinct,
    /// none of them a worker core), e.g. `[13]`. Empty (the default) leaves the mergers free to
    /// run on any core that is not a worker core. Ignored when `pin_cores` is false.
    pub merger_cores: Vec<usize>,

    /// Cores for the sink threads, taken in turn (sink `i` on `sink_cores[i % len]`; several
    /// sinks may share a core, none may be a worker core), e.g. `[14, 15]`. Threads a sink
    /// starts itself (librdkafka's) inherit its core. Empty (the default) leaves the sinks free
    /// to run on any core that is not a worker core. Ignored when `pin_cores` is false.
    pub sink_cores: Vec<usize>,

    /// Merger threads. Each merges and scores the keys whose hash falls in its share of the
    /// hash space; one more thread joins their parts of a window into one batch for the sinks.
    /// Use more than 1 only where one merger cannot keep up (the 32-core tier). Default: 1.
    /// Range: 1 to 64.
    pub merger_shards: usize,

    /// Receive buffer requested for each socket (`SO_RCVBUF`), in bytes. The kernel caps it at
    /// `net.core.rmem_max`; flowplane reads the effective size back and warns once when it was
    /// capped. Default: 33554432 (32 MiB). Range: 65536 to 2147483647.
    pub rcvbuf_bytes: usize,

    /// Datagrams fetched per `recvmmsg` call (one buffer of 65535 bytes each, per socket).
    /// Default: 64. Range: 1 to 1024.
    pub recv_batch: usize,

    /// How the workers receive: `auto` (io_uring when the kernel allows it, checked at start
    /// by receiving a datagram through it, else `recvmmsg`), `io_uring` (refuse to start
    /// without it) or `recvmmsg`. Default: `auto`.
    pub receive: ReceiveBackend,

    /// io_uring: submission queue entries of each worker's ring. Default: 256. Range: 8 to
    /// 4096.
    pub uring_entries: u32,

    /// io_uring: buffers in each worker's provided-buffer ring; the kernel picks one per
    /// datagram and the worker returns it once the datagram is decoded. A power of two.
    /// Default: 1024. Range: 8 to 32768.
    pub uring_buffers: u32,

    /// io_uring: the largest datagram payload a buffer holds, in bytes; a larger datagram is
    /// cut and counted as truncated. Default: 9216 (a jumbo frame). Range: 1472 to 65507.
    pub uring_datagram_bytes: usize,

    /// Slots of each aggregation table: per worker, per dimension. Must be a power of two
    /// (16 to 16777216). A table takes new keys until it is 7/8 full; records with further new
    /// keys in that window go to the dimension's counted overflow entry. Default: 65536.
    pub table_capacity: usize,

    /// Aggregation dimensions. Each is a `+`-joined list of key fields, from: `src_ip`,
    /// `dst_ip`, `src_port`, `dst_port`, `protocol`, `exporter`, `input_if`, `output_if`, `tos`,
    /// `src_as`, `dst_as`. A field may appear once per dimension, and a dimension once per list
    /// (the order of fields in a dimension sets the order in its key text). Default:
    /// `["src_ip", "dst_ip", "dst_port", "protocol", "exporter", "src_ip+dst_port+protocol"]`.
    pub dimensions: Vec<String>,

    /// Multiply bytes and packets by the record's sampling rate (1-in-N, from the exporter's
    /// header or option data) before adding them up. The raw, unscaled values are always kept
    /// alongside. Default: `true`.
    pub scale_sampling: bool,

    /// Length of each key's Z-score baseline, in past 1-second windows (a window in which the
    /// key was absent counts as 0 bytes). Default: 300. Range: 2 to 3600.
    pub zscore_windows: usize,

    /// A key alerts when `(bytes - mean) / stddev` of its window exceeds this. Default: 4.0.
    /// Must be a finite number above 0.
    pub zscore_threshold: f64,

    /// Windows of history a key needs before it can alert. Default: 30. Range: 1 to
    /// `zscore_windows`.
    pub zscore_min_windows: usize,

    /// Keys (all dimensions together) whose baseline is kept. Each costs about
    /// `4 * zscore_windows + 64` bytes. Keys idle for a whole baseline are evicted; when the
    /// bound is reached, further new keys are not scored until room frees up (counted as
    /// `zscore_keys_untracked`). Default: 16384.
    pub zscore_max_keys: usize,

    /// Closed windows buffered per sink while it is slow or down. When the buffer is full the
    /// oldest window is dropped and counted. Default: 600 (10 minutes).
    pub sink_queue_windows: usize,

    /// Seconds between the one-line counter summaries logged at info level. Default: 10.
    pub stats_interval_secs: u64,

    /// How long past its end the merger waits for a stalled worker's share of a window before
    /// closing the window without it (a share arriving later is counted as late and dropped),
    /// in milliseconds. Default: 2000. Range: 100 to 60000.
    pub merge_grace_ms: u64,

    /// On shutdown, how long to wait for the sinks to take the last windows before giving up
    /// (what is left is counted as dropped), in seconds. Default: 10.
    pub shutdown_timeout_secs: u64,

    /// Bounds on the decoders' template and held-data memory, per worker.
    pub decoder: DecoderConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Self {
            listen: vec![
                SocketAddr::new(any, 2055),
                SocketAddr::new(any, 4739),
                SocketAddr::new(any, 6343),
            ],
            workers: flowplane_hwprofiles::available_cpus()
                .saturating_sub(1)
                .max(1),
            pin_cores: true,
            worker_cores: Vec::new(),
            merger_cores: Vec::new(),
            sink_cores: Vec::new(),
            merger_shards: 1,
            rcvbuf_bytes: 32 * 1024 * 1024,
            recv_batch: 64,
            receive: ReceiveBackend::Auto,
            uring_entries: 256,
            uring_buffers: 1_024,
            uring_datagram_bytes: 9_216,
            table_capacity: 65_536,
            dimensions: [
                "src_ip",
                "dst_ip",
                "dst_port",
                "protocol",
                "exporter",
                "src_ip+dst_port+protocol",
            ]
            .map(String::from)
            .to_vec(),
            scale_sampling: true,
            zscore_windows: 300,
            zscore_threshold: 4.0,
            zscore_min_windows: 30,
            zscore_max_keys: 16_384,
            sink_queue_windows: 600,
            stats_interval_secs: 10,
            merge_grace_ms: 2_000,
            shutdown_timeout_secs: 10,
            decoder: DecoderConfig::default(),
        }
    }
}

impl EngineConfig {
    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// The first invalid setting, named as `engine.<name>` with the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::new("listen", "at least one address is needed"));
        }
        let mut seen = HashSet::new();
        for a in &self.listen {
            if !seen.insert(a) {
                return Err(ConfigError::new("listen", format!("{a} is listed twice")));
            }
        }
        // A wildcard address already takes its port on every address of its family (and, for
        // `[::]`, usually IPv4 too): a second listener on that port would fail to bind.
        for w in self.listen.iter().filter(|w| w.ip().is_unspecified()) {
            if let Some(other) = self.listen.iter().find(|o| {
                *o != w && o.port() == w.port() && (o.is_ipv4() == w.is_ipv4() || w.is_ipv6())
            }) {
                return Err(ConfigError::new(
                    "listen",
                    format!(
                        "{w} already receives on port {} of every local address; {other} would collide with it",
                        w.port()
                    ),
                ));
            }
        }
        check_range("workers", self.workers, 1, MAX_WORKERS)?;
        if self.pin_cores && !self.worker_cores.is_empty() {
            if self.worker_cores.len() != self.workers {
                return Err(ConfigError::new(
                    "worker_cores",
                    format!(
                        "lists {} cores for {} workers; give one core per worker or none",
                        self.worker_cores.len(),
                        self.workers
                    ),
                ));
            }
            let mut seen = HashSet::new();
            for c in &self.worker_cores {
                if !seen.insert(c) {
                    return Err(ConfigError::new(
                        "worker_cores",
                        format!("core {c} is listed twice"),
                    ));
                }
            }
        }
        check_range("merger_shards", self.merger_shards, 1, MAX_MERGER_SHARDS)?;
        if self.pin_cores {
            self.check_thread_cores()?;
        }
        check_range("rcvbuf_bytes", self.rcvbuf_bytes, 65_536, i32::MAX as usize)?;
        check_range("recv_batch", self.recv_batch, 1, 1_024)?;
        check_range("uring_entries", self.uring_entries as usize, 8, 4_096)?;
        check_range("uring_buffers", self.uring_buffers as usize, 8, 32_768)?;
        if !self.uring_buffers.is_power_of_two() {
            return Err(ConfigError::new(
                "uring_buffers",
                format!("{} is not a power of two", self.uring_buffers),
            ));
        }
        check_range(
            "uring_datagram_bytes",
            self.uring_datagram_bytes,
            1_472,
            65_507,
        )?;
        check_range("table_capacity", self.table_capacity, 16, 1 << 24)?;
        if !self.table_capacity.is_power_of_two() {
            return Err(ConfigError::new(
                "table_capacity",
                format!("{} is not a power of two", self.table_capacity),
            ));
        }
        self.dimension_specs()?;

        check_range("zscore_windows", self.zscore_windows, 2, 3_600)?;
        if !(self.zscore_threshold.is_finite() && self.zscore_threshold > 0.0) {
            return Err(ConfigError::new(
                "zscore_threshold",
                "must be a finite number above 0",
            ));
        }
        check_range(
            "zscore_min_windows",
            self.zscore_min_windows,
            1,
            self.zscore_windows,
        )?;
        check_range("zscore_max_keys", self.zscore_max_keys, 1, 10_000_000)?;
        check_range("sink_queue_windows", self.sink_queue_windows, 1, 86_400)?;
        check_range(
            "stats_interval_secs",
            self.stats_interval_secs as usize,
            1,
            86_400,
        )?;
        check_range("merge_grace_ms", self.merge_grace_ms as usize, 100, 60_000)?;
        check_range(
            "shutdown_timeout_secs",
            self.shutdown_timeout_secs as usize,
            1,
            3_600,
        )?;
        self.decoder.validate()
    }

    /// `merger_cores` and `sink_cores` against `merger_shards` and the worker cores.
    fn check_thread_cores(&self) -> Result<(), ConfigError> {
        if !self.merger_cores.is_empty() && self.merger_cores.len() != self.merger_shards {
            return Err(ConfigError::new(
                "merger_cores",
                format!(
                    "lists {} cores for {} merger shards (engine.merger_shards); give one core \
                     per shard or none",
                    self.merger_cores.len(),
                    self.merger_shards
                ),
            ));
        }
        let mut seen = HashSet::new();
        for c in &self.merger_cores {
            if !seen.insert(c) {
                return Err(ConfigError::new(
                    "merger_cores",
                    format!("core {c} is listed twice"),
                ));
            }
        }
        for (setting, cores) in [
            ("merger_cores", &self.merger_cores),
            ("sink_cores", &self.sink_cores),
        ] {
            if let Some(c) = cores.iter().find(|c| self.worker_cores.contains(c)) {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "core {c} is also a worker core (engine.worker_cores); nothing else of \
                         flowplane may run on a worker core"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// About how many bytes the data plane allocates for this configuration: every worker's
    /// table sets (at most `MAX_SETS_PER_WORKER` each) and receive buffers, the merger's tables
    /// for the windows in flight, and the Z-score baselines. Sinks and the kernel's socket
    /// buffers come on top.
    ///
    /// # Errors
    ///
    /// The dimensions do not parse.
    pub fn memory_estimate(&self) -> Result<u64, ConfigError> {
        let dims = self.dimension_specs()?;
        let table = |capacity: usize| -> u64 {
            dims.iter()
                .map(|d| crate::table::Table::bytes_for(capacity, d.key_len()) as u64)
                .sum()
        };
        let workers = self.workers as u64;
        let sets = crate::worker::MAX_SETS_PER_WORKER as u64;
        let counter_samples = (crate::worker::COUNTER_SAMPLES_PER_WINDOW
            * std::mem::size_of::<flowplane_decoders::CounterRecord>())
            as u64;
        let worker_tables = workers * sets * (table(self.table_capacity) + counter_samples);
        let merged_capacity = self
            .table_capacity
            .saturating_mul(self.workers.max(1))
            .checked_next_power_of_two()
            .unwrap_or(1 << 30)
            .min(1 << 30);
        // The windows a merger holds at once: the open one, those within the grace period,
        // and one set in its pool.
        let windows_in_flight = 2 + self.merge_grace_ms.div_ceil(1_000);
        let merger_tables = windows_in_flight * table(merged_capacity);
        let receive = workers
            * match self.receive {
                ReceiveBackend::Recvmmsg => (self.recv_batch * 65_535) as u64,
                _ => u64::from(self.uring_buffers) * (self.uring_datagram_bytes as u64 + 64),
            };
        let zscore = self.zscore_max_keys as u64 * (4 * (self.zscore_windows as u64 + 1) + 64);
        Ok(worker_tables + merger_tables + receive + zscore)
    }

    /// The parsed dimensions.
    ///
    /// # Errors
    ///
    /// An unknown or repeated field, an empty dimension, or a repeated dimension.
    pub fn dimension_specs(&self) -> Result<Vec<Dimension>, ConfigError> {
        if self.dimensions.is_empty() {
            return Err(ConfigError::new(
                "dimensions",
                "at least one dimension is needed",
            ));
        }
        check_range("dimensions", self.dimensions.len(), 1, MAX_DIMENSIONS)?;
        let mut out: Vec<Dimension> = Vec::with_capacity(self.dimensions.len());
        for d in &self.dimensions {
            let dim =
                Dimension::parse(d).map_err(|reason| ConfigError::new("dimensions", reason))?;
            if let Some(prev) = out.iter().find(|p| p.same_fields(&dim)) {
                return Err(ConfigError::new(
                    "dimensions",
                    format!("`{d}` repeats dimension `{}`", prev.name()),
                ));
            }
            out.push(dim);
        }
        Ok(out)
    }
}

/// Bounds on one worker's decoder memory (maps onto [`DecoderLimits`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecoderConfig {
    /// Exporters (address, port) whose template state is tracked at once. Default: 4096.
    pub max_exporters: usize,
    /// Templates kept per exporter, all domains together. Default: 1024.
    pub max_templates_per_exporter: usize,
    /// Templates kept in total. Default: 65536.
    pub max_templates_total: usize,
    /// Bytes of data sets held per exporter while their template is missing. Default: 262144.
    pub pending_bytes_per_exporter: usize,
    /// Bytes of data sets held in total while their template is missing. Default: 16777216.
    pub pending_bytes_total: usize,
    /// Milliseconds a data set waits for its template before it is dropped and counted.
    /// Default: 10000.
    pub pending_ttl_ms: u64,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        let l = DecoderLimits::default();
        Self {
            max_exporters: l.max_exporters,
            max_templates_per_exporter: l.max_templates_per_exporter,
            max_templates_total: l.max_templates_total,
            pending_bytes_per_exporter: l.pending_bytes_per_exporter,
            pending_bytes_total: l.pending_bytes_total,
            pending_ttl_ms: l.pending_ttl_ms,
        }
    }
}

impl DecoderConfig {
    /// The decoder limits these settings describe.
    pub fn limits(&self) -> DecoderLimits {
        DecoderLimits {
            max_exporters: self.max_exporters,
            max_templates_per_exporter: self.max_templates_per_exporter,
            max_templates_total: self.max_templates_total,
            pending_bytes_per_exporter: self.pending_bytes_per_exporter,
            pending_bytes_total: self.pending_bytes_total,
            pending_ttl_ms: self.pending_ttl_ms,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let named = |n: &str| format!("decoder.{n}");
        let check = |n: &str, v: usize, lo: usize, hi: usize| check_range(&named(n), v, lo, hi);
        check("max_exporters", self.max_exporters, 1, 1_000_000)?;
        check(
            "max_templates_per_exporter",
            self.max_templates_per_exporter,
            1,
            65_536,
        )?;
        check(
            "max_templates_total",
            self.max_templates_total,
            1,
            10_000_000,
        )?;
        check(
            "pending_bytes_per_exporter",
            self.pending_bytes_per_exporter,
            0,
            1 << 30,
        )?;
        check("pending_bytes_total", self.pending_bytes_total, 0, 1 << 32)?;
        check("pending_ttl_ms", self.pending_ttl_ms as usize, 0, 3_600_000)?;
        if self.max_templates_per_exporter > self.max_templates_total {
            return Err(ConfigError::new(
                named("max_templates_per_exporter"),
                "is larger than decoder.max_templates_total",
            ));
        }
        if self.pending_bytes_per_exporter > self.pending_bytes_total {
            return Err(ConfigError::new(
                named("pending_bytes_per_exporter"),
                "is larger than decoder.pending_bytes_total",
            ));
        }
        Ok(())
    }
}

/// An invalid setting, refused at start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `engine.{setting}`: {reason}")]
pub struct ConfigError {
    /// Setting name below `engine.`, e.g. `table_capacity` or `decoder.max_exporters`.
    pub setting: String,
    /// Why it was refused.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

fn check_range(setting: &str, v: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(ConfigError::new(
            setting,
            format!("{v} is outside the allowed range {lo} to {hi}"),
        ));
    }
    Ok(())
}

/// Workers beyond this are surely a typo (the largest tier has 32 cores).
const MAX_WORKERS: usize = 1_024;
/// Merger shards beyond this cost more in joining the parts than they save.
const MAX_MERGER_SHARDS: usize = 64;
/// Dimensions beyond this would make every window very large.
const MAX_DIMENSIONS: usize = 64;

#[cfg(test)]
mod tests {

    #[test]
    fn a_wildcard_listener_and_a_specific_one_on_its_port_collide() {
        let with = |listen: &[&str]| EngineConfig {
            listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
            ..EngineConfig::default()
        };
        let e = with(&["0.0.0.0:2055", "127.0.0.1:2055"])
            .validate()
            .unwrap_err();
        assert_eq!(e.setting, "listen");
        assert!(e.reason.contains("127.0.0.1:2055"), "{}", e.reason);
        with(&["0.0.0.0:2055", "127.0.0.1:4739"])
            .validate()
            .unwrap();
        with(&["127.0.0.1:2055", "[::1]:2055"]).validate().unwrap();
        assert!(with(&["[::]:2055", "10.0.0.1:2055"]).validate().is_err());
    }

    #[test]
    fn memory_estimate_grows_with_the_tables() {
        let small = EngineConfig {
            workers: 1,
            ..EngineConfig::default()
        };
        let a = small.memory_estimate().unwrap();
        // Six default dimensions, 65536 slots: tens of MiB for one worker, not gigabytes.
        assert!(a > 20 << 20 && a < 1 << 30, "{a}");
        let big = EngineConfig {
            workers: 16,
            table_capacity: 1 << 24,
            ..EngineConfig::default()
        };
        // The tester's case: 16 workers x 16M slots is hundreds of GiB, which start refuses.
        assert!(big.memory_estimate().unwrap() > 100 << 30);
    }
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = EngineConfig::default();
        c.validate().unwrap();
        assert!(c.workers >= 1);
        assert_eq!(c.dimension_specs().unwrap().len(), 6);
    }

    #[test]
    fn refuses_non_power_of_two_capacity() {
        let c = EngineConfig {
            table_capacity: 1000,
            ..EngineConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "table_capacity");
        assert_eq!(
            e.to_string(),
            "invalid setting `engine.table_capacity`: 1000 is not a power of two"
        );
    }

    #[test]
    fn refuses_bad_dimensions() {
        for (dims, needle) in [
            (vec!["src_ip+nope"], "unknown field `nope`"),
            (vec!["src_ip+src_ip"], "twice"),
            (vec!["src_ip+dst_port", "dst_port+src_ip"], "repeats"),
            (vec![""], "empty"),
            (vec![], "at least one"),
        ] {
            let c = EngineConfig {
                dimensions: dims.iter().map(|s| s.to_string()).collect(),
                ..EngineConfig::default()
            };
            let e = c.validate().unwrap_err();
            assert_eq!(e.setting, "dimensions");
            assert!(e.reason.contains(needle), "{dims:?}: {e}");
        }
    }

    #[test]
    fn refuses_other_bad_values() {
        let base = EngineConfig::default();
        let cases: Vec<(EngineConfig, &str)> = vec![
            (
                EngineConfig {
                    workers: 0,
                    ..base.clone()
                },
                "workers",
            ),
            (
                EngineConfig {
                    listen: vec![],
                    ..base.clone()
                },
                "listen",
            ),
            (
                EngineConfig {
                    zscore_threshold: f64::NAN,
                    ..base.clone()
                },
                "zscore_threshold",
            ),
            (
                EngineConfig {
                    zscore_min_windows: 301,
                    ..base.clone()
                },
                "zscore_min_windows",
            ),
            (
                EngineConfig {
                    workers: 2,
                    worker_cores: vec![1],
                    ..base.clone()
                },
                "worker_cores",
            ),
            (
                EngineConfig {
                    decoder: DecoderConfig {
                        max_exporters: 0,
                        ..DecoderConfig::default()
                    },
                    ..base.clone()
                },
                "decoder.max_exporters",
            ),
        ];
        for (c, setting) in cases {
            assert_eq!(c.validate().unwrap_err().setting, setting);
        }
    }

    #[test]
    fn refuses_bad_thread_placement() {
        let base = EngineConfig {
            workers: 2,
            worker_cores: vec![2, 3],
            ..EngineConfig::default()
        };
        let cases: Vec<(EngineConfig, &str, &str)> = vec![
            (
                EngineConfig {
                    merger_shards: 0,
                    ..base.clone()
                },
                "merger_shards",
                "outside the allowed range 1 to 64",
            ),
            (
                EngineConfig {
                    merger_shards: 65,
                    ..base.clone()
                },
                "merger_shards",
                "outside",
            ),
            (
                EngineConfig {
                    merger_shards: 2,
                    merger_cores: vec![1],
                    ..base.clone()
                },
                "merger_cores",
                "lists 1 cores for 2 merger shards",
            ),
            (
                EngineConfig {
                    merger_shards: 2,
                    merger_cores: vec![1, 1],
                    ..base.clone()
                },
                "merger_cores",
                "core 1 is listed twice",
            ),
            (
                EngineConfig {
                    merger_cores: vec![3],
                    ..base.clone()
                },
                "merger_cores",
                "core 3 is also a worker core",
            ),
            (
                EngineConfig {
                    sink_cores: vec![0, 2],
                    ..base.clone()
                },
                "sink_cores",
                "core 2 is also a worker core",
            ),
        ];
        for (c, setting, needle) in cases {
            let e = c.validate().unwrap_err();
            assert_eq!(e.setting, setting, "{e}");
            assert!(e.reason.contains(needle), "{e}");
        }

        // Accepted: sinks sharing a core with each other and with the merger; and anything
        // goes when nothing is pinned.
        EngineConfig {
            merger_shards: 2,
            merger_cores: vec![0, 1],
            sink_cores: vec![0, 0],
            ..base.clone()
        }
        .validate()
        .unwrap();
        EngineConfig {
            pin_cores: false,
            merger_cores: vec![3, 3, 3],
            sink_cores: vec![2],
            ..base
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn decoder_limits_map_through() {
        let c = DecoderConfig {
            pending_ttl_ms: 5,
            ..DecoderConfig::default()
        };
        let l = c.limits();
        assert_eq!(l.pending_ttl_ms, 5);
        assert_eq!(l.max_exporters, DecoderLimits::default().max_exporters);
    }
}
