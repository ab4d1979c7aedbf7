//! The flowplane configuration file (TOML).
//!
//! ```toml
//! [engine]   # the data plane: listeners, workers, tables, dimensions, Z-score
//! [valkey]   # the hot 5-minute window (enabled = true by default)
//! [kafka]    # aggregates and alerts for OpenSearch (enabled = true by default)
//! [log]      # level and format of flowplane's own log
//! ```
//!
//! Every table and every setting is optional: with no file at all, flowplane listens on UDP 2055
//! and 4739 and writes to Valkey and Kafka on loopback. Unknown keys are refused, in every table,
//! so that a misspelt setting is never silently ignored. Loading is two steps, both of which name
//! the setting they refuse: parsing (type errors and unknown keys, with the line) and
//! [`Config::validate`] (values out of range, contradictions).
//!
//! Every setting is described in `docs/configuration.md`; `flowplane.example.toml` at the
//! repository root lists them all with their defaults.

use flowplane_engine::config::EngineConfig;
use flowplane_hwprofiles::Profile;
use flowplane_sinks::{KafkaSinkConfig, SinkConfigError, ValkeySinkConfig};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[engine]`: the data plane.
    pub engine: EngineConfig,
    /// `[valkey]`: the Valkey sink, with `enabled`.
    pub valkey: SinkSection<ValkeySinkConfig>,
    /// `[kafka]`: the Kafka sink, with `enabled`.
    pub kafka: SinkSection<KafkaSinkConfig>,
    /// `[log]`: flowplane's own log.
    pub log: LogConfig,
}

impl Config {
    /// Reads and validates a configuration file; `None` gives the defaults (still validated,
    /// since some defaults depend on the machine).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Parse`] for TOML
    /// syntax, type errors and unknown keys (the message names the key and the line), and
    /// [`ConfigError::Invalid`] for a value [`Config::validate`] refuses.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let config = match path {
            None => Self::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Self::parse(&text).map_err(|e| match e {
                    ConfigError::Parse { message, .. } => ConfigError::Parse {
                        path: Some(path.to_path_buf()),
                        message,
                    },
                    other => other,
                })?
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] with a hardware profile's settings under the file's: `defaults` (from
    /// [`profile_defaults`]) fills in every key the file leaves out, and the file wins wherever
    /// it sets a key.
    ///
    /// # Errors
    ///
    /// As [`Config::load`]. Errors in the file are reported against the file alone, with its
    /// lines; a value refused after merging may come from the profile (the log at start lists
    /// which settings the profile supplied).
    pub fn load_with_defaults(
        path: Option<&Path>,
        defaults: &toml::Table,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            None => String::new(),
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
        };
        let parse_error = |message: String| ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            message,
        };
        // The file alone first, so that its errors name its own lines.
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => parse_error(message),
            other => other,
        })?;

        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| parse_error(e.to_string()))?;
        for (section, keys) in defaults {
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            // The file parsed above, so a section present in it is a table.
            let (toml::Value::Table(have), toml::Value::Table(keys)) = (entry, keys) else {
                continue;
            };
            // Settings that only make sense together come from one place: the file, when it
            // sets any of them.
            let from_file = |key: &str| {
                LINKED
                    .iter()
                    .filter(|(sec, group)| sec == section && group.contains(&key))
                    .any(|(_, group)| group.iter().any(|k| have.contains_key(*k)))
            };
            let missing: Vec<(String, toml::Value)> = keys
                .iter()
                .filter(|(key, _)| !have.contains_key(*key) && !from_file(key))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            have.extend(missing);
        }
        let config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses configuration text, without validating the values.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`], naming the key and line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: None,
            message: e.to_string(),
        })
    }

    /// Checks every value of every table.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for the first value refused, named with its table
    /// (`engine.table_capacity`, `valkey.url`, `log.level`, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine.validate().map_err(|e| ConfigError::Invalid {
            setting: format!("engine.{}", e.setting),
            reason: e.reason,
        })?;
        // A disabled sink's settings are parsed but not checked (see docs/configuration.md).
        if self.valkey.enabled {
            self.valkey.sink.validate().map_err(sink_error("valkey"))?;
        }
        if self.kafka.enabled {
            self.kafka.sink.validate().map_err(sink_error("kafka"))?;
        }
        self.log.validate()
    }
}

/// The settings a hardware profile supplies, as TOML tables (`engine`, `valkey`, `kafka`), for
/// [`Config::load_with_defaults`].
///
/// The profile's cores become `workers`, `worker_cores`, `merger_cores`, `sink_cores` and
/// `merger_shards` (one shard per merger core). They go together (see [`LINKED`]): a file that
/// sets any of them, or `pin_cores`, keeps its own thread placement.
pub fn profile_defaults(profile: &Profile) -> toml::Table {
    // Every profile value passed validation, far below i64::MAX.
    let int = |v: u64| toml::Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    let r = &profile.receive;
    let mut engine = toml::Table::new();
    engine.insert("workers".into(), int(profile.cores.workers.len() as u64));
    engine.insert(
        "worker_cores".into(),
        toml::Value::Array(
            profile
                .cores
                .workers
                .iter()
                .map(|&c| int(c as u64))
                .collect(),
        ),
    );
    let cores = |v: &[usize]| toml::Value::Array(v.iter().map(|&c| int(c as u64)).collect());
    engine.insert("merger_cores".into(), cores(&profile.cores.mergers));
    engine.insert("sink_cores".into(), cores(&profile.cores.sinks));
    engine.insert(
        "merger_shards".into(),
        int(profile.cores.mergers.len().max(1) as u64),
    );
    for (k, v) in [
        ("rcvbuf_bytes", r.rcvbuf_bytes),
        ("recv_batch", r.recv_batch),
        ("uring_entries", r.uring_entries),
        ("uring_buffers", r.uring_buffers),
        ("uring_datagram_bytes", r.uring_datagram_bytes),
        ("table_capacity", profile.aggregation.table_capacity),
        ("sink_queue_windows", profile.aggregation.sink_queue_windows),
    ] {
        engine.insert(k.into(), int(v));
    }

    let mut valkey = toml::Table::new();
    valkey.insert(
        "max_pipeline_commands".into(),
        int(profile.valkey.max_pipeline_commands),
    );
    let k = &profile.kafka;
    let mut kafka = toml::Table::new();
    kafka.insert("linger_ms".into(), int(k.linger_ms));
    kafka.insert("batch_size_bytes".into(), int(k.batch_size_bytes));
    kafka.insert("topic_partitions".into(), int(k.topic_partitions));
    if let Some(rf) = k.topic_replication {
        kafka.insert("topic_replication".into(), int(rf));
    }

    let mut out = toml::Table::new();
    out.insert("engine".into(), toml::Value::Table(engine));
    out.insert("valkey".into(), toml::Value::Table(valkey));
    out.insert("kafka".into(), toml::Value::Table(kafka));
    out
}

/// Groups of settings (table, keys) that [`Config::load_with_defaults`] takes all from the file
/// when the file sets any of them: a profile's `worker_cores` under a file's `workers` would
/// contradict it, and its `merger_cores` could name a core the file gives a worker.
pub const LINKED: [(&str, &[&str]); 1] = [(
    "engine",
    &[
        "workers",
        "worker_cores",
        "pin_cores",
        "merger_cores",
        "sink_cores",
        "merger_shards",
    ],
)];

/// Names a sink's refused setting with its table.
fn sink_error(table: &'static str) -> impl Fn(SinkConfigError) -> ConfigError {
    move |e| ConfigError::Invalid {
        setting: format!("{table}.{}", e.setting),
        reason: e.reason,
    }
}

/// A sink's table: the sink's own settings plus `enabled`.
///
/// The sink crate owns the settings and refuses unknown keys itself; this wrapper takes
/// `enabled` out first (serde's `flatten` cannot be combined with `deny_unknown_fields`).
#[derive(Clone, Debug)]
pub struct SinkSection<T> {
    /// Whether flowplane writes to this sink. Default: `true`.
    pub enabled: bool,
    /// The sink's settings.
    pub sink: T,
}

impl<T: Default> Default for SinkSection<T> {
    fn default() -> Self {
        Self {
            enabled: true,
            sink: T::default(),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for SinkSection<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let enabled = match table.remove("enabled") {
            None => true,
            Some(toml::Value::Boolean(b)) => b,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "invalid type for `enabled`: expected a boolean (true or false), found {}",
                    other.type_str()
                )));
            }
        };
        let sink = T::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?;
        Ok(Self { enabled, sink })
    }
}

/// `[log]`: flowplane's own log, on stderr.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or directives
    /// such as `info,flowplane_sinks=debug`. `RUST_LOG`, when set, replaces it. Default `info`.
    pub level: String,
    /// `text` (one human-readable line per event) or `json` (one JSON object per line).
    /// Default `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl LogConfig {
    /// Checks that `level` is a valid filter.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `log.level`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::builder()
            .parse(&self.level)
            .map(|_| ())
            .map_err(|e| ConfigError::Invalid {
                setting: "log.level".to_owned(),
                reason: format!("`{}` is not a log filter ({e})", self.level),
            })
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range or contradicts another.
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        /// Full name, table included (`engine.table_capacity`).
        setting: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML, a value has the wrong type, or a key is unknown.
    #[error("{}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when there is one.
        path: Option<PathBuf>,
        /// The TOML parser's message, which names the key and shows the line.
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_and_empty_file_give_valid_defaults() {
        let c = Config::load(None).unwrap();
        assert!(c.valkey.enabled && c.kafka.enabled);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.engine.listen.len(), 3, "NetFlow, IPFIX and sFlow ports");
        Config::parse("").unwrap().validate().unwrap();
    }

    #[test]
    fn reads_every_table() {
        let c = Config::parse(
            r#"
            [engine]
            table_capacity = 1024
            dimensions = ["src_ip+dst_port"]
            [valkey]
            enabled = false
            [kafka]
            enabled = true
            [log]
            level = "debug,flowplane_sinks=trace"
            format = "json"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.engine.table_capacity, 1024);
        assert!(!c.valkey.enabled);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name_and_line() {
        for (text, key, line) in [
            ("[engine]\ntable_capacty = 1024\n", "table_capacty", 2),
            ("\n[log]\nlevel = \"info\"\ncolour = true\n", "colour", 4),
            ("[enigne]\n", "enigne", 1),
            ("[engine.decoder]\nmax_exporter = 3\n", "max_exporter", 2),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("unknown field `{key}`")),
                "{text:?}: {e}"
            );
            assert!(e.contains(&format!("line {line}")), "{text:?}: {e}");
        }
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = Config::parse("[engine]\nworkers = \"four\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers") && e.contains("line 2"), "{e}");
        let e = Config::parse("[valkey]\nenabled = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`enabled`") && e.contains("boolean"), "{e}");
        let e = Config::parse("[log]\nformat = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("xml") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let invalid = |text: &str| match Config::parse(text).unwrap().validate() {
            Err(ConfigError::Invalid { setting, reason }) => (setting, reason),
            other => panic!("{text:?}: expected an invalid setting, got {other:?}"),
        };

        let (setting, reason) = invalid("[engine]\ntable_capacity = 1000\n");
        assert_eq!(setting, "engine.table_capacity");
        assert!(reason.contains("power of two"), "{reason}");

        let (setting, reason) = invalid("[engine]\ndimensions = [\"src_ip+colour\"]\n");
        assert_eq!(setting, "engine.dimensions");
        assert!(reason.contains("colour"), "{reason}");

        let (setting, _) = invalid("[engine.decoder]\nmax_exporters = 0\n");
        assert_eq!(setting, "engine.decoder.max_exporters");

        let (setting, _) = invalid("[log]\nlevel = \"info,=[\"\n");
        assert_eq!(setting, "log.level");

        let (setting, reason) = invalid("[valkey]\nurl = \"http://x\"\n");
        assert_eq!(setting, "valkey.url");
        assert!(reason.contains("http://x"), "{reason}");
        let (setting, _) = invalid("[valkey]\nttl_secs = 0\n");
        assert_eq!(setting, "valkey.ttl_secs");
        let (setting, _) = invalid("[kafka]\naggregates_topic = \"\"\n");
        assert_eq!(setting, "kafka.aggregates_topic");
        let (setting, _) = invalid("[kafka.producer]\n\"no.such\" = \"1\"\n");
        assert_eq!(setting, "kafka.producer.no.such");
        // A disabled sink is parsed, not validated.
        Config::parse("[valkey]\nenabled = false\nttl_secs = 0\n")
            .unwrap()
            .validate()
            .unwrap();
        let e = Config::parse("[kafka]\nlinger = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `linger`"), "{e}");

        let msg = Config::parse("[engine]\ntable_capacity = 1000\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "invalid setting `engine.table_capacity`: 1000 is not a power of two"
        );
    }

    #[test]
    fn example_file_lists_every_setting_at_its_default() {
        let text = include_str!("../flowplane.example.toml");
        let mut example = Config::parse(text).unwrap();
        example.validate().unwrap();
        let default = Config::default();
        // `workers` depends on the machine, so the example leaves it commented out.
        example.engine.workers = default.engine.workers;
        assert_eq!(format!("{example:?}"), format!("{default:?}"));

        // Every field name in the defaults' debug form appears in the example as a setting or a
        // table; `sink` is the wrapper of a sink's own settings, not a key.
        // String values (`url: "redis://..."`) are left out: only field names count.
        let debug: String = format!("{default:?}")
            .split('"')
            .step_by(2)
            .collect::<Vec<_>>()
            .join(" ");
        let names = debug
            .split(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == ':'))
            .filter_map(|w| w.strip_suffix(':'))
            .filter(|w| !w.is_empty() && *w != "sink" && !w.contains(':'));
        for name in names {
            let listed = text.contains(&format!("\n{name} = "))
                || text.contains(&format!("\n# {name} = "))
                || text.contains(&format!("[{name}]"))
                || text.contains(&format!(".{name}]"));
            assert!(listed, "`{name}` is missing from flowplane.example.toml");
        }
    }

    #[test]
    fn profile_sets_defaults_and_the_file_overrides_them() {
        let tier8 = flowplane_hwprofiles::profile::by_name("tier-8").unwrap();
        let path =
            std::env::temp_dir().join(format!("flowplane-profile-{}.toml", std::process::id()));
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load_with_defaults(Some(&path), &profile_defaults(&tier8))
        };

        let c = load("").unwrap();
        assert_eq!(c.engine.workers, 5);
        assert_eq!(c.engine.worker_cores, [1, 2, 3, 4, 5]);
        assert_eq!(c.engine.merger_cores, [6]);
        assert_eq!(c.engine.sink_cores, [7]);
        assert_eq!(c.engine.merger_shards, 1);
        assert_eq!(c.engine.uring_buffers, 2_048);
        assert_eq!(c.valkey.sink.max_pipeline_commands, 50_000);
        assert_eq!(c.kafka.sink.topic_partitions, 6);

        // The file wins; setting `workers` keeps the profile's cores out.
        let c =
            load("[engine]\nworkers = 2\ntable_capacity = 1024\n[kafka]\nlinger_ms = 5\n").unwrap();
        assert_eq!(c.engine.workers, 2);
        assert!(c.engine.worker_cores.is_empty());
        assert!(c.engine.merger_cores.is_empty() && c.engine.sink_cores.is_empty());
        assert_eq!(c.engine.table_capacity, 1_024);
        assert_eq!(c.engine.rcvbuf_bytes, 33_554_432);
        assert_eq!(c.kafka.sink.linger_ms, 5);
        assert_eq!(c.kafka.sink.batch_size_bytes, 1_000_000);

        // File errors still name the file's own line.
        let e = load("\n[engine]\ntable_capacty = 1\n")
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            e.contains("unknown field `table_capacty`") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn the_32_core_profile_shards_the_merge() {
        let tier32 = flowplane_hwprofiles::profile::by_name("tier-32").unwrap();
        let c = Config::load_with_defaults(None, &profile_defaults(&tier32)).unwrap();
        assert_eq!(c.engine.merger_shards, 2);
        assert_eq!(c.engine.merger_cores, [28, 29]);
        assert_eq!(c.engine.sink_cores, [30, 31]);
        assert_eq!(c.engine.workers, 26);
    }

    #[test]
    fn load_names_the_file() {
        let path =
            std::env::temp_dir().join(format!("flowplane-config-{}.toml", std::process::id()));
        std::fs::write(&path, "[engine]\nlisten = 5\n").unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
        assert!(e.contains("listen"), "{e}");

        let e = Config::load(Some(Path::new("/nonexistent/flowplane.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/flowplane.toml"), "{e}");
    }
}
