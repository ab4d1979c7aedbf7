//! The Z-score arithmetic over a whole window at once, in structure-of-arrays form: one pass
//! over contiguous `value`, `sum`, `sum_sq` and `n` columns, four keys per AVX2 instruction.
//!
//! [`score_scalar`] is the reference. [`score_avx2`] performs exactly the same IEEE 754
//! operations in the same order (division, subtraction, multiplication, square root and the
//! comparisons are correctly rounded or exact in both, and neither path fuses a multiply and an
//! add), so the two agree bit for bit; the tests check that on random and edge-case inputs.
//! `max` is written as `if a > b { a } else { b }` in the scalar path because that is what
//! `vmaxpd` computes, including for NaN and signed zeros.
//!
//! [`score`] picks AVX2 when the CPU has it (checked once, at run time) and the scalar path
//! otherwise.
#![allow(unsafe_code)]

use super::SIGMA_FLOOR_FRACTION;

/// The columns of one window's observations, one entry per key, all the same length.
#[derive(Clone, Copy, Debug)]
pub struct Columns<'a> {
    /// The key's bytes in this window.
    pub value: &'a [f64],
    /// Sum of the key's values over its baseline windows.
    pub sum: &'a [f64],
    /// Sum of the squares of those values.
    pub sum_sq: &'a [f64],
    /// Number of baseline windows (as f64, so that the kernel divides without converting).
    pub n: &'a [f64],
}

impl Columns<'_> {
    fn len(&self) -> usize {
        self.value
            .len()
            .min(self.sum.len())
            .min(self.sum_sq.len())
            .min(self.n.len())
    }
}

/// The score of one key, or negative infinity when it has no usable baseline (fewer than
/// `min_n` windows, or a deviation of 0 even after the floor). Shared by both paths for the
/// tail that does not fill a vector.
#[inline(always)]
fn lane(value: f64, sum: f64, sum_sq: f64, n: f64, min_n: f64) -> f64 {
    let mean = sum / n;
    let var = max(sum_sq / n - mean * mean, 0.0);
    let sigma = max(var.sqrt(), SIGMA_FLOOR_FRACTION * mean);
    if n >= min_n && sigma > 0.0 {
        (value - mean) / sigma
    } else {
        f64::NEG_INFINITY
    }
}

/// `vmaxpd`'s definition: the first operand when it is greater, else the second.
#[inline(always)]
fn max(a: f64, b: f64) -> f64 {
    if a > b { a } else { b }
}

/// Scores every key of `cols` into `out` (as many as the shortest column and `out` hold).
/// `min_n` below 1 is taken as 1, so that a key without history never divides by zero into a
/// score.
pub fn score_scalar(cols: Columns<'_>, min_n: f64, out: &mut [f64]) {
    score_from(cols, max(min_n, 1.0), out, 0);
}

/// The scalar loop from key `from` on (the tail the vector loop leaves).
#[inline(always)]
fn score_from(cols: Columns<'_>, min_n: f64, out: &mut [f64], from: usize) {
    let len = cols.len().min(out.len());
    // `len` is at most every slice's length, so these slices are in bounds.
    let lanes = out[..len]
        .iter_mut()
        .zip(&cols.value[..len])
        .zip(&cols.sum[..len])
        .zip(&cols.sum_sq[..len])
        .zip(&cols.n[..len])
        .skip(from);
    for ((((o, &value), &sum), &sum_sq), &n) in lanes {
        *o = lane(value, sum, sum_sq, n, min_n);
    }
}

/// [`score_scalar`] with AVX2 when the CPU has it.
pub fn score(cols: Columns<'_>, min_n: f64, out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: `score_avx2` needs AVX2, which `has_avx2` has just confirmed this CPU has.
        unsafe { score_avx2(cols, min_n, out) };
        return;
    }
    score_scalar(cols, min_n, out);
}

