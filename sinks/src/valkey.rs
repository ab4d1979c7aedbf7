//! The Valkey sink (the hot 5-minute window) and the queries that read it back.
//!
//! # Key layout
//!
//! For every dimension `D` and window second `S` (Unix seconds), with `P` the key prefix
//! (`key_prefix`, default `fp`):
//!
//! | Key | Type | Content |
//! |---|---|---|
//! | `P:z:D:S` | sorted set | member = key text (`10.0.0.1\|443\|6`), score = bytes |
//! | `P:h:D:S` | hash | `p\|KEY` packets, `f\|KEY` flows, `xb\|KEY` and `xp\|KEY` what sampling added to bytes and packets (written only when not 0: raw = scaled - added) |
//! | `P:t:D:S` | hash | the dimension's window totals: `bytes`, `packets`, `flows`, `raw_bytes`, `raw_packets` (every key plus overflow) and `overflow_bytes` ... `overflow_raw_packets` |
//! | `P:dims` | set | dimension names written; the set expires `ttl_secs` after the last write of any dimension (names are never removed one by one) |
//! | `P:m:I:S:F:C` | string | marker: chunk `C` of batch `F` (a fingerprint of its content) of window `S` from instance `I` was applied |
//! | `P:ifu:S` | sorted set | interface utilisation: member = `agent\|if_index` (`192.0.2.1\|7`), score = utilisation (0 to 1) of its counter sample that arrived in second `S` |
//! | `P:ifc:S` | hash | that sample's readings: `agent\|if_index\|F` for F in `in_bps`, `out_bps`, `speed`, `in_octets`, `out_octets`, `in_errors`, `out_errors`, `in_discards`, `out_discards` |
//! | `P:ifs` | set | `agent\|if_index` of every interface written; expires `ttl_secs` after the last counter sample |
//!
//! Every write is an increment (`ZINCRBY`, `HINCRBY`), never a `SET`, so several flowplane
//! instances can write the same bucket and the values add up. Every key written gets
//! `EXPIRE ttl_secs` (default 301) in the same transaction, so a bucket disappears `ttl_secs`
//! after its last write and no clean-up job is needed. Scores are doubles: byte counts are
//! exact up to 2^53 per bucket.
//!
//! Interface counter samples (sFlow) are readings, not amounts, so they are the exception: the
//! second `S` of a sample is its own arrival second (`time_ms / 1000`), its utilisation is
//! written with `ZADD GT` (the larger of two readings of one interface in one second stays) and
//! its other values with `HSET` (the last reading stays; rates absent from the sample, e.g. its
//! interface's first, are not written). Writing the same sample twice, a resend or two flowplane
//! instances receiving the same datagram, changes nothing; two instances receiving different
//! samples of one interface in one second keep the higher utilisation and whichever readings
//! came last. Nothing is added up, so nothing can be doubled.
//!
//! # Batches, chunks and resends
//!
//! A window goes out as one `MULTI`/`EXEC` pipeline, in one round trip. A window larger than
//! `max_pipeline_commands` commands is split into several transactions (chunks), in a fixed
//! order, so that one huge window does not make Valkey queue millions of commands at once.
//! Each chunk's transaction also sets its marker key. Before writing, the sink asks (one
//! pipelined round trip) which markers of this window exist and skips those chunks: a resend of
//! a window that failed half-way applies only the chunks that did not land, and the counts are
//! not doubled. The marker names this process (`instance`: host name, process id, start time),
//! so two flowplane instances never skip each other's writes.
//!
//! # Queries
//!
//! [`top`] ranks a dimension's keys by bytes over the last N seconds: `ZUNIONSTORE` of the N
//! per-second sorted sets into a temporary key, `ZREVRANGE` of its head and `DEL`, in one
//! transaction; then one pipelined `HMGET` per second for the head's packets and flows and one
//! `HGETALL` per second for the totals. [`series`] reads one key's per-second values: one
//! `ZSCORE` and one `HMGET` per second, pipelined.
//!
//! [`interfaces`] ranks interfaces by their latest utilisation in the last N seconds: one
//! pipelined `ZRANGE P:ifu:S 0 -1 WITHSCORES` per second (each set holds only the interfaces
//! sampled in that second), then one `HMGET` of the readings of each of the top n at their
//! latest second. [`interface_series`] reads one interface's per-second readings: one `ZSCORE`
//! and one `HMGET` per second, pipelined. Interfaces whose samples carry no utilisation (speed 0,
//! or a single sample so far) are in `P:ifs` and `P:ifc:S` but not ranked.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowplane_engine::{InterfaceCounters, SinkError, Totals, WindowBatch};
use redis::{Connection, ConnectionLike};
use serde::Deserialize;

use crate::SinkConfigError;
use crate::ratelimit::{RateLimit, WARN_INTERVAL};
use crate::resp;

/// `[valkey]`: where and how the Valkey sink writes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ValkeySinkConfig {
    /// Server URL: `redis://[user:password@]host[:port][/db]` (`valkey://` too, or
    /// `unix:///path/to.sock`). TLS is not built in. Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// First component of every key written. Default `fp`.
    pub key_prefix: String,
    /// Seconds each bucket lives after its last write. Default 301 (5 minutes and one second,
    /// so a 300 s query always finds its oldest second).
    pub ttl_secs: u64,
    /// Milliseconds to wait for a TCP connection. Default 2000.
    pub connect_timeout_ms: u64,
    /// Milliseconds to wait for a reply (and for a write to the socket). Default 5000.
    pub response_timeout_ms: u64,
    /// Commands per transaction; a larger window is written as several. Default 100000.
    pub max_pipeline_commands: usize,
}

impl Default for ValkeySinkConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "fp".to_owned(),
            ttl_secs: 301,
            connect_timeout_ms: 2_000,
            response_timeout_ms: 5_000,
            max_pipeline_commands: 100_000,
        }
    }
}

impl ValkeySinkConfig {
    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`SinkConfigError`] for the first setting refused, named without the table (`url`).
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            return Err(SinkConfigError::new(
                "url",
                format!("`{}` is not a Valkey URL ({e})", self.url),
            ));
        }
        if self.key_prefix.is_empty() {
            return Err(SinkConfigError::new("key_prefix", "must not be empty"));
        }
        if self
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(SinkConfigError::new(
                "key_prefix",
                format!("{:?} contains white space", self.key_prefix),
            ));
        }
        range("ttl_secs", self.ttl_secs, 1, 86_400)?;
        range("connect_timeout_ms", self.connect_timeout_ms, 100, 60_000)?;
        range("response_timeout_ms", self.response_timeout_ms, 100, 60_000)?;
        range(
            "max_pipeline_commands",
            self.max_pipeline_commands as u64,
            100,
            10_000_000,
        )
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
}

/// Writes every window to Valkey. See the [module documentation](self) for the layout.
pub struct ValkeySink {
    config: ValkeySinkConfig,
    client: redis::Client,
    conn: Option<Connection>,
    instance: String,
    warn: RateLimit,
    /// The window being sent, kept (cleared, not freed) for the next one.
    encoder: Encoder,
}

