//! A worker: decodes the datagrams of its own sockets and aggregates them into its own tables,
//! one 1-second window at a time.
//!
//! The worker does no I/O itself; the receive loop (see `crate::run`) or a test calls
//! [`Worker::on_datagram`] and [`Worker::maybe_rotate`] with the arrival time, so a whole window
//! can be replayed in memory.
//!
//! # Window handoff
//!
//! Windows are aligned to wall-clock seconds by arrival time: a datagram received at
//! `now_ms` belongs to window `now_ms / 1000`. When the first datagram (or idle tick) of a later
//! second arrives, the worker sends its [`TableSet`] for the finished window to the merger as a
//! [`WindowShare`] through a crossbeam channel and continues into a spare set that the merger
//! returned earlier through the worker's own return channel. Neither side takes a lock, and
//! nothing is allocated per record.
//!
//! A window in which the worker aggregated nothing is still reported (a share without tables),
//! so that the merger knows the worker is done with it; the merger closes a window when every
//! worker has reported it or a later one.
//!
//! # When the merger is behind
//!
//! A worker owns at most [`MAX_SETS_PER_WORKER`] table sets: the active one and those on
//! their way to, in, or back from the merger. The first ones are allocated lazily when no
//! spare has come back yet. When the bound is reached and no spare is waiting, the worker
//! cannot hand the window over without blocking or allocating without bound, so it discards
//! the window: it counts the window and its records (`merger_behind_windows`,
//! `merger_behind_records`), clears its active set, and reports the window as empty. The
//! totals of the lost window are gone, but the loss is counted and the data plane keeps up.
//!
//! A clock that steps backwards keeps the worker in its current window until the clock passes
//! it again (records are never moved into a window the merger may have closed).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use flowplane_decoders::{
    CounterRecord, DecodeStats, Decoder, DecoderLimits, FlowRecord, SflowStats,
};
use tracing::debug;

use crate::counters::{ERROR_KINDS, WorkerCounters};
use crate::key::{Dimension, KEY_MAX};
use crate::output::Totals;
use crate::table::{Table, key_hash};

/// Table sets one worker may own at once (active + in flight); see the module docs.
pub const MAX_SETS_PER_WORKER: usize = 4;

/// Interface counter samples (sFlow) a worker keeps per window. An agent sends one per
/// interface every 20 to 30 s, so this is thousands of interfaces per worker; further samples
/// in the same window are counted as dropped (`counter_samples_dropped`).
pub const COUNTER_SAMPLES_PER_WINDOW: usize = 4_096;

/// Distinct exporters whose decode errors a worker tells apart within one window; further
/// ones are reported together as `None` (the merger's `other` row).
pub const EXPORTER_ERRORS_PER_WINDOW: usize = 64;

/// One table per dimension, plus the per-exporter decode errors of the window.
#[derive(Debug)]
pub struct TableSet {
    /// One table per dimension, in configuration order.
    pub tables: Vec<Table>,
    /// Decode errors by exporter (`None`: exporters past [`EXPORTER_ERRORS_PER_WINDOW`]).
    pub exporter_errors: Vec<(Option<IpAddr>, [u64; ERROR_KINDS])>,
    /// Records aggregated into this set.
    pub records: u64,
    /// Interface counter samples (sFlow) of the window, as received; capacity
    /// [`COUNTER_SAMPLES_PER_WINDOW`], allocated once with the set.
    pub counters: Vec<CounterRecord>,
}

impl TableSet {
    /// A set of empty tables of `capacity` slots for `dims`.
    pub fn new(dims: &[Dimension], capacity: usize) -> Self {
        Self {
            tables: dims
                .iter()
                .map(|d| Table::new(capacity, d.key_len()))
                .collect(),
            exporter_errors: Vec::with_capacity(EXPORTER_ERRORS_PER_WINDOW + 1),
            records: 0,
            counters: Vec::with_capacity(if dims.is_empty() {
                0
            } else {
                COUNTER_SAMPLES_PER_WINDOW
            }),
        }
    }

    /// True when nothing was aggregated or counted into the set.
    pub fn is_empty(&self) -> bool {
        self.records == 0
            && self.exporter_errors.is_empty()
            && self.counters.is_empty()
            && self.tables.iter().all(Table::is_empty)
    }

    /// Empties the set, keeping its memory.
    pub fn clear(&mut self) {
        self.tables.iter_mut().for_each(Table::clear);
        self.exporter_errors.clear();
        self.records = 0;
        self.counters.clear();
    }

