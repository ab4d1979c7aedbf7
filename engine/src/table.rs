//! The aggregation table: an open-addressing hash map from fixed-width key bytes to
//! [`Totals`], sized once and never resized.
//!
//! # Layout
//!
//! Two arrays, both allocated in [`Table::new`]:
//!
//! * `tags[slot]`: 0 for an empty slot, otherwise the upper 32 bits of the key's hash with the
//!   lowest bit forced to 1 (so a full slot is never 0). Probing reads only this dense array
//!   (16 tags per cache line) and touches a slot's key on a tag match.
//! * `slots`: per slot, the [`Totals`] (5 words) followed by the key, zero-padded to whole
//!   64-bit words. A slot takes 64 bytes (one cache line, the array being 64-byte aligned)
//!   whenever the key fits in 24 bytes, as every built-in dimension but the widest
//!   combinations does; longer keys take `5 + ceil(len / 8)` words. An update that hits
//!   therefore costs the tag's cache line and one slot line, instead of three separate arrays
//!   for tags, keys and totals. Keys compare word by word, without a `memcmp` call.
//! * `used`: the occupied slot numbers in insertion order, so that iterating and clearing cost
//!   the number of keys, not the capacity.
//!
//! Every key of a table has the same length (the dimension's
//! [`crate::key::Dimension::key_len`]), so no length is stored; a table belongs to exactly one
//! dimension, which is its tag.
//!
//! # Probe sequence
//!
//! The hash is [foldhash](https://docs.rs/foldhash)'s fast hasher with a fixed seed (tables of
//! different workers must agree, and the input is not attacker-chosen in a way that matters: a
//! flood of colliding keys costs probe time bounded by the load cap, never memory). The home
//! slot is `hash & (capacity - 1)`; probing is linear (`slot + 1`, wrapping), which keeps a
//! probe within one or two cache lines of tags.
//!
//! # Load factor and behaviour when full
//!
//! A table accepts new keys while it holds fewer than 7/8 of its capacity (`max_keys`).
//! Linear probing's expected probe length grows as `1 / (1 - load)^2`; at 7/8 a miss costs
//! about 32 probes, which is the worst we accept. Past the cap, adding to an existing key still
//! works, and a record with a new key is added to the table's `overflow` totals instead and
//! counted ([`Table::overflow_adds`]): its bytes still reach the window's totals, only not
//! under its own key. Nothing is dropped silently, and since the probe for an absent key
//! always ends at an empty slot (at least 1/8 of slots stay empty), a full table cannot loop.
//!
//! # Allocation
//!
//! None after [`Table::new`]: [`Table::add`] writes into the preallocated arrays, and
//! [`Table::clear`] resets only the used slots and keeps the memory.
//!
//! Left over: the arrays are ordinary 4 KiB pages. With transparent huge pages forced on
//! (`always`), the 1M-key update benchmark went from 31.6 to 20.8 ns (100K keys: no change), so a
//! table of a million keys and more would gain from a 2 MiB-aligned allocation advised with
//! `MADV_HUGEPAGE` before first touch; not done yet (docs/benchmarks.md).

use std::hash::{BuildHasher, Hasher};

use foldhash::fast::FixedState;

use crate::output::Totals;

/// Words of a slot that hold the [`Totals`].
const TOTALS_WORDS: usize = size_of::<Totals>() / 8;

/// Words of the longest key.
const KEY_WORDS_MAX: usize = crate::key::KEY_MAX.div_ceil(8);

/// One cache line of slot words; the slot array is made of these so that it is 64-byte
/// aligned.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u64; 8]);

/// A fixed-capacity open-addressing map from `key_len`-byte keys to [`Totals`].
#[derive(Clone, Debug)]
pub struct Table {
    key_len: usize,
    key_words: usize,
    /// Words per slot.
    stride: usize,
    mask: usize,
    max_keys: usize,
    tags: Box<[u32]>,
    slots: Box<[Line]>,
    used: Vec<u32>,
    overflow: Totals,
    overflow_adds: u64,
}