impl ValkeySink {
    /// A sink for this configuration. Does not connect: the first [`send`](Self::send) does,
    /// and every `send` after a failure reconnects.
    ///
    /// # Errors
    ///
    /// [`SinkConfigError`] when the configuration is invalid; never because Valkey is down.
    pub fn new(config: ValkeySinkConfig) -> Result<Self, SinkConfigError> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| SinkConfigError::new("url", e.to_string()))?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let instance = format!("{}-{}-{started:x}", crate::host_name(), std::process::id());
        Ok(Self {
            config,
            client,
            conn: None,
            instance,
            warn: RateLimit::new(WARN_INTERVAL),
            encoder: Encoder::default(),
        })
    }

    /// The connection, made now if there is none.
    fn connection(&mut self) -> Result<&mut Connection, SinkError> {
        if self.conn.is_none() {
            let conn = open(&self.client, &self.config).map_err(|e| unavailable(&e))?;
            tracing::debug!(sink = NAME, url = %self.config.url, "Connected to Valkey.");
            self.conn = Some(conn);
        }
        // Set just above when it was missing.
        self.conn.as_mut().ok_or_else(|| SinkError::Unavailable {
            sink: NAME,
            reason: "no connection".to_owned(),
        })
    }

    fn write(&mut self, batch: &WindowBatch) -> Result<(), SinkError> {
        self.encoder.encode(
            batch,
            &self.config.key_prefix,
            &self.instance,
            self.config.ttl_secs,
            self.config.max_pipeline_commands,
        );
        if self.encoder.chunks().is_empty() {
            return Ok(());
        }
        self.connection()?;
        let Self { conn, encoder, .. } = self;
        // Made just above.
        let conn = conn.as_mut().ok_or_else(|| SinkError::Unavailable {
            sink: NAME,
            reason: "no connection".to_owned(),
        })?;
        let chunks = encoder.chunks();

        // Which chunks already landed (a resend after a failure half-way).
        let mut exists = redis::pipe();
        for chunk in chunks {
            exists.cmd("EXISTS").arg(&chunk.marker);
        }
        let landed: Vec<bool> = exists.query(conn).map_err(|e| classify(&e))?;

        for (chunk, landed) in chunks.iter().zip(landed) {
            if landed {
                tracing::debug!(sink = NAME, marker = %chunk.marker, "Chunk already written.");
                continue;
            }
            transaction(conn, chunk)?;
        }
        Ok(())
    }
}

/// Sends one chunk and checks `EXEC`'s reply, as the `redis` crate's atomic pipeline does: an
/// error while queueing aborts the transaction (`EXECABORT`), an error of a command inside it
/// fails the write; both are errors here.
fn transaction(conn: &mut Connection, chunk: &Chunk) -> Result<(), SinkError> {
    // Skip the replies to MULTI and every QUEUED, read the one to EXEC.
    let mut replies = conn
        .req_packed_commands(&chunk.packed, chunk.commands + 1, 1)
        .map_err(|e| classify(&e))?;
    match replies.pop() {
        // Only a WATCH makes EXEC answer nil; the crate takes it as success too.
        Some(redis::Value::Nil) => Ok(()),
        Some(items @ redis::Value::Array(_)) => {
            items.extract_error().map(|_| ()).map_err(|e| classify(&e))
        }
        other => Err(SinkError::Rejected {
            sink: NAME,
            reason: format!("unexpected reply to EXEC: {other:?}"),
        }),
    }
}

impl flowplane_engine::Sink for ValkeySink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send(&mut self, batch: &WindowBatch) -> Result<(), SinkError> {
        let result = self.write(batch);
        if let Err(error) = &result {
            // A connection that failed once is not trusted again: the next send reconnects.
            self.conn = None;
            if let Some(suppressed) = self.warn.allow(Instant::now()) {
                tracing::warn!(
                    sink = NAME,
                    window_start = batch.window_start,
                    suppressed,
                    %error,
                    "Valkey write failed."
                );
            }
        }
        result
    }
}

/// Connects to the Valkey of a configuration, with its connect and response timeouts, for the
/// queries below.
///
/// # Errors
///
/// [`QueryError::Config`] for a bad URL, [`QueryError::Unavailable`] when the server cannot be
/// reached in time.
pub fn connect(config: &ValkeySinkConfig) -> Result<Connection, QueryError> {
    let client = redis::Client::open(config.url.as_str())
        .map_err(|e| QueryError::Config(SinkConfigError::new("url", e.to_string())))?;
    open(&client, config).map_err(|e| QueryError::Unavailable {
        url: config.url.clone(),
        reason: e.to_string(),
    })
}

/// One key of a [`Ranking`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranked {
    /// Key text, e.g. `10.0.0.1|443|6`.
    pub key: String,
    /// Totals of the key over the window.
    pub totals: Totals,
}

/// The answer of [`top`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ranking {
    /// First second of the window (Unix seconds).
    pub from_sec: u64,
    /// Last second of the window (Unix seconds), included.
    pub to_sec: u64,
    /// The largest keys by bytes, largest first.
    pub keys: Vec<Ranked>,
    /// Distinct keys seen in the window.
    pub distinct_keys: u64,
    /// The dimension's totals over the window: every key plus overflow.
    pub window: Totals,
    /// The part of `window` that overflowed the workers' tables (no key).
    pub overflow: Totals,
}

/// One second of a [`series`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// The second (Unix seconds).
    pub sec: u64,
    /// The key's totals in that second (zero when it had none).
    pub totals: Totals,
}

