//! Sinks for closed windows: Valkey (the hot 5-minute window) and Kafka (aggregates and alerts
//! for OpenSearch).
//!
//! Both implement [`flowplane_engine::Sink`]. The contract they keep:
//!
//! - **Construction never touches the network.** [`ValkeySink::new`] and [`KafkaSink::new`]
//!   fail only on an invalid configuration; a backend that is down at start shows up as
//!   [`SinkError::Unavailable`](flowplane_engine::SinkError::Unavailable) from the first `send`.
//! - **`send` is bounded in time.** Connect, response and delivery timeouts (a few seconds each,
//!   configurable) make a dead backend an error, never a hang, and the next `send` reconnects
//!   by itself.
//! - **`send` is all-or-error.** The engine resends a batch that failed. The Valkey sink makes a
//!   resend harmless (per-chunk markers, see [`valkey`]); the Kafka sink is at-least-once and
//!   gives every document a deterministic `id` so that OpenSearch can drop the duplicates.
//!
//! The layouts both sinks write are documented in `docs/data-model.md`; the Valkey query
//! functions ([`valkey::top`], [`valkey::series`]) live beside the writer so that both share one
//! definition of the key layout.
#![warn(missing_docs)]

mod json;
pub mod kafka;
mod ratelimit;
mod resp;
pub mod valkey;

pub use kafka::{KafkaSink, KafkaSinkConfig};
pub use valkey::{ValkeySink, ValkeySinkConfig};

/// A sink setting that [`ValkeySinkConfig::validate`] or [`KafkaSinkConfig::validate`] refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct SinkConfigError {
    /// The setting's name within its table (`url`, `aggregates_topic`, `producer.acks`).
    pub setting: String,
    /// Why it was refused.
    pub reason: String,
}

impl SinkConfigError {
    fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// This machine's host name, for the `instance` of documents and Valkey markers: the kernel's
/// idea of it, else `$HOSTNAME`, else `flowplane`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "flowplane".to_owned())
}

/// Formats Unix seconds as an RFC 3339 / ISO-8601 UTC time, e.g. `2023-11-14T22:13:20Z`.
pub fn iso8601(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let s = unix_secs % 86_400;

    // Days since 1970-01-01 to a proleptic Gregorian date, counting from 0000-03-01 so that
    // the leap day is the last day of a year (H. Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);

    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        s / 3_600,
        s / 60 % 60,
        s % 60
    )
}

/// Formats Unix milliseconds as an RFC 3339 / ISO-8601 UTC time with milliseconds, e.g.
/// `2023-11-14T22:13:20.123Z`.
pub fn iso8601_ms(unix_ms: u64) -> String {
    let secs = iso8601(unix_ms / 1_000);
    // `iso8601` always ends in `Z`.
    format!("{}.{:03}Z", &secs[..secs.len() - 1], unix_ms % 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(iso8601_ms(1_700_000_000_007), "2023-11-14T22:13:20.007Z");
        assert_eq!(iso8601_ms(999), "1970-01-01T00:00:00.999Z");
    }

    #[test]
    fn host_name_is_never_empty() {
        assert!(!host_name().is_empty());
    }
}