    fn count_error(&mut self, exporter: IpAddr, kind: usize) {
        let slot = match self
            .exporter_errors
            .iter()
            .position(|(e, _)| *e == Some(exporter))
        {
            Some(i) => i,
            None if self.exporter_errors.len() < EXPORTER_ERRORS_PER_WINDOW => {
                self.exporter_errors
                    .push((Some(exporter), [0; ERROR_KINDS]));
                self.exporter_errors.len() - 1
            }
            None => match self.exporter_errors.iter().position(|(e, _)| e.is_none()) {
                Some(i) => i,
                None => {
                    self.exporter_errors.push((None, [0; ERROR_KINDS]));
                    self.exporter_errors.len() - 1
                }
            },
        };
        self.exporter_errors[slot].1[kind] += 1;
    }
}

/// What a worker sends the merger at the end of each window.
#[derive(Debug)]
pub struct WindowShare {
    /// Worker number.
    pub worker: usize,
    /// Window start, Unix seconds.
    pub window: u64,
    /// The tables; `None` when the worker aggregated nothing (or had to discard the window).
    pub set: Option<TableSet>,
    /// The worker's counters for the window (deltas).
    pub counters: WorkerCounters,
    /// True for the worker's last share (shutdown): it will report no further window.
    pub last: bool,
}

/// One worker's decode and aggregation state.
#[derive(Debug)]
pub struct Worker {
    id: usize,
    dims: Arc<[Dimension]>,
    scale_sampling: bool,
    capacity: usize,

    decoder: Decoder,
    prev_stats: DecodeStats,
    prev_sflow: SflowStats,
    active: TableSet,
    window: Option<u64>,
    counters: WorkerCounters,
    sets_owned: usize,

    to_merger: Sender<WindowShare>,
    spares: Receiver<TableSet>,
    /// Records of the datagram being decoded, added to the tables a batch at a time.
    batch: Vec<FlowRecord>,
    scratch: Box<Scratch>,
}

/// Records aggregated at once: a datagram's worth (NetFlow v5 holds 30, v9/IPFIX exporters
/// send 20 to 30).
pub const BATCH: usize = 32;

/// Per-batch working space, allocated once per worker.
#[derive(Debug)]
struct Scratch {
    keys: [[u8; KEY_MAX]; BATCH],
    hashes: [u64; BATCH],
    totals: [Totals; BATCH],
}

impl Worker {
    /// A worker numbered `id` that aggregates `dims` into tables of `capacity` slots and talks
    /// to the merger through `to_merger` (shares) and `spares` (its returned table sets).
    pub fn new(
        id: usize,
        dims: Arc<[Dimension]>,
        capacity: usize,
        scale_sampling: bool,
        limits: DecoderLimits,
        to_merger: Sender<WindowShare>,
        spares: Receiver<TableSet>,
    ) -> Self {
        let active = TableSet::new(&dims, capacity);
        Self {
            id,
            dims,
            scale_sampling,
            capacity,
            decoder: Decoder::new(limits),
            prev_stats: DecodeStats::default(),
            prev_sflow: SflowStats::default(),
            active,
            window: None,
            counters: WorkerCounters::default(),
            sets_owned: 1,
            to_merger,
            spares,
            batch: Vec::with_capacity(BATCH),
            scratch: Box::new(Scratch {
                keys: [[0; KEY_MAX]; BATCH],
                hashes: [0; BATCH],
                totals: [Totals::default(); BATCH],
            }),
        }
    }

    /// Decodes one datagram from `src` that arrived at `now_ms` (Unix milliseconds) and adds
    /// its records to the window of `now_ms`.
    pub fn on_datagram(&mut self, src: SocketAddr, now_ms: u64, datagram: &[u8]) {
        self.maybe_rotate(now_ms);
        self.counters.datagrams += 1;
        self.counters.bytes += datagram.len() as u64;

        let Self {
            decoder,
            active,
            dims,
            batch,
            scratch,
            counters,
            scale_sampling,
            ..
        } = self;
        let scale = *scale_sampling;
        let TableSet {
            tables,
            counters: samples,
            ..
        } = active;
        let mut dropped = 0;
        let mut overflow = 0;
        batch.clear();
        let result = decoder.decode_with_counters(
            src,
            now_ms,
            datagram,
            |r| {
                // Within the capacity allocated with the worker: never reallocates.
                batch.push(*r);
                if batch.len() == BATCH {
                    overflow += add_batch(dims, tables, scratch, batch, scale);
                    batch.clear();
                }
            },
            |c| {
                // Within the capacity allocated with the set: never reallocates.
                if samples.len() < samples.capacity() {
                    samples.push(*c);
                } else {
                    dropped += 1;
                }
            },
        );
        if !batch.is_empty() {
            overflow += add_batch(dims, tables, scratch, batch, scale);
            batch.clear();
        }
        counters.table_overflow += overflow;
        self.counters.counter_samples_dropped += dropped;
        self.counters.records += u64::from(result.records);
        self.active.records += u64::from(result.records);
        if let Some(e) = result.error {
            self.counters.decode_errors[e.index()] += 1;
            self.active.count_error(src.ip(), e.index());
            debug!(worker = self.id, exporter = %src, error = e.reason(), "datagram refused");
        }
    }