/// The `n` largest keys of `dimension` by bytes over the `window_secs` seconds that end with
/// `end_sec` (included).
///
/// # Errors
///
/// [`QueryError::Unavailable`] when Valkey does not answer, [`QueryError::Rejected`] when it
/// refuses a command (e.g. a server older than 6.2, or a key of another type).
pub fn top(
    conn: &mut Connection,
    prefix: &str,
    dimension: &str,
    end_sec: u64,
    window_secs: u64,
    n: usize,
) -> Result<Ranking, QueryError> {
    let secs = seconds(end_sec, window_secs);
    let from_sec = secs.first().copied().unwrap_or(end_sec);

    // Rank server-side: union into a temporary key, read its head, drop it, atomically.
    let tmp = format!(
        "{prefix}:tmp:{}:{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut rank = redis::pipe();
    rank.atomic().cmd("ZUNIONSTORE").arg(&tmp).arg(secs.len());
    for &sec in &secs {
        rank.arg(zset_key(prefix, dimension, sec));
    }
    let stop = isize::try_from(n).unwrap_or(isize::MAX) - 1;
    rank.cmd("ZREVRANGE")
        .arg(&tmp)
        .arg(0)
        .arg(stop)
        .arg("WITHSCORES")
        .cmd("DEL")
        .arg(&tmp)
        .ignore();
    let (distinct, head): (u64, Vec<(String, f64)>) = if n == 0 {
        (0, Vec::new())
    } else {
        rank.query(conn).map_err(QueryError::from)?
    };

    // Packets, flows and raw counts of the head, and the dimension's totals, per second.
    let mut detail = redis::pipe();
    for &sec in &secs {
        let cmd = detail.cmd("HMGET").arg(hash_key(prefix, dimension, sec));
        for (key, _) in &head {
            for kind in HASH_KINDS {
                cmd.arg(hash_field(kind, key));
            }
        }
        // HMGET needs at least one field.
        if head.is_empty() {
            cmd.arg(hash_field("p", ""));
        }
        detail
            .cmd("HGETALL")
            .arg(totals_key(prefix, dimension, sec));
    }
    let replies: Vec<redis::Value> = detail.query(conn).map_err(QueryError::from)?;

    let mut keys: Vec<Ranked> = head
        .iter()
        .map(|(key, score)| Ranked {
            key: key.clone(),
            totals: Totals {
                bytes: score_to_u64(*score),
                ..Totals::default()
            },
        })
        .collect();
    let mut window = Totals::default();
    let mut overflow = Totals::default();
    let mut excess = vec![Excess::default(); keys.len()];
    for pair in replies.chunks(2) {
        let [fields, totals] = pair else { break };
        let fields: Vec<Option<u64>> = redis::from_redis_value_ref(fields)?;
        for ((ranked, x), values) in keys
            .iter_mut()
            .zip(excess.iter_mut())
            .zip(fields.chunks(HASH_KINDS.len()))
        {
            add_hash_values(&mut ranked.totals, x, values);
        }
        let totals: Vec<(String, u64)> = redis::from_redis_value_ref(totals)?;
        add_window_totals(&mut window, &mut overflow, &totals);
    }
    for (ranked, x) in keys.iter_mut().zip(excess) {
        set_raw(&mut ranked.totals, x);
    }

    Ok(Ranking {
        from_sec,
        to_sec: end_sec,
        keys,
        distinct_keys: distinct,
        window,
        overflow,
    })
}

/// One key's per-second totals over the `window_secs` seconds that end with `end_sec`, oldest
/// first; seconds without the key are zero.
///
/// # Errors
///
/// As for [`top`].
pub fn series(
    conn: &mut Connection,
    prefix: &str,
    dimension: &str,
    key: &str,
    end_sec: u64,
    window_secs: u64,
) -> Result<Vec<Point>, QueryError> {
    let secs = seconds(end_sec, window_secs);
    let mut pipe = redis::pipe();
    for &sec in &secs {
        pipe.cmd("ZSCORE")
            .arg(zset_key(prefix, dimension, sec))
            .arg(key);
        let cmd = pipe.cmd("HMGET").arg(hash_key(prefix, dimension, sec));
        for kind in HASH_KINDS {
            cmd.arg(hash_field(kind, key));
        }
    }
    let replies: Vec<redis::Value> = pipe.query(conn).map_err(QueryError::from)?;

    let mut points = Vec::with_capacity(secs.len());
    for (&sec, pair) in secs.iter().zip(replies.chunks(2)) {
        let [score, fields] = pair else { break };
        let score: Option<f64> = redis::from_redis_value_ref(score)?;
        let fields: Vec<Option<u64>> = redis::from_redis_value_ref(fields)?;
        let mut totals = Totals {
            bytes: score.map_or(0, score_to_u64),
            ..Totals::default()
        };
        let mut x = Excess::default();
        add_hash_values(&mut totals, &mut x, &fields);
        set_raw(&mut totals, x);
        points.push(Point { sec, totals });
    }
    Ok(points)
}

/// The dimensions written while `P:dims` lived (it expires `ttl_secs` after the last write), sorted.
///
/// # Errors
///
/// As for [`top`].
pub fn dimensions(conn: &mut Connection, prefix: &str) -> Result<Vec<String>, QueryError> {
    let mut dims: Vec<String> = redis::cmd("SMEMBERS")
        .arg(dims_key(prefix))
        .query(conn)
        .map_err(QueryError::from)?;
    dims.sort();
    Ok(dims)
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] SinkConfigError),
    /// Valkey refused a command or answered something unexpected.
    #[error("Valkey refused the query: {0}")]
    Rejected(String),
    /// Valkey could not be reached or did not answer in time.
    #[error("cannot reach Valkey at {url}: {reason}")]
    Unavailable {
        /// The URL tried (may be empty when the connection broke mid-query).
        url: String,
        /// What the client said.
        reason: String,
    },
}

impl From<redis::RedisError> for QueryError {
    fn from(e: redis::RedisError) -> Self {
        if is_unavailable(&e) {
            Self::Unavailable {
                url: String::new(),
                reason: e.to_string(),
            }
        } else {
            Self::Rejected(e.to_string())
        }
    }
}

impl From<redis::ParsingError> for QueryError {
    fn from(e: redis::ParsingError) -> Self {
        Self::Rejected(e.to_string())
    }
}

/// The sorted set of a dimension's keys by bytes in one second: `P:z:D:S`.
pub fn zset_key(prefix: &str, dimension: &str, sec: u64) -> String {
    format!("{prefix}:z:{dimension}:{sec}")
}

/// The hash of a dimension's other counters in one second: `P:h:D:S`.
pub fn hash_key(prefix: &str, dimension: &str, sec: u64) -> String {
    format!("{prefix}:h:{dimension}:{sec}")
}

/// The hash of a dimension's totals (keys plus overflow) in one second: `P:t:D:S`.
pub fn totals_key(prefix: &str, dimension: &str, sec: u64) -> String {
    format!("{prefix}:t:{dimension}:{sec}")
}

/// The set of dimensions written recently: `P:dims`.
pub fn dims_key(prefix: &str) -> String {
    format!("{prefix}:dims")
}

/// A field of the `P:h:D:S` hash: `p|KEY`, `f|KEY`, `xb|KEY` or `xp|KEY`. The kind comes first
/// because key text itself contains `|`.
pub fn hash_field(kind: &str, key: &str) -> String {
    format!("{kind}|{key}")
}

/// The sorted set of interface utilisation in one second: `P:ifu:S`.
pub fn utilisation_key(prefix: &str, sec: u64) -> String {
    format!("{prefix}:ifu:{sec}")
}

/// The hash of interface readings in one second: `P:ifc:S`.
pub fn interface_hash_key(prefix: &str, sec: u64) -> String {
    format!("{prefix}:ifc:{sec}")
}

/// The set of interfaces written recently: `P:ifs`.
pub fn interfaces_set_key(prefix: &str) -> String {
    format!("{prefix}:ifs")
}

/// An interface's name in the `P:ifu:S` and `P:ifs` sets: `agent|if_index`.
pub fn interface_member(agent: &str, if_index: u32) -> String {
    format!("{agent}|{if_index}")
}

/// A field of the `P:ifc:S` hash: `agent|if_index|F`.
pub fn interface_field(member: &str, field: &str) -> String {
    format!("{member}|{field}")
}