/// `key` as zero-padded native-endian words (so that the words, viewed as bytes, are the key).
#[inline]
fn key_words(key: &[u8]) -> [u64; KEY_WORDS_MAX] {
    let mut w = [0u64; KEY_WORDS_MAX];
    let mut chunks = key.chunks_exact(8);
    let mut i = 0;
    for chunk in chunks.by_ref() {
        // `chunks_exact(8)` yields 8-byte chunks only.
        w[i] = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
        i += 1;
    }
    let r = chunks.remainder().len();
    if r > 0 && i < KEY_WORDS_MAX {
        // The last `r` bytes as the low bytes of a little-endian value, built from registers:
        // a byte-wise copy into a stack word followed by a word load stalls store forwarding,
        // which cost more than the whole probe.
        let v = if key.len() >= 8 {
            let last: [u8; 8] = key[key.len() - 8..].try_into().unwrap_or([0; 8]);
            u64::from_le_bytes(last) >> (8 * (8 - r))
        } else {
            key.iter()
                .enumerate()
                .fold(0u64, |v, (j, &b)| v | (u64::from(b) << (8 * j)))
        };
        // Native order, so that the word viewed as bytes is the key's tail, zero-padded.
        w[i] = u64::from_le(v);
    }
    w
}

/// Word-wise equality without an early exit or a `memcmp` call (keys are 1 to 9 words).
#[inline]
fn same(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

impl Table {
    /// A table of `capacity` slots (a power of two, at least 2) for keys of `key_len` bytes
    /// (1 to [`crate::key::KEY_MAX`]).
    ///
    /// # Panics
    ///
    /// When `capacity` is not a power of two or is below 2, or `key_len` is 0 or above
    /// [`crate::key::KEY_MAX`]. The configuration is validated before tables are made.
    pub fn new(capacity: usize, key_len: usize) -> Self {
        assert!(
            capacity.is_power_of_two() && capacity >= 2,
            "capacity {capacity}"
        );
        assert!(
            key_len > 0 && key_len <= crate::key::KEY_MAX,
            "key length {key_len}"
        );
        assert!(u32::try_from(capacity).is_ok(), "capacity {capacity}");
        let max_keys = capacity - capacity / 8;
        let key_words = key_len.div_ceil(8);
        let stride = (TOTALS_WORDS + key_words).max(8);
        let lines = (capacity * stride).div_ceil(8);
        Self {
            key_len,
            key_words,
            stride,
            mask: capacity - 1,
            max_keys,
            tags: vec![0; capacity].into_boxed_slice(),
            slots: vec![Line([0; 8]); lines].into_boxed_slice(),
            used: Vec::with_capacity(max_keys),
            overflow: Totals::default(),
            overflow_adds: 0,
        }
    }

    /// Bytes a table of `capacity` slots for `key_len`-byte keys allocates: per slot a 4-byte
    /// tag and the slot's words, plus a 4-byte index per usable slot (7/8 of them).
    pub fn bytes_for(capacity: usize, key_len: usize) -> usize {
        let stride = (TOTALS_WORDS + key_len.div_ceil(8)).max(8);
        capacity * (4 + 8 * stride) + capacity / 8 * 7 * 4
    }

    /// Adds `t` to the totals of `key`. Returns `false` when the key was new and the table was
    /// at its load cap, so `t` went to the overflow entry instead.
    ///
    /// `key` must be `key_len` bytes; a key of another length is added to overflow (the
    /// engine never does this; the check keeps the table sound).
    #[inline]
    pub fn add(&mut self, key: &[u8], t: &Totals) -> bool {
        self.add_hashed(key, key_hash(key), t)
    }

    /// Starts loading the cache lines that adding a key of hash `hash` ([`key_hash`]) reads
    /// first: its home tag and home slot. For batches: hash and prefetch every key of the
    /// batch, then [`Table::add_hashed`] them, so that the misses overlap.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let slot = (hash as usize) & self.mask;
        crate::sys::prefetch(&self.tags[slot]);
        let word = slot * self.stride;
        crate::sys::prefetch(&self.slots[word / 8]);
    }

    /// [`Table::add`] with the key's hash already computed ([`key_hash`]).
    #[inline]
    pub fn add_hashed(&mut self, key: &[u8], hash: u64, t: &Totals) -> bool {
        if key.len() != self.key_len {
            self.add_overflow(t);
            return false;
        }
        let want = key_words(key);
        let kw = self.key_words;
        let tag = ((hash >> 32) as u32) | 1;
        let mut slot = (hash as usize) & self.mask;
        let stride = self.stride;
        let words: &mut [u64] = bytemuck::cast_slice_mut(&mut self.slots);
        loop {
            let at = self.tags[slot];
            if at == 0 {
                break;
            }
            let base = slot * stride;
            if at == tag
                && same(
                    &words[base + TOTALS_WORDS..base + TOTALS_WORDS + kw],
                    &want[..kw],
                )
            {
                let v: &mut Totals = bytemuck::from_bytes_mut(bytemuck::cast_slice_mut(
                    &mut words[base..base + TOTALS_WORDS],
                ));
                v.add(t);
                return true;
            }
            slot = (slot + 1) & self.mask;
        }

        // `slot` is the first empty slot of the probe: the key is absent.
        if self.used.len() >= self.max_keys {
            self.add_overflow(t);
            return false;
        }
        self.tags[slot] = tag;
        let base = slot * stride;
        words[base..base + TOTALS_WORDS]
            .copy_from_slice(bytemuck::cast_slice(std::slice::from_ref(t)));
        words[base + TOTALS_WORDS..base + TOTALS_WORDS + kw].copy_from_slice(&want[..kw]);
        // `slot <= mask < u32::MAX` (checked in `new`).
        self.used.push(slot as u32);
        true
    }

    /// The totals of `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<&Totals> {
        if key.len() != self.key_len {
            return None;
        }
        let want = key_words(key);
        let kw = self.key_words;
        let hash = key_hash(key);
        let tag = ((hash >> 32) as u32) | 1;
        let mut slot = (hash as usize) & self.mask;
        let words = self.words();
        loop {
            let at = self.tags[slot];
            if at == 0 {
                return None;
            }
            let base = slot * self.stride;
            if at == tag
                && same(
                    &words[base + TOTALS_WORDS..base + TOTALS_WORDS + kw],
                    &want[..kw],
                )
            {
                return Some(self.totals_at(slot));
            }
            slot = (slot + 1) & self.mask;
        }
    }

    /// Adds every key and the overflow entry of `other` (same key length) into `self`.
    /// Returns how many of `other`'s keys went to `self`'s overflow.
    pub fn merge_from(&mut self, other: &Self) -> u64 {
        let spilled = self.add_all(other.iter());
        if other.overflow_adds > 0 || other.overflow != Totals::default() {
            self.overflow.add(&other.overflow);
            self.overflow_adds += other.overflow_adds;
        }
        spilled
    }

    /// Adds the keys of `other` that belong to `shard` of `shards` ([`shard_of`]) into `self`,
    /// and `other`'s overflow entry when `with_overflow` (one shard takes it, so that it is
    /// counted once). Returns how many of those keys went to `self`'s overflow. With one shard
    /// this is [`Table::merge_from`].
    pub fn merge_shard_from(
        &mut self,
        other: &Self,
        shard: usize,
        shards: usize,
        with_overflow: bool,
    ) -> u64 {
        if shards <= 1 {
            return self.merge_from(other);
        }
        let spilled = self.add_all(other.iter().filter(|(k, _)| shard_of(k, shards) == shard));
        if with_overflow && (other.overflow_adds > 0 || other.overflow != Totals::default()) {
            self.overflow.add(&other.overflow);
            self.overflow_adds += other.overflow_adds;
        }
        spilled
    }

    /// Adds every (key, totals) pair, a batch at a time: hash and prefetch 32 keys, then add
    /// them, so that the cache misses of a batch overlap. Returns how many went to overflow.
    fn add_all<'a>(&mut self, pairs: impl Iterator<Item = (&'a [u8], &'a Totals)>) -> u64 {
        const N: usize = 32;
        let mut spilled = 0;
        let mut batch: [(&[u8], u64, Totals); N] = [(&[], 0, Totals::default()); N];
        let mut n = 0;
        for (k, t) in pairs {
            let h = key_hash(k);
            self.prefetch(h);
            batch[n] = (k, h, *t);
            n += 1;
            if n == N {
                for (k, h, t) in &batch {
                    spilled += u64::from(!self.add_hashed(k, *h, t));
                }
                n = 0;
            }
        }
        for (k, h, t) in &batch[..n] {
            spilled += u64::from(!self.add_hashed(k, *h, t));
        }
        spilled
    }

    /// The keys and their totals, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Totals)> + '_ {
        self.used.iter().map(|&s| {
            let s = s as usize;
            (self.key_at(s), self.totals_at(s))
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// True when the table holds no key and no overflow.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty() && self.overflow_adds == 0
    }

    /// Slots (a power of two).
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Keys accepted before new keys go to overflow (7/8 of the capacity).
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Key length in bytes.
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// Totals of the additions that found no room.
    pub fn overflow(&self) -> &Totals {
        &self.overflow
    }

    /// Number of additions that went to overflow.
    pub fn overflow_adds(&self) -> u64 {
        self.overflow_adds
    }

    /// Empties the table, keeping its memory. Costs the number of keys, not the capacity.
    pub fn clear(&mut self) {
        for &s in &self.used {
            self.tags[s as usize] = 0;
        }
        self.used.clear();
        self.overflow = Totals::default();
        self.overflow_adds = 0;
    }

    #[inline]
    fn words(&self) -> &[u64] {
        bytemuck::cast_slice(&self.slots)
    }

    #[inline]
    fn key_at(&self, slot: usize) -> &[u8] {
        let base = slot * self.stride + TOTALS_WORDS;
        let words = &self.words()[base..base + self.key_words];
        &bytemuck::cast_slice::<u64, u8>(words)[..self.key_len]
    }

    #[inline]
    fn totals_at(&self, slot: usize) -> &Totals {
        let base = slot * self.stride;
        bytemuck::from_bytes(bytemuck::cast_slice(
            &self.words()[base..base + TOTALS_WORDS],
        ))
    }

    fn add_overflow(&mut self, t: &Totals) {
        self.overflow.add(t);
        self.overflow_adds += 1;
    }
}

