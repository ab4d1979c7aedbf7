//! Rolling Z-score of each key's bytes per window, against that key's own recent past.
//!
//! # Model
//!
//! For a key `k` and window `W`, the baseline is the mean `μ` and standard deviation `σ` of the
//! key's bytes in the `n` windows before `W`, where `n = min(W - first_seen(k), windows)`. A
//! window in which the key did not appear counts as 0 bytes. The score is `(x - μ) / σ'` with
//! `σ' = max(σ, SIGMA_FLOOR_FRACTION · μ)`, and the key alerts when
//!
//! * it has at least `min_windows` windows of history (`n ≥ min_windows`),
//! * `σ' > 0` (a key that was always 0 has no baseline to deviate from), and
//! * the score exceeds the threshold. Only rises alert: a drop is not a spike.
//!
//! The floor on `σ` exists because exporters that report a perfectly steady rate (a constant
//! keep-alive, a synthetic test) have `σ = 0`, and any change at all would score infinity.
//! With the floor at 5 % of the mean and the default threshold of 4, a perfectly steady key
//! alerts on a rise of more than 20 %.
//!
//! # Storage
//!
//! Structure of arrays, all allocated up front for `max_keys` slots: per slot the running `sum` and `sum_sq` (f64), `first_seen`
//! and `last_seen`; and a ring of `windows + 1` columns of f32 values (`history[column][slot]`),
//! one column per window, the current one included. Advancing a window subtracts the column
//! that falls out of the baseline from the sums and zeroes it. Values are stored as f32 (24-bit
//! mantissa: a relative error below 1e-7, well below any useful threshold) to halve the memory;
//! the sums are recomputed from the ring once per `windows` windows so that rounding cannot
//! drift.
//!
//! Memory: about `4 · (windows + 1) + 64` bytes per slot (20 MiB for 16384 keys and 300
//! windows). Keys unseen for a whole baseline are evicted (their ring values are all 0 by
//! then); when every slot is taken, new keys are not scored and are counted
//! ([`ZScore::untracked`]) until slots free up.
//!
//! # Scoring a window
//!
//! [`ZScore::observe`] looks the key up, copies its value and its baseline (`sum`, `sum_sq`,
//! window count) into four contiguous columns and then adds the value to the store.
//! [`ZScore::score_window`] runs the arithmetic over those columns in one pass
//! ([`kernel`]: AVX2 where the CPU has it, chosen at run time, four keys per instruction, with
//! a scalar reference that agrees bit for bit) and returns the observations above the
//! threshold.

pub mod kernel;

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// `σ` is taken as at least this fraction of the mean (see the module docs).
pub const SIGMA_FLOOR_FRACTION: f64 = 0.05;

/// A score that crossed the threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// Bytes in the window.
    pub value: f64,
    /// Baseline mean.
    pub mean: f64,
    /// Baseline standard deviation (before the floor).
    pub stddev: f64,
    /// The score.
    pub score: f64,
}

/// The baseline store for every key of every dimension.
#[derive(Debug)]
pub struct ZScore {
    windows: u64,
    threshold: f64,
    min_windows: u64,
    max_keys: usize,

    index: HashMap<Box<[u8]>, u32, RandomState>,
    slot_key: Vec<Option<Box<[u8]>>>,
    free: Vec<u32>,
    scratch: Vec<u8>,

    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    first_seen: Vec<u64>,
    last_seen: Vec<u64>,
    history: Vec<f32>,

    current: Option<u64>,
    since_resum: u64,
    untracked: u64,

    // The current window's observations, in `observe` order: the kernel's input columns and
    // its output.
    pending_value: Vec<f64>,
    pending_sum: Vec<f64>,
    pending_sum_sq: Vec<f64>,
    pending_n: Vec<f64>,
    pending_score: Vec<f64>,
}