/// Whether [`score`] takes the AVX2 path on this machine.
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`score_scalar`], four keys per instruction.
///
/// # Safety
///
/// The CPU must support AVX2 (check with [`has_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn score_avx2(cols: Columns<'_>, min_n: f64, out: &mut [f64]) {
    use std::arch::x86_64::{
        _CMP_GE_OQ, _CMP_GT_OQ, _mm256_and_pd, _mm256_blendv_pd, _mm256_cmp_pd, _mm256_div_pd,
        _mm256_loadu_pd, _mm256_max_pd, _mm256_mul_pd, _mm256_set1_pd, _mm256_sqrt_pd,
        _mm256_storeu_pd, _mm256_sub_pd,
    };

    let min_n = max(min_n, 1.0);
    let len = cols.len().min(out.len());
    let vectors = len / 4;
    let zero = _mm256_set1_pd(0.0);
    let floor = _mm256_set1_pd(SIGMA_FLOOR_FRACTION);
    let vmin = _mm256_set1_pd(min_n);
    let none = _mm256_set1_pd(f64::NEG_INFINITY);
    for v in 0..vectors {
        let i = v * 4;
        // SAFETY: `i + 4 <= len`, and `len` is at most the length of every column and of
        // `out`, so each unaligned 4-lane load reads inside its slice and the store writes
        // inside `out`. The loads and the store do not overlap (`out` is borrowed mutably,
        // the columns shared).
        unsafe {
            let value = _mm256_loadu_pd(cols.value.as_ptr().add(i));
            let sum = _mm256_loadu_pd(cols.sum.as_ptr().add(i));
            let sum_sq = _mm256_loadu_pd(cols.sum_sq.as_ptr().add(i));
            let n = _mm256_loadu_pd(cols.n.as_ptr().add(i));

            let mean = _mm256_div_pd(sum, n);
            let var = _mm256_max_pd(
                _mm256_sub_pd(_mm256_div_pd(sum_sq, n), _mm256_mul_pd(mean, mean)),
                zero,
            );
            let sigma = _mm256_max_pd(_mm256_sqrt_pd(var), _mm256_mul_pd(floor, mean));
            let score = _mm256_div_pd(_mm256_sub_pd(value, mean), sigma);
            let valid = _mm256_and_pd(
                _mm256_cmp_pd::<_CMP_GE_OQ>(n, vmin),
                _mm256_cmp_pd::<_CMP_GT_OQ>(sigma, zero),
            );
            _mm256_storeu_pd(
                out.as_mut_ptr().add(i),
                _mm256_blendv_pd(none, score, valid),
            );
        }
    }
    score_from(cols, min_n, out, vectors * 4);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns with realistic and awkward values: steady keys, noisy keys, zero baselines,
    /// too-short histories, huge byte counts, and negative rounding residue in the variance.
    fn columns(len: usize, seed: u64) -> [Vec<f64>; 4] {
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut value, mut sum, mut sum_sq, mut n) = (vec![], vec![], vec![], vec![]);
        for i in 0..len {
            let r = next();
            let windows = (r % 301) as f64;
            let mean = match i % 5 {
                0 => 0.0,
                1 => 1e12 * ((r >> 9) % 1000) as f64,
                _ => ((r >> 20) % 100_000) as f64,
            };
            let spread = if i % 3 == 0 { 0.0 } else { 0.1 * mean };
            n.push(windows);
            sum.push(mean * windows);
            // Steady keys get a sum of squares a hair under mean² · n: the variance goes
            // slightly negative, as rounding makes it in the real store.
            sum_sq.push((mean * mean + spread * spread) * windows * (1.0 - 1e-16));
            value.push(mean * (1.0 + ((r >> 40) % 400) as f64 / 100.0));
        }
        [value, sum, sum_sq, n]
    }

    #[test]
    fn avx2_matches_scalar_bit_for_bit() {
        if !has_avx2() {
            eprintln!("no AVX2 on this CPU: only the scalar path runs here");
            return;
        }
        for (len, seed) in [
            (0, 1),
            (1, 2),
            (3, 3),
            (4, 4),
            (7, 5),
            (1_000, 6),
            (4_099, 7),
        ] {
            let [value, sum, sum_sq, n] = columns(len, seed);
            let cols = Columns {
                value: &value,
                sum: &sum,
                sum_sq: &sum_sq,
                n: &n,
            };
            for min_n in [0.0, 1.0, 30.0] {
                let mut a = vec![0.0; len];
                let mut b = vec![0.0; len];
                score_scalar(cols, min_n, &mut a);
                // SAFETY: AVX2 was checked above.
                unsafe { score_avx2(cols, min_n, &mut b) };
                for i in 0..len {
                    assert_eq!(a[i].to_bits(), b[i].to_bits(), "len {len} key {i}: {a:?}");
                }
            }
        }
    }

    #[test]
    fn scores_what_the_model_says() {
        // Baseline of 4 windows: 10, 20, 30, 40 -> mean 25, variance 125.
        let cols = Columns {
            value: &[100.0, 100.0, 100.0, 0.0, 5.0],
            sum: &[100.0, 100.0, 0.0, 0.0, 20.0],
            sum_sq: &[3000.0, 3000.0, 0.0, 0.0, 100.0],
            n: &[4.0, 2.0, 4.0, 0.0, 4.0],
        };
        let mut out = [0.0; 5];
        score_scalar(cols, 3.0, &mut out);
        assert_eq!(out[0], (100.0 - 25.0) / 125f64.sqrt());
        assert_eq!(out[1], f64::NEG_INFINITY, "2 windows < min 3");
        assert_eq!(out[2], f64::NEG_INFINITY, "all-zero baseline");
        assert_eq!(out[3], f64::NEG_INFINITY, "no history");
        // Steady 5 per window: σ = 0, floored at 5 % of the mean.
        assert_eq!(out[4], 0.0);
        let mut simd = [0.0; 5];
        score(cols, 3.0, &mut simd);
        assert_eq!(out.map(f64::to_bits), simd.map(f64::to_bits));
    }
}