    /// Counts receive-side events that the decoder does not see.
    pub fn count_rx(&mut self, truncated: u64, socket_drops: u64, recv_errors: u64) {
        self.counters.datagrams_truncated += truncated;
        self.counters.socket_drops += socket_drops;
        self.counters.recv_errors += recv_errors;
    }

    /// Closes the current window when `now_ms` is in a later second, handing it to the merger.
    /// Call it regularly even without traffic (the receive loop does, every 100 ms at most).
    pub fn maybe_rotate(&mut self, now_ms: u64) {
        let sec = now_ms / 1000;
        match self.window {
            None => self.window = Some(sec),
            Some(w) if sec > w => {
                self.decoder.expire(now_ms);
                self.hand_over(w, false);
                self.window = Some(sec);
            }
            Some(_) => {}
        }
    }

    /// Hands the open window to the merger as this worker's last share (shutdown).
    pub fn finish(&mut self, now_ms: u64) {
        let w = self.window.unwrap_or(now_ms / 1000);
        self.hand_over(w, true);
        self.window = None;
    }

    /// The open window, if any.
    pub fn window(&self) -> Option<u64> {
        self.window
    }

    /// Counters not yet handed over.
    pub fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    fn hand_over(&mut self, window: u64, last: bool) {
        let now = *self.decoder.stats();
        self.counters.add_decoder_delta(&self.prev_stats, &now);
        self.prev_stats = now;
        let now = *self.decoder.sflow_stats();
        self.counters.add_sflow_delta(&self.prev_sflow, &now);
        self.prev_sflow = now;
        let samples = self.active.counters.len() as u64;

        let set = if self.active.is_empty() {
            None
        } else if let Some(spare) = self.take_spare(last) {
            self.counters.counter_samples += samples;
            Some(std::mem::replace(&mut self.active, spare))
        } else if last {
            // Nothing continues after the last share: send the active set itself.
            self.counters.counter_samples += samples;
            Some(std::mem::replace(&mut self.active, TableSet::new(&[], 2)))
        } else {
            self.counters.merger_behind_windows += 1;
            self.counters.merger_behind_records += self.active.records;
            self.counters.counter_samples_dropped += samples;
            self.active.clear();
            None
        };
        let share = WindowShare {
            worker: self.id,
            window,
            set,
            counters: std::mem::take(&mut self.counters),
            last,
        };
        // The merger only goes away after every worker's last share, or when the engine is
        // failing anyway; then there is nobody to count for.
        let _ = self.to_merger.send(share);
    }

    fn take_spare(&mut self, last: bool) -> Option<TableSet> {
        if let Ok(s) = self.spares.try_recv() {
            return Some(s);
        }
        if last || self.sets_owned >= MAX_SETS_PER_WORKER {
            return None;
        }
        self.sets_owned += 1;
        debug!(
            worker = self.id,
            sets = self.sets_owned,
            "table set allocated"
        );
        Some(TableSet::new(&self.dims, self.capacity))
    }
}

/// Adds a batch of records to every dimension's table. Returns the number of overflow
/// additions.
///
/// Per dimension, every record's key is extracted and hashed and its table slot prefetched
/// first, then the keys are added: with tables of 100K keys and more, most updates miss the
/// cache, and this way the misses of a batch overlap instead of following one another.
#[inline]
fn add_batch(
    dims: &[Dimension],
    tables: &mut [Table],
    scratch: &mut Scratch,
    records: &[FlowRecord],
    scale: bool,
) -> u64 {
    // The worker hands at most BATCH records at a time; more are taken BATCH by BATCH, so none
    // is ever left out.
    records
        .chunks(BATCH)
        .map(|chunk| add_chunk(dims, tables, scratch, chunk, scale))
        .sum()
}