/// One interface's readings in one second (`None`: not written for that second).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct InterfaceReading {
    /// The second (Unix seconds).
    pub sec: u64,
    /// The larger direction as a fraction of the speed (0 to 1).
    pub utilisation: Option<f64>,
    /// Input bits per second since the interface's previous sample.
    pub in_bps: Option<f64>,
    /// Output bits per second, likewise.
    pub out_bps: Option<f64>,
    /// ifSpeed, bits per second.
    pub speed: Option<u64>,
    /// Cumulative ifInOctets as sent.
    pub in_octets: Option<u64>,
    /// Cumulative ifOutOctets.
    pub out_octets: Option<u64>,
    /// Cumulative ifInErrors.
    pub in_errors: Option<u64>,
    /// Cumulative ifOutErrors.
    pub out_errors: Option<u64>,
    /// Cumulative ifInDiscards.
    pub in_discards: Option<u64>,
    /// Cumulative ifOutDiscards.
    pub out_discards: Option<u64>,
}

impl InterfaceReading {
    /// Whether the interface had a sample in this second.
    pub fn sampled(&self) -> bool {
        self.utilisation.is_some() || self.speed.is_some()
    }

    /// Fills the `P:ifc:S` values (in [`IF_FIELDS`] order).
    fn fill(&mut self, values: &[Option<String>]) {
        let get = |i: usize| values.get(i).cloned().flatten();
        let float = |i: usize| get(i).and_then(|v| v.parse::<f64>().ok());
        let int = |i: usize| get(i).and_then(|v| v.parse::<u64>().ok());
        self.in_bps = float(0);
        self.out_bps = float(1);
        self.speed = int(2);
        self.in_octets = int(3);
        self.out_octets = int(4);
        self.in_errors = int(5);
        self.out_errors = int(6);
        self.in_discards = int(7);
        self.out_discards = int(8);
    }
}

/// One interface of an [`InterfaceRanking`].
#[derive(Clone, Debug, PartialEq)]
pub struct BusyInterface {
    /// `agent|if_index`.
    pub key: String,
    /// Its readings in the latest second of the window that had its utilisation.
    pub latest: InterfaceReading,
}

/// The answer of [`interfaces`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct InterfaceRanking {
    /// First second of the window (Unix seconds).
    pub from_sec: u64,
    /// Last second of the window (Unix seconds), included.
    pub to_sec: u64,
    /// The busiest interfaces by latest utilisation, busiest first (ties by key).
    pub interfaces: Vec<BusyInterface>,
    /// Interfaces with a utilisation in the window.
    pub distinct_interfaces: u64,
}

/// The `n` busiest interfaces by their latest utilisation in the `window_secs` seconds that end
/// with `end_sec` (included), with their readings of that second.
///
/// # Errors
///
/// As for [`top`].
pub fn interfaces(
    conn: &mut Connection,
    prefix: &str,
    end_sec: u64,
    window_secs: u64,
    n: usize,
) -> Result<InterfaceRanking, QueryError> {
    let secs = seconds(end_sec, window_secs);
    let from_sec = secs.first().copied().unwrap_or(end_sec);
    let mut pipe = redis::pipe();
    for &sec in &secs {
        pipe.cmd("ZRANGE")
            .arg(utilisation_key(prefix, sec))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
    }
    let per_sec: Vec<Vec<(String, f64)>> = pipe.query(conn).map_err(QueryError::from)?;
    // Oldest first, so a later second replaces an earlier one.
    let mut latest: std::collections::HashMap<String, (u64, f64)> =
        std::collections::HashMap::new();
    for (&sec, members) in secs.iter().zip(per_sec) {
        for (member, u) in members {
            latest.insert(member, (sec, u));
        }
    }
    let distinct = latest.len() as u64;
    let mut ranked: Vec<(String, u64, f64)> =
        latest.into_iter().map(|(k, (s, u))| (k, s, u)).collect();
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(n);

    let mut pipe = redis::pipe();
    for (key, sec, _) in &ranked {
        let cmd = pipe.cmd("HMGET").arg(interface_hash_key(prefix, *sec));
        for field in IF_FIELDS {
            cmd.arg(interface_field(key, field));
        }
    }
    let values: Vec<Vec<Option<String>>> = if ranked.is_empty() {
        Vec::new()
    } else {
        pipe.query(conn).map_err(QueryError::from)?
    };
    let interfaces = ranked
        .into_iter()
        .zip(values)
        .map(|((key, sec, u), values)| {
            let mut latest = InterfaceReading {
                sec,
                utilisation: Some(u),
                ..InterfaceReading::default()
            };
            latest.fill(&values);
            BusyInterface { key, latest }
        })
        .collect();
    Ok(InterfaceRanking {
        from_sec,
        to_sec: end_sec,
        interfaces,
        distinct_interfaces: distinct,
    })
}

/// One interface's (`agent|if_index`) readings per second over the `window_secs` seconds that
/// end with `end_sec`, oldest first; seconds without a sample have every value `None`.
///
/// # Errors
///
/// As for [`top`].
pub fn interface_series(
    conn: &mut Connection,
    prefix: &str,
    key: &str,
    end_sec: u64,
    window_secs: u64,
) -> Result<Vec<InterfaceReading>, QueryError> {
    let secs = seconds(end_sec, window_secs);
    let mut pipe = redis::pipe();
    for &sec in &secs {
        pipe.cmd("ZSCORE")
            .arg(utilisation_key(prefix, sec))
            .arg(key);
        let cmd = pipe.cmd("HMGET").arg(interface_hash_key(prefix, sec));
        for field in IF_FIELDS {
            cmd.arg(interface_field(key, field));
        }
    }
    let replies: Vec<redis::Value> = pipe.query(conn).map_err(QueryError::from)?;
    let mut out = Vec::with_capacity(secs.len());
    for (&sec, pair) in secs.iter().zip(replies.chunks(2)) {
        let [score, fields] = pair else { break };
        let mut reading = InterfaceReading {
            sec,
            utilisation: redis::from_redis_value_ref(score)?,
            ..InterfaceReading::default()
        };
        let fields: Vec<Option<String>> = redis::from_redis_value_ref(fields)?;
        reading.fill(&fields);
        out.push(reading);
    }
    Ok(out)
}

/// The interfaces (`agent|if_index`) written while `P:ifs` lived (it expires `ttl_secs` after
/// the last counter sample), sorted.
///
/// # Errors
///
/// As for [`top`].
pub fn interfaces_seen(conn: &mut Connection, prefix: &str) -> Result<Vec<String>, QueryError> {
    let mut all: Vec<String> = redis::cmd("SMEMBERS")
        .arg(interfaces_set_key(prefix))
        .query(conn)
        .map_err(QueryError::from)?;
    all.sort();
    Ok(all)
}

/// One transaction of a window's write, and the marker it sets. See [`encode_window`].
#[derive(Debug, Default)]
pub struct Chunk {
    /// `MULTI`, the commands, `EXEC`, in RESP.
    packed: Vec<u8>,
    /// Commands between `MULTI` and `EXEC`.
    commands: usize,
    marker: String,
}