impl ZScore {
    /// A store for `max_keys` keys with a baseline of `windows` windows.
    pub fn new(windows: usize, threshold: f64, min_windows: usize, max_keys: usize) -> Self {
        let windows = windows.max(1);
        let max_keys = max_keys.clamp(1, u32::MAX as usize);
        Self {
            windows: windows as u64,
            threshold,
            min_windows: min_windows as u64,
            max_keys,
            index: HashMap::with_capacity_and_hasher(max_keys, RandomState::default()),
            slot_key: vec![None; max_keys],
            free: (0..max_keys as u32).rev().collect(),
            scratch: Vec::with_capacity(crate::key::KEY_MAX + 2),
            sum: vec![0.0; max_keys],
            sum_sq: vec![0.0; max_keys],
            first_seen: vec![0; max_keys],
            last_seen: vec![0; max_keys],
            history: vec![0.0; (windows + 1) * max_keys],
            current: None,
            since_resum: 0,
            untracked: 0,
            pending_value: Vec::new(),
            pending_sum: Vec::new(),
            pending_sum_sq: Vec::new(),
            pending_n: Vec::new(),
            pending_score: Vec::new(),
        }
    }

    /// Moves to window `w` (later than the previous one; an earlier or equal `w` is ignored).
    /// Windows skipped in between count as 0 for every key. Evicts keys idle for a whole
    /// baseline. Observations of the previous window that were not scored are dropped.
    pub fn begin_window(&mut self, w: u64) {
        self.clear_pending();
        if let Some(cur) = self.current {
            if w <= cur {
                return;
            }
            let steps = (w - cur).min(self.windows + 1);
            for i in 1..=steps {
                self.retire_column(self.column(cur + i));
            }
            self.since_resum += w - cur;
        }
        self.current = Some(w);

        if self.since_resum >= self.windows {
            self.resum();
            self.since_resum = 0;
        }
        self.evict_idle(w);
    }

    /// Records `value` (bytes) for `key` of dimension `dim` in the current window, and queues
    /// it for [`ZScore::score_window`]. Returns the observation's index in the window (the
    /// index `score_window` reports it under), or `None` when the key is not tracked (no
    /// window open, or every slot taken). Call once per key per window, after
    /// [`ZScore::begin_window`].
    pub fn observe(&mut self, dim: u16, key: &[u8], value: f64) -> Option<usize> {
        let w = self.current?;
        self.scratch.clear();
        self.scratch.extend_from_slice(&dim.to_be_bytes());
        self.scratch.extend_from_slice(key);
        let slot = match self.index.get(self.scratch.as_slice()) {
            Some(&s) => s as usize,
            None => {
                let Some(s) = self.free.pop() else {
                    self.untracked += 1;
                    return None;
                };
                let k: Box<[u8]> = self.scratch.as_slice().into();
                self.index.insert(k.clone(), s);
                let s = s as usize;
                self.slot_key[s] = Some(k);
                self.first_seen[s] = w;
                s
            }
        };

        // The baseline as it stands before this window's value joins it.
        let n = (w - self.first_seen[slot]).min(self.windows);
        let at = self.pending_value.len();
        self.pending_value.push(value);
        self.pending_sum.push(self.sum[slot]);
        self.pending_sum_sq.push(self.sum_sq[slot]);
        self.pending_n.push(n as f64);

        let col = self.column(w);
        let cell = &mut self.history[col * self.max_keys + slot];
        // A second observation of the same key in a window replaces the first.
        let old = f64::from(*cell);
        let v = value as f32;
        *cell = v;
        let v = f64::from(v);
        self.sum[slot] += v - old;
        self.sum_sq[slot] += v * v - old * old;
        self.last_seen[slot] = w;
        Some(at)
    }