/// [`add_batch`] for at most [`BATCH`] records.
#[inline]
fn add_chunk(
    dims: &[Dimension],
    tables: &mut [Table],
    scratch: &mut Scratch,
    records: &[FlowRecord],
    scale: bool,
) -> u64 {
    let n = records.len().min(BATCH);
    for (t, r) in scratch.totals.iter_mut().zip(records) {
        let factor = if scale {
            u64::from(r.sampling_rate.max(1))
        } else {
            1
        };
        *t = Totals {
            bytes: r.bytes.saturating_mul(factor),
            packets: r.packets.saturating_mul(factor),
            flows: 1,
            raw_bytes: r.bytes,
            raw_packets: r.packets,
        };
    }
    let mut overflow = 0;
    for (dim, table) in dims.iter().zip(tables.iter_mut()) {
        let kl = dim.key_len();
        for ((r, key), hash) in records
            .iter()
            .zip(scratch.keys.iter_mut())
            .zip(scratch.hashes.iter_mut())
        {
            *hash = key_hash(dim.extract(r, key));
            table.prefetch(*hash);
        }
        for ((key, hash), t) in scratch.keys[..n]
            .iter()
            .zip(&scratch.hashes)
            .zip(&scratch.totals)
        {
            if !table.add_hashed(&key[..kl], *hash, t) {
                overflow += 1;
            }
        }
    }
    overflow
}

#[cfg(test)]
pub(crate) mod tests {
    use crossbeam_channel::unbounded;
    use flowplane_decoders::DecodeError;

    use super::*;

    /// `(src, dst, dst_port, proto, bytes, packets)` of one NetFlow v5 test record.
    pub(crate) type V5Rec = ([u8; 4], [u8; 4], u16, u8, u32, u32);

    /// A NetFlow v5 datagram with one record per [`V5Rec`].
    pub(crate) fn v5(records: &[V5Rec], sampling: u16) -> Vec<u8> {
        let mut d = vec![0u8; 24];
        d[0..2].copy_from_slice(&5u16.to_be_bytes());
        d[2..4].copy_from_slice(&(records.len() as u16).to_be_bytes());
        d[4..8].copy_from_slice(&1_000u32.to_be_bytes()); // sys_uptime
        d[8..12].copy_from_slice(&1_700_000_000u32.to_be_bytes()); // unix_secs
        d[22..24].copy_from_slice(&sampling.to_be_bytes());
        for &(src, dst, dport, proto, bytes, pkts) in records {
            let mut r = [0u8; 48];
            r[0..4].copy_from_slice(&src);
            r[4..8].copy_from_slice(&dst);
            r[16..20].copy_from_slice(&pkts.to_be_bytes());
            r[20..24].copy_from_slice(&bytes.to_be_bytes());
            r[32..34].copy_from_slice(&40_000u16.to_be_bytes());
            r[34..36].copy_from_slice(&dport.to_be_bytes());
            r[38] = proto;
            d.extend_from_slice(&r);
        }
        d
    }

    pub(crate) fn dims(specs: &[&str]) -> Arc<[Dimension]> {
        specs.iter().map(|s| Dimension::parse(s).unwrap()).collect()
    }

    fn exporter() -> SocketAddr {
        "192.0.2.1:9995".parse().unwrap()
    }

    fn worker(capacity: usize) -> (Worker, Receiver<WindowShare>, Sender<TableSet>) {
        let (tx, rx) = unbounded();
        let (spare_tx, spare_rx) = unbounded();
        let w = Worker::new(
            0,
            dims(&["src_ip", "dst_port+protocol"]),
            capacity,
            true,
            DecoderLimits::default(),
            tx,
            spare_rx,
        );
        (w, rx, spare_tx)
    }

    fn bytes_of(set: &TableSet, dim: usize, key: &[u8]) -> Option<Totals> {
        set.tables[dim].get(key).copied()
    }

    #[test]
    fn rotates_on_wall_clock_seconds() {
        let (mut w, rx, _spares) = worker(64);
        let dg = v5(&[([10, 0, 0, 1], [10, 0, 0, 2], 443, 6, 1_000, 10)], 0);
        w.on_datagram(exporter(), 5_000, &dg);
        w.on_datagram(exporter(), 5_999, &dg);
        assert!(rx.try_recv().is_err(), "still window 5");
        w.on_datagram(exporter(), 6_000, &dg);

        let share = rx.try_recv().expect("window 5 handed over");
        assert_eq!((share.window, share.last), (5, false));
        assert_eq!(share.counters.datagrams, 2);
        assert_eq!(share.counters.records, 2);
        let set = share.set.unwrap();
        let key = flowplane_decoders::v4_to_bytes([10, 0, 0, 1]);
        assert_eq!(bytes_of(&set, 0, &key).unwrap().bytes, 2_000);
        assert_eq!(bytes_of(&set, 1, &[1, 0xbb, 6]).unwrap().packets, 20);

        // Idle ticks close windows too; an idle window is reported without tables.
        w.maybe_rotate(7_050);
        let share = rx.try_recv().unwrap();
        assert_eq!(share.window, 6);
        assert_eq!(share.set.unwrap().records, 1);
        w.maybe_rotate(9_000);
        let share = rx.try_recv().unwrap();
        assert_eq!((share.window, share.set.is_none()), (7, true));

        // A clock stepping back stays in the current window.
        w.on_datagram(exporter(), 8_500, &dg);
        assert!(rx.try_recv().is_err());
        assert_eq!(w.window(), Some(9));
        w.finish(10_100);
        let share = rx.try_recv().unwrap();
        assert_eq!(
            (share.window, share.last, share.counters.records),
            (9, true, 1)
        );
    }