impl Chunk {
    /// The `MULTI`/`EXEC` transaction in the protocol's bytes, as the client sends it: the
    /// chunk's increments, the `EXPIRE` of every key it writes and the `SET` of its marker.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// How many commands the transaction holds between `MULTI` and `EXEC`.
    pub fn commands(&self) -> usize {
        self.commands
    }

    /// The marker key the chunk sets; [`ValkeySink`] skips a chunk whose marker exists.
    pub fn marker(&self) -> &str {
        &self.marker
    }
}

/// Builds the transactions that write `batch` (the [module documentation](self) gives the
/// layout), in a fixed order so that a resend builds the same chunks: everything
/// [`ValkeySink`] does for a window except the network round trips.
///
/// `prefix` is the key prefix, `instance` names the writer in the markers, `ttl` is the expiry
/// in seconds and `max_commands` the size at which a window is split into another chunk. An
/// empty window yields no chunk. A convenience over [`Encoder`], which the sink uses.
pub fn encode_window(
    batch: &WindowBatch,
    prefix: &str,
    instance: &str,
    ttl: u64,
    max_commands: usize,
) -> Vec<Chunk> {
    let mut encoder = Encoder::default();
    encoder.encode(batch, prefix, instance, ttl, max_commands);
    encoder.chunks.truncate(encoder.used);
    encoder.chunks
}

/// Builds a window's transactions ([`encode_window`]) into buffers kept from window to
/// window: each chunk's bytes are cleared and written again, so a steady stream of windows
/// allocates nothing once the buffers have grown (and touches no fresh pages).
#[derive(Debug, Default)]
pub struct Encoder {
    /// Every chunk made so far; the first `used` belong to the last window.
    chunks: Vec<Chunk>,
    used: usize,
    /// Commands of the current chunk that count towards `max_commands` (not its `EXPIRE`s
    /// and marker).
    counted: usize,
    /// Keys the current chunk writes, for its `EXPIRE`s, in the order first written.
    touched: Vec<String>,
}

impl Encoder {
    /// Encodes the transactions that write `batch`, replacing what the encoder held; returns
    /// them. The arguments are those of [`encode_window`].
    pub fn encode(
        &mut self,
        batch: &WindowBatch,
        prefix: &str,
        instance: &str,
        ttl: u64,
        max_commands: usize,
    ) -> &[Chunk] {
        let sec = batch.window_start;
        self.used = 0;
        // The marker names the batch's content too: a second, different batch for the same
        // second (which the engine may send after a late merge) must add, not be taken for a
        // resend.
        let marker = format!("{prefix}:m:{instance}:{sec}:{:016x}:", fingerprint(batch));
        self.start(&marker);
        let dims = dims_key(prefix);

        for dim in &batch.dimensions {
            let mut window = dim.overflow;
            for e in &dim.entries {
                window.add(&e.totals);
            }
            if dim.entries.is_empty() && window == Totals::default() {
                continue;
            }
            let (zkey, hkey, tkey) = (
                zset_key(prefix, &dim.dimension, sec),
                hash_key(prefix, &dim.dimension, sec),
                totals_key(prefix, &dim.dimension, sec),
            );

            // The dimension's totals and its name, once, in the chunk where the dimension
            // starts.
            let out = self.out();
            resp::command(out, 3);
            resp::arg(out, b"SADD");
            resp::arg(out, dims.as_bytes());
            resp::arg(out, dim.dimension.as_bytes());
            for (field, value) in totals_fields(&window, &dim.overflow) {
                hincrby(out, tkey.as_bytes(), &[field.as_bytes()], value);
            }
            self.count(11, 11);
            self.touch(&tkey);
            self.touch(&dims);

            // The sorted set and hash are touched by the first entry of each chunk.
            let mut touched = false;
            for e in &dim.entries {
                if self.counted >= max_commands {
                    self.finish(ttl);
                    self.start(&marker);
                    touched = false;
                }
                let t = &e.totals;
                let key = e.key.as_bytes();
                let out = self.out();
                resp::command(out, 4);
                resp::arg(out, b"ZINCRBY");
                resp::arg(out, zkey.as_bytes());
                resp::arg_u64(out, t.bytes);
                resp::arg(out, key);
                let mut n = 1;
                for (kind, value) in [
                    (&b"p|"[..], t.packets),
                    (b"f|", t.flows),
                    // What sampling added: 0, and so not written, for unsampled exports. The
                    // reader takes it off the scaled counts to give the raw ones; being a
                    // difference, it adds up across seconds and instances like the rest.
                    (b"xb|", t.bytes.saturating_sub(t.raw_bytes)),
                    (b"xp|", t.packets.saturating_sub(t.raw_packets)),
                ] {
                    // A zero increment changes nothing; the reader treats a missing field as 0.
                    if value == 0 {
                        continue;
                    }
                    hincrby(out, hkey.as_bytes(), &[kind, key], value);
                    n += 1;
                }
                self.count(n, n);
                if !touched {
                    self.touch(&zkey);
                    self.touch(&hkey);
                    touched = true;
                }
            }
        }

        let ifs = interfaces_set_key(prefix);
        for c in &batch.counters {
            if self.counted >= max_commands {
                self.finish(ttl);
                self.start(&marker);
            }
            self.counter_sample(c, prefix, &ifs);
        }
        if self.counted > 0 {
            self.finish(ttl);
        }
        &self.chunks[..self.used]
    }