/// The merger shard (`0..shards`) that owns `key`, from the table's own hash, so the partition
/// is the same on every thread and every run.
///
/// It takes the hash's upper 32 bits (the tag's, not the home slot's lower bits) and maps them
/// onto `0..shards` by multiply-shift, so each shard's keys still spread over all home slots of
/// its merged tables instead of clustering on the slots of one residue.
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    let upper = key_hash(key) >> 32;
    ((upper * shards as u64) >> 32) as usize
}

/// The hash every table uses for `key` (for [`Table::prefetch`] and [`Table::add_hashed`]).
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = FixedState::with_seed(HASH_SEED).build_hasher();
    h.write(key);
    h.finish()
}

/// Fixed so that every table (every worker, the merger) hashes alike; any odd constant works.
const HASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn t(bytes: u64) -> Totals {
        Totals {
            bytes,
            packets: 1,
            flows: 1,
            raw_bytes: bytes,
            raw_packets: 1,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(u8, u64),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            20 => (any::<u8>(), 0u64..1_000_000).prop_map(|(k, b)| Op::Add(k, b)),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// The table behaves like a HashMap that refuses new keys past 7/8 of capacity, and
        /// whatever it refuses lands in overflow: totals are conserved.
        #[test]
        fn behaves_like_a_capped_hashmap(ops in proptest::collection::vec(op(), 0..600)) {
            // 64 slots, 56 keys at most, 256 possible keys: the cap is hit often.
            let mut table = Table::new(64, 3);
            let mut model: HashMap<[u8; 3], Totals> = HashMap::new();
            let mut overflow = Totals::default();
            let mut overflow_adds = 0;
            for op in ops {
                match op {
                    Op::Add(k, b) => {
                        let key = [k, k.wrapping_mul(7), 0xaa];
                        let fits = model.contains_key(&key) || model.len() < 56;
                        prop_assert_eq!(table.add(&key, &t(b)), fits);
                        if fits {
                            model.entry(key).or_default().add(&t(b));
                        } else {
                            overflow.add(&t(b));
                            overflow_adds += 1;
                        }
                    }
                    Op::Clear => {
                        table.clear();
                        model.clear();
                        overflow = Totals::default();
                        overflow_adds = 0;
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(table.get(k), Some(v));
            }
            let seen: HashMap<Vec<u8>, Totals> =
                table.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
            prop_assert_eq!(seen.len(), model.len());
            prop_assert_eq!(table.overflow(), &overflow);
            prop_assert_eq!(table.overflow_adds(), overflow_adds);
        }

        /// Merging two tables gives the sum of both models.
        #[test]
        fn merge_adds_up(
            a in proptest::collection::vec((any::<u16>(), 0u64..1000), 0..200),
            b in proptest::collection::vec((any::<u16>(), 0u64..1000), 0..200),
        ) {
            let mut ta = Table::new(512, 2);
            let mut tb = Table::new(512, 2);
            let mut model: HashMap<[u8; 2], u64> = HashMap::new();
            for (k, v) in &a {
                ta.add(&k.to_be_bytes(), &t(*v));
                *model.entry(k.to_be_bytes()).or_default() += v;
            }
            for (k, v) in &b {
                tb.add(&k.to_be_bytes(), &t(*v));
                *model.entry(k.to_be_bytes()).or_default() += v;
            }
            let mut m = Table::new(1024, 2);
            prop_assert_eq!(m.merge_from(&ta), 0);
            prop_assert_eq!(m.merge_from(&tb), 0);
            prop_assert_eq!(m.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(m.get(k).map(|t| t.bytes), Some(*v));
            }
        }
    }

    #[test]
    fn shards_partition_the_keys_and_overflow_is_taken_once() {
        let mut src = Table::new(64, 4);
        for i in 0..40u32 {
            assert!(src.add(&i.to_be_bytes(), &t(u64::from(i))));
        }
        src.add_overflow(&t(7));
        let mut whole = Table::new(64, 4);
        whole.merge_from(&src);

        let mut seen = 0;
        for shard in 0..3 {
            let mut part = Table::new(64, 4);
            assert_eq!(part.merge_shard_from(&src, shard, 3, shard == 0), 0);
            for (k, v) in part.iter() {
                assert_eq!(shard_of(k, 3), shard);
                assert_eq!(whole.get(k), Some(v));
            }
            assert_eq!(part.overflow().bytes, if shard == 0 { 7 } else { 0 });
            assert!(part.len() < 40, "every shard gets a part, not all");
            seen += part.len();
        }
        assert_eq!(seen, 40);
    }

    #[test]
    fn full_table_overflows_and_clear_resets() {
        let mut table = Table::new(16, 4);
        assert_eq!(table.max_keys(), 14);
        for i in 0..14u32 {
            assert!(table.add(&i.to_be_bytes(), &t(1)));
        }
        assert!(!table.add(&99u32.to_be_bytes(), &t(5)));
        assert!(
            table.add(&3u32.to_be_bytes(), &t(2)),
            "existing keys still add"
        );
        assert_eq!(table.overflow().bytes, 5);
        assert_eq!(table.overflow_adds(), 1);
        assert_eq!(table.get(&3u32.to_be_bytes()).unwrap().bytes, 3);
        assert!(
            !table.add(&[1, 2], &t(1)),
            "wrong key length goes to overflow"
        );

        table.clear();
        assert!(table.is_empty());
        assert_eq!(table.get(&3u32.to_be_bytes()), None);
        assert!(table.add(&99u32.to_be_bytes(), &t(5)));
        assert_eq!(table.len(), 1);
    }
}