    #[test]
    fn scales_by_sampling_and_keeps_raw() {
        let (mut w, rx, _spares) = worker(64);
        // Mode 01 (deterministic), interval 100.
        let dg = v5(
            &[([10, 0, 0, 1], [10, 0, 0, 2], 53, 17, 500, 2)],
            0x4000 | 100,
        );
        w.on_datagram(exporter(), 1_000, &dg);
        w.maybe_rotate(2_000);
        let set = rx.try_recv().unwrap().set.unwrap();
        let t = bytes_of(&set, 1, &[0, 53, 17]).unwrap();
        assert_eq!((t.bytes, t.packets, t.flows), (50_000, 200, 1));
        assert_eq!((t.raw_bytes, t.raw_packets), (500, 2));
    }

    #[test]
    fn counts_errors_by_exporter_and_overflow() {
        let (mut w, rx, _spares) = worker(16);
        w.on_datagram(exporter(), 1_000, &[0, 5, 0]);
        w.on_datagram(exporter(), 1_000, &[0, 7, 0, 0]);
        // 20 distinct sources: 14 fit a 16-slot table, 6 overflow (dimension 0 only).
        let recs: Vec<_> = (0..20u8)
            .map(|i| ([10, 0, 0, i], [10, 0, 0, 99], 80, 6, 100, 1))
            .collect();
        w.on_datagram(exporter(), 1_000, &v5(&recs, 0));
        w.maybe_rotate(2_000);
        let share = rx.try_recv().unwrap();
        assert_eq!(
            share.counters.decode_errors[DecodeError::Truncated.index()],
            1
        );
        assert_eq!(
            share.counters.decode_errors[DecodeError::BadVersion.index()],
            1
        );
        assert_eq!(share.counters.table_overflow, 6);
        let set = share.set.unwrap();
        assert_eq!(set.exporter_errors.len(), 1);
        assert_eq!(set.exporter_errors[0].0, Some(exporter().ip()));
        assert_eq!(set.exporter_errors[0].1.iter().sum::<u64>(), 2);
        assert_eq!(set.tables[0].overflow().bytes, 600);
        let kept: u64 = set.tables[0].iter().map(|(_, t)| t.bytes).sum();
        assert_eq!(kept + set.tables[0].overflow().bytes, 2_000, "no byte lost");
    }

    #[test]
    fn merger_behind_discards_and_counts() {
        let (mut w, rx, spares) = worker(16);
        let dg = v5(&[([10, 0, 0, 1], [10, 0, 0, 2], 443, 6, 1_000, 10)], 0);
        // The merger returns nothing: sets 2..=4 are allocated, then windows are discarded.
        for s in 0..6u64 {
            w.on_datagram(exporter(), s * 1_000, &dg);
        }
        w.maybe_rotate(6_000);
        let shares: Vec<_> = rx.try_iter().collect();
        assert_eq!(shares.len(), 6);
        let with_tables = shares.iter().filter(|s| s.set.is_some()).count();
        assert_eq!(with_tables, MAX_SETS_PER_WORKER - 1);
        let behind: u64 = shares
            .iter()
            .map(|s| s.counters.merger_behind_windows)
            .sum();
        let lost: u64 = shares
            .iter()
            .map(|s| s.counters.merger_behind_records)
            .sum();
        assert_eq!((behind, lost), (3, 3));

        // Once a spare comes back, windows flow again.
        let mut returned = shares.into_iter().find_map(|s| s.set).unwrap();
        returned.clear();
        spares.send(returned).unwrap();
        w.on_datagram(exporter(), 7_000, &dg);
        w.maybe_rotate(8_000);
        let last: Vec<_> = rx.try_iter().collect();
        assert!(last.iter().any(|s| s.window == 7 && s.set.is_some()));
    }
}