    /// The transactions of the last [`encode`](Self::encode).
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks[..self.used]
    }

    /// Starts the next chunk, reusing the buffer of a chunk of an earlier window.
    fn start(&mut self, marker: &str) {
        if self.used == self.chunks.len() {
            self.chunks.push(Chunk::default());
        }
        let chunk = &mut self.chunks[self.used];
        chunk.packed.clear();
        chunk.commands = 0;
        chunk.marker.clear();
        chunk.marker.push_str(marker);
        resp::command(&mut chunk.packed, 1);
        resp::arg(&mut chunk.packed, b"MULTI");
        self.counted = 0;
        self.touched.clear();
    }

    /// The current chunk's bytes.
    fn out(&mut self) -> &mut Vec<u8> {
        &mut self.chunks[self.used].packed
    }

    /// Counts commands just written: all of them, and those that count towards the limit.
    fn count(&mut self, written: usize, counted: usize) {
        self.chunks[self.used].commands += written;
        self.counted += counted;
    }

    /// Remembers a key for the chunk's `EXPIRE`s (a few distinct keys per chunk: a linear
    /// search is enough).
    fn touch(&mut self, key: &str) {
        if !self.touched.iter().any(|k| k == key) {
            self.touched.push(key.to_owned());
        }
    }

    /// Ends the current chunk: an `EXPIRE` for every key it wrote, its marker, `EXEC`.
    fn finish(&mut self, ttl: u64) {
        let index = self.used;
        let chunk = &mut self.chunks[index];
        let out = &mut chunk.packed;
        for key in &self.touched {
            resp::command(out, 3);
            resp::arg(out, b"EXPIRE");
            resp::arg(out, key.as_bytes());
            resp::arg_u64(out, ttl);
        }
        // The marker was started as `P:m:I:S:F:`; the chunk index completes it.
        chunk.marker.push_str(itoa::Buffer::new().format(index));
        resp::command(out, 5);
        resp::arg(out, b"SET");
        resp::arg(out, chunk.marker.as_bytes());
        resp::arg(out, b"1");
        resp::arg(out, b"EX");
        resp::arg_u64(out, ttl);
        resp::command(out, 1);
        resp::arg(out, b"EXEC");
        chunk.commands += self.touched.len() + 1;
        self.used += 1;
    }

    /// Writes one interface counter sample: gauges (see the module documentation).
    fn counter_sample(&mut self, c: &InterfaceCounters, prefix: &str, ifs: &str) {
        let r = &c.record;
        let member = interface_member(&r.agent_ip().to_string(), r.if_index);
        let csec = r.time_ms / 1_000;
        let (ukey, ckey) = (
            utilisation_key(prefix, csec),
            interface_hash_key(prefix, csec),
        );
        if let Some(u) = c.utilisation.filter(|u| u.is_finite()) {
            // A gauge: the larger reading of one second stays, and a repeat changes nothing.
            let out = self.out();
            resp::command(out, 5);
            resp::arg(out, b"ZADD");
            resp::arg(out, ukey.as_bytes());
            resp::arg(out, b"GT");
            resp::arg_f64(out, u);
            resp::arg(out, member.as_bytes());
            self.count(1, 1);
            self.touch(&ukey);
        }
        let values = interface_values(c);
        let out = self.out();
        resp::command(out, 2 + 2 * values.len());
        resp::arg(out, b"HSET");
        resp::arg(out, ckey.as_bytes());
        for (field, value) in &values {
            resp::arg_parts(out, &[member.as_bytes(), b"|", field.as_bytes()]);
            resp::arg(out, value.as_bytes());
        }
        resp::command(out, 3);
        resp::arg(out, b"SADD");
        resp::arg(out, ifs.as_bytes());
        resp::arg(out, member.as_bytes());
        self.count(2, 2);
        self.touch(&ckey);
        self.touch(ifs);
    }
}

/// Appends `HINCRBY key FIELD value`, the field given in parts.
fn hincrby(out: &mut Vec<u8>, key: &[u8], field: &[&[u8]], value: u64) {
    resp::command(out, 4);
    resp::arg(out, b"HINCRBY");
    resp::arg(out, key);
    resp::arg_parts(out, field);
    resp::arg_u64(out, value);
}

/// The `P:ifc:S` values of one sample, by field name (rates only when the sample has them).
fn interface_values(c: &InterfaceCounters) -> Vec<(&'static str, String)> {
    let r = &c.record;
    let mut v = Vec::with_capacity(IF_FIELDS.len());
    for (name, rate) in [("in_bps", c.in_bps), ("out_bps", c.out_bps)] {
        if let Some(rate) = rate.filter(|r| r.is_finite()) {
            v.push((name, rate.to_string()));
        }
    }
    for (name, n) in [
        ("speed", r.if_speed),
        ("in_octets", r.in_octets),
        ("out_octets", r.out_octets),
        ("in_errors", u64::from(r.in_errors)),
        ("out_errors", u64::from(r.out_errors)),
        ("in_discards", u64::from(r.in_discards)),
        ("out_discards", u64::from(r.out_discards)),
    ] {
        v.push((name, n.to_string()));
    }
    v
}

/// A hash of everything a batch writes, stable for one process (resends come from the same
/// process, and markers name the process).
fn fingerprint(batch: &WindowBatch) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    batch.window_start.hash(&mut h);
    for dim in &batch.dimensions {
        dim.dimension.hash(&mut h);
        hash_totals(&dim.overflow, &mut h);
        for e in &dim.entries {
            e.key.hash(&mut h);
            hash_totals(&e.totals, &mut h);
        }
    }
    for c in &batch.counters {
        let r = &c.record;
        (r.agent, r.if_index, r.time_ms, r.sample_sequence).hash(&mut h);
        (r.in_octets, r.out_octets, r.if_speed).hash(&mut h);
        for v in [c.in_bps, c.out_bps, c.utilisation] {
            v.map(f64::to_bits).hash(&mut h);
        }
    }
    h.finish()
}

fn hash_totals(t: &Totals, h: &mut impl Hasher) {
    (t.bytes, t.packets, t.flows, t.raw_bytes, t.raw_packets).hash(h);
}

/// The `P:t:D:S` fields and increments of one window.
fn totals_fields(window: &Totals, overflow: &Totals) -> [(&'static str, u64); 10] {
    [
        ("bytes", window.bytes),
        ("packets", window.packets),
        ("flows", window.flows),
        ("raw_bytes", window.raw_bytes),
        ("raw_packets", window.raw_packets),
        ("overflow_bytes", overflow.bytes),
        ("overflow_packets", overflow.packets),
        ("overflow_flows", overflow.flows),
        ("overflow_raw_bytes", overflow.raw_bytes),
        ("overflow_raw_packets", overflow.raw_packets),
    ]
}

fn add_window_totals(window: &mut Totals, overflow: &mut Totals, fields: &[(String, u64)]) {
    for (name, v) in fields {
        let (t, field) = match name.strip_prefix("overflow_") {
            Some(f) => (&mut *overflow, f),
            None => (&mut *window, name.as_str()),
        };
        let slot = match field {
            "bytes" => &mut t.bytes,
            "packets" => &mut t.packets,
            "flows" => &mut t.flows,
            "raw_bytes" => &mut t.raw_bytes,
            "raw_packets" => &mut t.raw_packets,
            _ => continue,
        };
        *slot = slot.saturating_add(*v);
    }
}

/// What sampling added to a key's bytes and packets (`xb`, `xp`), summed over seconds.
#[derive(Clone, Copy, Debug, Default)]
struct Excess {
    bytes: u64,
    packets: u64,
}

/// Adds the `p`, `f`, `xb`, `xp` values (in [`HASH_KINDS`] order) of one second: packets and
/// flows to `t`, the sampling excess to `x`.
fn add_hash_values(t: &mut Totals, x: &mut Excess, values: &[Option<u64>]) {
    let get = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
    t.packets = t.packets.saturating_add(get(0));
    t.flows = t.flows.saturating_add(get(1));
    x.bytes = x.bytes.saturating_add(get(2));
    x.packets = x.packets.saturating_add(get(3));
}

/// The raw counts: the scaled ones (bytes from the sorted set, packets from `p`) minus what
/// sampling added.
fn set_raw(t: &mut Totals, x: Excess) {
    t.raw_bytes = t.bytes.saturating_sub(x.bytes);
    t.raw_packets = t.packets.saturating_sub(x.packets);
}

/// The seconds `end - window + 1 ..= end`.
fn seconds(end_sec: u64, window_secs: u64) -> Vec<u64> {
    let window = window_secs.max(1);
    (end_sec.saturating_sub(window - 1)..=end_sec).collect()
}

/// A sorted-set score back to bytes (scores are sums of integers, so rounding only removes
/// floating-point noise).
fn score_to_u64(score: f64) -> u64 {
    if score.is_finite() && score > 0.0 {
        // `as` saturates at u64::MAX for larger values.
        score.round() as u64
    } else {
        0
    }
}

fn open(client: &redis::Client, config: &ValkeySinkConfig) -> redis::RedisResult<Connection> {
    let conn = client.get_connection_with_timeout(config.connect_timeout())?;
    conn.set_read_timeout(Some(config.response_timeout()))?;
    conn.set_write_timeout(Some(config.response_timeout()))?;
    Ok(conn)
}

fn is_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn classify(e: &redis::RedisError) -> SinkError {
    if is_unavailable(e) {
        unavailable(e)
    } else {
        SinkError::Rejected {
            sink: NAME,
            reason: e.to_string(),
        }
    }
}

fn unavailable(e: &redis::RedisError) -> SinkError {
    // A read or write that ran into the socket timeout surfaces as EAGAIN ("Resource
    // temporarily unavailable"), which does not say what happened.
    let timed_out = e.is_timeout()
        || e.kind() == redis::ErrorKind::Io
            && matches!(
                std::error::Error::source(e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .map(std::io::Error::kind),
                Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            );
    SinkError::Unavailable {
        sink: NAME,
        reason: if timed_out {
            format!("no answer within the response timeout ({e})")
        } else {
            e.to_string()
        },
    }
}

fn range(setting: &str, v: u64, min: u64, max: u64) -> Result<(), SinkConfigError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(SinkConfigError::new(
            setting,
            format!("{v} is outside the allowed range {min} to {max}"),
        ))
    }
}

