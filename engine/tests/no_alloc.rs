//! The hot path allocates nothing: a worker is driven through many windows of NetFlow v5 and
//! IPFIX traffic (thousands of distinct keys, six dimensions, template-based decoding), and a
//! counting global allocator checks that no allocation happens between window boundaries, on
//! the worker's thread.
//!
//! Window boundaries themselves may allocate (the first few table sets are created lazily,
//! and the channel to the merger may grow a block); what is allowed there is bounded and
//! checked too. The merger's side is played by the test: it takes each share and returns the
//! cleared table set, as the merger does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::unbounded;
use flowplane_engine::EngineConfig;
use flowplane_engine::worker::Worker;

/// Counts allocations (and reallocations) made while the current thread has counting on.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: the thread-local may already be gone while a thread shuts down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator unchanged; counting touches only an
// atomic and a thread-local `Cell` (which does not allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// A NetFlow v5 datagram of 30 records over `keys` distinct flows, varied by `seed`.
fn v5(seed: u32, keys: u32) -> Vec<u8> {
    let mut d = vec![0u8; 24];
    d[0..2].copy_from_slice(&5u16.to_be_bytes());
    d[2..4].copy_from_slice(&30u16.to_be_bytes());
    d[4..8].copy_from_slice(&100_000u32.to_be_bytes());
    d[8..12].copy_from_slice(&1_764_800_000u32.to_be_bytes());
    for i in 0..30u32 {
        let k = seed.wrapping_mul(31).wrapping_add(i) % keys;
        let mut r = [0u8; 48];
        r[0..4].copy_from_slice(&(0x0a00_0000 | k).to_be_bytes());
        r[4..8].copy_from_slice(&(0xc000_0200 | (k & 0xff)).to_be_bytes());
        r[16..20].copy_from_slice(&3u32.to_be_bytes());
        r[20..24].copy_from_slice(&(100 + k).to_be_bytes());
        r[24..28].copy_from_slice(&90_000u32.to_be_bytes());
        r[28..32].copy_from_slice(&99_000u32.to_be_bytes());
        r[32..34].copy_from_slice(&(1024 + (k % 50_000) as u16).to_be_bytes());
        r[34..36].copy_from_slice(&443u16.to_be_bytes());
        r[38] = 6;
        d.extend_from_slice(&r);
    }
    d
}

/// IPFIX template 256: addresses, ports, protocol, octets, packets, start and end millis.
const IPFIX_FIELDS: [(u16, u16); 9] = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (1, 8),
    (2, 8),
    (152, 8),
    (153, 8),
];
const IPFIX_RECORD: usize = 45;

fn ipfix_message(sets: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + sets.len());
    m.extend_from_slice(&10u16.to_be_bytes());
    m.extend_from_slice(&((16 + sets.len()) as u16).to_be_bytes());
    m.extend_from_slice(&1_764_800_000u32.to_be_bytes());
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(sets);
    m
}

fn ipfix_template() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&2u16.to_be_bytes());
    s.extend_from_slice(&((8 + 4 * IPFIX_FIELDS.len()) as u16).to_be_bytes());
    s.extend_from_slice(&256u16.to_be_bytes());
    s.extend_from_slice(&(IPFIX_FIELDS.len() as u16).to_be_bytes());
    for (id, len) in IPFIX_FIELDS {
        s.extend_from_slice(&id.to_be_bytes());
        s.extend_from_slice(&len.to_be_bytes());
    }
    ipfix_message(&s)
}

fn ipfix_data(seed: u32, keys: u32) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&256u16.to_be_bytes());
    s.extend_from_slice(&((4 + 20 * IPFIX_RECORD) as u16).to_be_bytes());
    for i in 0..20u32 {
        let k = seed.wrapping_mul(17).wrapping_add(i) % keys;
        s.extend_from_slice(&(0x0a01_0000 | k).to_be_bytes());
        s.extend_from_slice(&(0xc633_6400 | (k & 0xff)).to_be_bytes());
        s.extend_from_slice(&(2000 + (k % 40_000) as u16).to_be_bytes());
        s.extend_from_slice(&53u16.to_be_bytes());
        s.push(17);
        s.extend_from_slice(&u64::from(60 + k).to_be_bytes());
        s.extend_from_slice(&1u64.to_be_bytes());
        s.extend_from_slice(&1_764_800_000_000u64.to_be_bytes());
        s.extend_from_slice(&1_764_800_000_500u64.to_be_bytes());
    }
    ipfix_message(&s)
}

#[test]
fn no_allocation_between_window_boundaries() {
    // The counter itself must see an allocation, or the test below proves nothing.
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1);

    let cfg = EngineConfig::default();
    let dims: Arc<[_]> = cfg.dimension_specs().expect("default dimensions").into();
    let (to_merger, shares) = unbounded();
    let (spare_tx, spare_rx) = unbounded();
    let mut w = Worker::new(
        0,
        Arc::clone(&dims),
        cfg.table_capacity,
        true,
        cfg.decoder.limits(),
        to_merger,
        spare_rx,
    );
    let v5_exporter: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let ipfix_exporter: SocketAddr = "[2001:db8::7]:4739".parse().unwrap();
    let v5s: Vec<Vec<u8>> = (0..64).map(|s| v5(s, 5_000)).collect();
    let ipfixes: Vec<Vec<u8>> = (0..64).map(|s| ipfix_data(s, 5_000)).collect();

    // Learning a template allocates it, once: that is not the hot path.
    let start = 1_764_800_000_000u64;
    w.on_datagram(ipfix_exporter, start, &ipfix_template());
    // Warm-up windows: the table sets the worker keeps in rotation get created, and every key
    // slot is touched once.
    let mut now = start;
    let mut boundary_allocations = 0;
    let mut records = 0u64;
    for window in 0..40u64 {
        let in_window = allocations_in(|| {
            for i in 0..500usize {
                now = start + window * 1_000 + (i as u64 % 1_000);
                w.on_datagram(v5_exporter, now, &v5s[i % v5s.len()]);
                w.on_datagram(ipfix_exporter, now, &ipfixes[i % ipfixes.len()]);
            }
        });
        if window >= 4 {
            assert_eq!(
                in_window, 0,
                "window {window}: {in_window} allocations while receiving"
            );
        }
        boundary_allocations += allocations_in(|| w.maybe_rotate(start + (window + 1) * 1_000));
        // The merger's part: take the share, return the table set cleared.
        for share in shares.try_iter() {
            records += share.counters.records;
            assert_eq!(share.counters.decode_errors.iter().sum::<u64>(), 0);
            assert_eq!(share.counters.table_overflow, 0);
            if let Some(mut set) = share.set {
                set.clear();
                spare_tx.send(set).unwrap();
            }
        }
    }
    // Every record of the 40 windows was decoded and aggregated.
    assert_eq!(records, 40 * 500 * (30 + 20));
    // Boundaries: at most the lazily created table sets (each a handful of tables) and the
    // channel's blocks, never anything proportional to the traffic.
    assert!(
        boundary_allocations < 200,
        "{boundary_allocations} allocations at 40 window boundaries"
    );
}