    /// Scores every observation of the current window made since the last call, and appends
    /// to `alerts` the ones above the threshold, as (observation index, score), in
    /// observation order.
    pub fn score_window(&mut self, alerts: &mut Vec<(usize, Score)>) {
        let len = self.pending_value.len();
        self.pending_score.clear();
        self.pending_score.resize(len, f64::NEG_INFINITY);
        let cols = kernel::Columns {
            value: &self.pending_value,
            sum: &self.pending_sum,
            sum_sq: &self.pending_sum_sq,
            n: &self.pending_n,
        };
        kernel::score(cols, self.min_windows as f64, &mut self.pending_score);
        for (i, &score) in self.pending_score.iter().enumerate() {
            if score > self.threshold {
                // Few keys alert: their mean and deviation are recomputed here, with the
                // kernel's own operations.
                let n = self.pending_n[i];
                let mean = self.pending_sum[i] / n;
                let var = self.pending_sum_sq[i] / n - mean * mean;
                alerts.push((
                    i,
                    Score {
                        value: self.pending_value[i],
                        mean,
                        stddev: if var > 0.0 { var.sqrt() } else { 0.0 },
                        score,
                    },
                ));
            }
        }
        self.clear_pending();
    }

    fn clear_pending(&mut self) {
        self.pending_value.clear();
        self.pending_sum.clear();
        self.pending_sum_sq.clear();
        self.pending_n.clear();
    }

    /// Keys with a baseline now.
    pub fn tracked(&self) -> usize {
        self.index.len()
    }