const NAME: &str = "valkey";

/// The fields of an interface in `P:ifc:S`, in the order queries read them.
const IF_FIELDS: [&str; 9] = [
    "in_bps",
    "out_bps",
    "speed",
    "in_octets",
    "out_octets",
    "in_errors",
    "out_errors",
    "in_discards",
    "out_discards",
];

/// The kinds of `P:h:D:S` fields, in the order queries read them.
const HASH_KINDS: [&str; 4] = ["p", "f", "xb", "xp"];

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flowplane_engine::{AggEntry, DimensionWindow, KeyValue};

    use super::*;

    fn batch(entries: usize) -> WindowBatch {
        WindowBatch {
            window_start: 1_700_000_000,
            closed_unix_ms: 0,
            dimensions: vec![DimensionWindow {
                dimension: Arc::from("dst_port"),
                entries: (0..entries)
                    .map(|i| AggEntry {
                        key: i.to_string(),
                        fields: vec![("dst_port", KeyValue::Num(i as u64))],
                        totals: Totals {
                            bytes: 100,
                            packets: 2,
                            flows: 1,
                            raw_bytes: 100,
                            raw_packets: 2,
                        },
                    })
                    .collect(),
                overflow: Totals::default(),
            }],
            alerts: Vec::new(),
            counters: Vec::new(),
        }
    }

    /// The commands of a chunk between its `MULTI` and `EXEC`, arguments joined by spaces.
    fn commands(chunk: &Chunk) -> Vec<String> {
        let mut b = chunk.packed();
        let line = |b: &mut &[u8]| {
            let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
            let l = std::str::from_utf8(&b[1..end])
                .unwrap()
                .parse::<usize>()
                .unwrap();
            *b = &b[end + 2..];
            l
        };
        let mut cmds = Vec::new();
        while !b.is_empty() {
            assert_eq!(b[0], b'*');
            let args = line(&mut b);
            let mut cmd = Vec::new();
            for _ in 0..args {
                assert_eq!(b[0], b'$');
                let len = line(&mut b);
                cmd.push(String::from_utf8_lossy(&b[..len]).into_owned());
                assert_eq!(&b[len..len + 2], b"\r\n");
                b = &b[len + 2..];
            }
            cmds.push(cmd.join(" "));
        }
        assert_eq!(cmds.first().map(String::as_str), Some("MULTI"));
        assert_eq!(cmds.pop().as_deref(), Some("EXEC"));
        cmds.remove(0);
        assert_eq!(cmds.len(), chunk.commands());
        cmds
    }

    #[test]
    fn key_layout() {
        assert_eq!(
            zset_key("fp", "src_ip+dst_port", 5),
            "fp:z:src_ip+dst_port:5"
        );
        assert_eq!(hash_key("fp", "dst_port", 5), "fp:h:dst_port:5");
        assert_eq!(totals_key("fp", "dst_port", 5), "fp:t:dst_port:5");
        assert_eq!(dims_key("x"), "x:dims");
        assert_eq!(hash_field("p", "10.0.0.1|443|6"), "p|10.0.0.1|443|6");
        assert_eq!(utilisation_key("fp", 5), "fp:ifu:5");
        assert_eq!(interface_hash_key("fp", 5), "fp:ifc:5");
        assert_eq!(interfaces_set_key("fp"), "fp:ifs");
        assert_eq!(
            interface_field(&interface_member("2001:db8::1", 3), "in_bps"),
            "2001:db8::1|3|in_bps"
        );
    }

    #[test]
    fn one_window_is_one_transaction_of_increments_with_expiries() {
        let chunks = encode_window(&batch(2), "fp", "i", 301, 100_000);
        assert_eq!(chunks.len(), 1);
        let cmds = commands(&chunks[0]);
        assert!(cmds.contains(&"ZINCRBY fp:z:dst_port:1700000000 100 0".to_owned()));
        assert!(cmds.contains(&"HINCRBY fp:h:dst_port:1700000000 p|1 2".to_owned()));
        assert!(cmds.contains(&"HINCRBY fp:t:dst_port:1700000000 bytes 200".to_owned()));
        for key in ["z", "h", "t"] {
            let expire = format!("EXPIRE fp:{key}:dst_port:1700000000 301");
            assert!(cmds.contains(&expire), "{expire} missing from {cmds:?}");
        }
        assert!(cmds.contains(&"EXPIRE fp:dims 301".to_owned()));
        let marker = cmds.last().unwrap();
        assert!(marker.starts_with("SET fp:m:i:1700000000:"), "{marker}");
        assert!(marker.ends_with(":0 1 EX 301"), "{marker}");
        assert!(
            !cmds
                .iter()
                .any(|c| c.starts_with("SET fp:z") || c.starts_with("HSET"))
        );
    }

    #[test]
    fn big_windows_split_into_chunks_that_each_expire_what_they_write() {
        // 1,000 keys of three commands each (unsampled: no `xb`/`xp`).
        let chunks = encode_window(&batch(1_000), "fp", "i", 301, 1_000);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        let mut zincrby = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            assert!(chunk.marker.starts_with("fp:m:i:1700000000:"));
            assert!(chunk.marker.ends_with(&format!(":{i}")), "{}", chunk.marker);
            let cmds = commands(chunk);
            zincrby += cmds.iter().filter(|c| c.starts_with("ZINCRBY")).count();
            assert!(cmds.contains(&"EXPIRE fp:z:dst_port:1700000000 301".to_owned()));
            assert!(cmds.len() <= 1_000 + 20, "{}", cmds.len());
        }
        assert_eq!(zincrby, 1_000);
    }

    #[test]
    fn empty_windows_write_nothing_and_overflow_alone_is_written() {
        assert!(encode_window(&batch(0), "fp", "i", 301, 1_000).is_empty());
        let mut b = batch(0);
        b.dimensions[0].overflow.bytes = 7;
        let chunks = encode_window(&b, "fp", "i", 301, 1_000);
        let cmds = commands(&chunks[0]);
        assert!(cmds.contains(&"HINCRBY fp:t:dst_port:1700000000 overflow_bytes 7".to_owned()));
        assert!(cmds.contains(&"HINCRBY fp:t:dst_port:1700000000 bytes 7".to_owned()));
    }

    fn counters(utilisation: Option<f64>) -> InterfaceCounters {
        let mut agent = [0u8; 16];
        agent[10] = 0xff;
        agent[11] = 0xff;
        agent[12..].copy_from_slice(&[192, 0, 2, 1]);
        InterfaceCounters {
            record: flowplane_engine::CounterRecord {
                agent,
                if_index: 7,
                if_speed: 1_000,
                in_octets: 10,
                out_octets: 20,
                in_errors: 1,
                out_errors: 2,
                in_discards: 3,
                out_discards: 4,
                // Arrived in the second before the window it was handed on with.
                time_ms: 1_699_999_999_500,
                ..Default::default()
            },
            interval_secs: utilisation.map(|_| 1.0),
            in_bps: utilisation.map(|u| u * 1_000.0),
            out_bps: utilisation.map(|_| 5.0),
            utilisation,
        }
    }

    #[test]
    fn counter_samples_are_gauges_in_their_own_arrival_second() {
        let mut b = batch(1);
        b.counters = vec![counters(Some(0.5)), counters(None)];
        let chunks = encode_window(&b, "fp", "i", 301, 100_000);
        assert_eq!(chunks.len(), 1);
        let cmds = commands(&chunks[0]);
        let s = 1_699_999_999;
        assert!(
            cmds.contains(&format!("ZADD fp:ifu:{s} GT 0.5 192.0.2.1|7")),
            "{cmds:?}"
        );
        assert_eq!(cmds.iter().filter(|c| c.starts_with("ZADD")).count(), 1);
        let hset: Vec<&String> = cmds.iter().filter(|c| c.starts_with("HSET")).collect();
        assert_eq!(hset.len(), 2);
        assert_eq!(
            hset[0].as_str(),
            format!(
                "HSET fp:ifc:{s} 192.0.2.1|7|in_bps 500 192.0.2.1|7|out_bps 5 \
                 192.0.2.1|7|speed 1000 192.0.2.1|7|in_octets 10 192.0.2.1|7|out_octets 20 \
                 192.0.2.1|7|in_errors 1 192.0.2.1|7|out_errors 2 192.0.2.1|7|in_discards 3 \
                 192.0.2.1|7|out_discards 4"
            )
        );
        // Without rates, no rate fields (a missing field reads as "no rate", never as 0).
        assert!(!hset[1].contains("in_bps"), "{}", hset[1]);
        assert!(cmds.contains(&"SADD fp:ifs 192.0.2.1|7".to_owned()));
        for key in [
            format!("fp:ifu:{s}"),
            format!("fp:ifc:{s}"),
            "fp:ifs".to_owned(),
        ] {
            assert!(
                cmds.contains(&format!("EXPIRE {key} 301")),
                "{key}: {cmds:?}"
            );
        }
        // Gauges are never incremented.
        assert!(!cmds.iter().any(|c| c.contains(":if") && c.contains("INCR")));

        // Counters alone make a window, and change its fingerprint (a later batch of the same
        // second is not taken for a resend).
        let only = counters_only();
        assert_eq!(encode_window(&only, "fp", "i", 301, 100_000).len(), 1);
        let mut other = counters_only();
        other.counters[0].record.in_octets += 1;
        assert_ne!(fingerprint(&only), fingerprint(&other));
    }

    fn counters_only() -> WindowBatch {
        WindowBatch {
            window_start: 1_700_000_000,
            counters: vec![counters(Some(0.5))],
            ..WindowBatch::default()
        }
    }

    #[test]
    fn many_counter_samples_split_into_chunks() {
        let mut b = counters_only();
        b.counters = (0..1_000)
            .map(|i| {
                let mut c = counters(Some(0.1));
                c.record.if_index = i;
                c
            })
            .collect();
        let chunks = encode_window(&b, "fp", "i", 301, 300);
        assert!(chunks.len() >= 9, "{}", chunks.len());
        let zadd: usize = chunks
            .iter()
            .map(|c| commands(c).iter().filter(|c| c.starts_with("ZADD")).count())
            .sum();
        assert_eq!(zadd, 1_000);
    }

    #[test]
    fn reads_totals_fields_back() {
        let mut w = Totals::default();
        let mut o = Totals::default();
        let fields = [
            ("bytes".to_owned(), 10),
            ("overflow_bytes".to_owned(), 3),
            ("flows".to_owned(), 2),
            ("unknown".to_owned(), 9),
        ];
        add_window_totals(&mut w, &mut o, &fields);
        assert_eq!((w.bytes, w.flows, o.bytes), (10, 2, 3));
    }

    #[test]
    fn validation_names_the_setting() {
        let ok = ValkeySinkConfig::default();
        ok.validate().unwrap();
        let bad = |f: &dyn Fn(&mut ValkeySinkConfig)| {
            let mut c = ValkeySinkConfig::default();
            f(&mut c);
            c.validate().unwrap_err().setting
        };
        assert_eq!(bad(&|c| c.url = "http://x".into()), "url");
        assert_eq!(bad(&|c| c.url = "not a url".into()), "url");
        assert_eq!(bad(&|c| c.key_prefix = String::new()), "key_prefix");
        assert_eq!(bad(&|c| c.key_prefix = "a b".into()), "key_prefix");
        assert_eq!(bad(&|c| c.ttl_secs = 0), "ttl_secs");
        assert_eq!(bad(&|c| c.connect_timeout_ms = 0), "connect_timeout_ms");
        assert_eq!(bad(&|c| c.response_timeout_ms = 1), "response_timeout_ms");
        assert_eq!(
            bad(&|c| c.max_pipeline_commands = 0),
            "max_pipeline_commands"
        );
    }

    #[test]
    fn seconds_of_a_window() {
        assert_eq!(seconds(100, 3), vec![98, 99, 100]);
        assert_eq!(seconds(1, 5), vec![0, 1]);
        assert_eq!(seconds(100, 0), vec![100]);
    }
}