    /// Observations not scored because every slot was taken.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    fn column(&self, w: u64) -> usize {
        (w % (self.windows + 1)) as usize
    }

    /// Takes the values of one column out of the sums and zeroes it.
    fn retire_column(&mut self, col: usize) {
        let cells = &mut self.history[col * self.max_keys..(col + 1) * self.max_keys];
        for ((c, s), q) in cells.iter_mut().zip(&mut self.sum).zip(&mut self.sum_sq) {
            let v = f64::from(*c);
            *s -= v;
            *q -= v * v;
            *c = 0.0;
        }
    }

    /// Recomputes the sums from the ring, dropping accumulated rounding.
    fn resum(&mut self) {
        self.sum.fill(0.0);
        self.sum_sq.fill(0.0);
        for col in self.history.chunks_exact(self.max_keys) {
            for ((c, s), q) in col.iter().zip(&mut self.sum).zip(&mut self.sum_sq) {
                let v = f64::from(*c);
                *s += v;
                *q += v * v;
            }
        }
    }

    fn evict_idle(&mut self, w: u64) {
        if w < self.windows {
            return;
        }
        for slot in 0..self.max_keys {
            if self.slot_key[slot].is_none() || self.last_seen[slot] + self.windows >= w {
                continue;
            }
            // Idle for more than `windows` windows: every ring value of the slot has been
            // retired to 0, so the slot can be reused as is.
            if let Some(k) = self.slot_key[slot].take() {
                self.index.remove(&k);
            }
            self.sum[slot] = 0.0;
            self.sum_sq[slot] = 0.0;
            self.free.push(slot as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ZScore {
        /// One key's observation, scored on its own.
        fn observe_one(&mut self, dim: u16, key: &[u8], value: f64) -> Option<Score> {
            let at = self.observe(dim, key, value)?;
            let mut alerts = Vec::new();
            self.score_window(&mut alerts);
            alerts.into_iter().find(|(i, _)| *i == at).map(|(_, s)| s)
        }
    }

    /// A deterministic noisy series around `mean` (xorshift, ±10 %).
    fn series(n: usize, mean: f64, seed: u64) -> Vec<f64> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                mean * (0.9 + 0.2 * (x % 1000) as f64 / 1000.0)
            })
            .collect()
    }

    #[test]
    fn steady_series_does_not_alert_and_spike_does() {
        let mut z = ZScore::new(60, 4.0, 30, 16);
        let s = series(200, 1e6, 42);
        for (i, v) in s.iter().enumerate() {
            z.begin_window(1_000 + i as u64);
            assert_eq!(z.observe_one(0, b"k", *v), None, "window {i}");
        }
        z.begin_window(1_200);
        let a = z.observe_one(0, b"k", 3e6).expect("spike alerts");
        assert!(a.score > 4.0);
        assert!((a.mean - 1e6).abs() < 0.05e6, "{a:?}");
        // Uniform ±10 %: stddev = 0.2e6 / sqrt(12) ≈ 57735.
        assert!((a.stddev - 57_735.0).abs() < 10_000.0, "{a:?}");
        assert!((a.score - (3e6 - a.mean) / a.stddev).abs() < 1e-6);
        // A drop never alerts.
        z.begin_window(1_201);
        assert_eq!(z.observe_one(0, b"k", 0.0), None);
    }

    #[test]
    fn needs_min_windows_of_history() {
        let mut z = ZScore::new(300, 4.0, 30, 16);
        for i in 0..30 {
            z.begin_window(i);
            let spike = if i == 29 { 1e9 } else { 100.0 };
            assert_eq!(z.observe_one(0, b"k", spike), None, "window {i}");
        }
        z.begin_window(30);
        assert!(
            z.observe_one(0, b"k", 1e9).is_some(),
            "30 windows of history now"
        );
    }

    #[test]
    fn absent_windows_count_as_zero() {
        let mut z = ZScore::new(10, 2.0, 4, 16);
        // Present in windows 0..4 with 100, then absent 4..9 (zeros in the baseline).
        for w in 0..4 {
            z.begin_window(w);
            z.observe_one(0, b"k", 100.0);
        }
        z.begin_window(9);
        // Baseline: 9 windows, 4 × 100 and 5 × 0: mean 44.4, stddev 49.7.
        let a = z.observe_one(0, b"k", 200.0).expect("alert");
        assert!((a.mean - 400.0 / 9.0).abs() < 1e-9, "{a:?}");
        let var = 40_000.0 / 9.0 - (400.0f64 / 9.0).powi(2);
        assert!((a.stddev - var.sqrt()).abs() < 1e-6, "{a:?}");
    }

    #[test]
    fn baseline_rolls_over_windows() {
        let mut z = ZScore::new(5, 3.0, 5, 4);
        for w in 0..5 {
            z.begin_window(w);
            z.observe_one(0, b"k", 1e6);
        }
        // Then 5 windows at 10: the 1e6 values must have left the baseline.
        for w in 5..10 {
            z.begin_window(w);
            z.observe_one(0, b"k", 10.0);
        }
        z.begin_window(10);
        let a = z
            .observe_one(0, b"k", 100.0)
            .expect("alert against the new level");
        assert!((a.mean - 10.0).abs() < 1e-6, "{a:?}");
    }

    #[test]
    fn bounded_and_evicts_idle_keys() {
        let mut z = ZScore::new(10, 3.0, 2, 2);
        z.begin_window(0);
        z.observe_one(0, b"a", 1.0);
        z.observe_one(1, b"a", 1.0); // same bytes, other dimension: another key
        z.observe_one(0, b"c", 1.0);
        assert_eq!((z.tracked(), z.untracked()), (2, 1));
        // Eleven windows later both are idle for longer than the baseline.
        z.begin_window(11);
        assert_eq!(z.tracked(), 0);
        z.observe_one(0, b"c", 1.0);
        assert_eq!(z.tracked(), 1);
    }

    #[test]
    fn steady_key_uses_the_floor() {
        let mut z = ZScore::new(30, 4.0, 10, 4);
        for w in 0..20 {
            z.begin_window(w);
            z.observe_one(0, b"k", 1000.0);
        }
        z.begin_window(20);
        assert_eq!(
            z.observe_one(0, b"k", 1150.0),
            None,
            "+15 % is under 4 × 5 %"
        );
        z.begin_window(21);
        let a = z.observe_one(0, b"k", 1300.0).expect("+30 % alerts");
        assert!(a.stddev < SIGMA_FLOOR_FRACTION * a.mean, "{a:?}");
    }
}
