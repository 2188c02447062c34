//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4): builds the per-service lookup table the XDP program
//! indexes with a flow hash.
//!
//! Every entry (a worker) derives a permutation of the table's slots from its key alone, and
//! entries take turns claiming their next preferred slot that is still empty. That gives two
//! properties the data plane relies on:
//!
//! - balance: with equal weights every entry owns `size / N` slots, rounded up or down;
//! - minimal disruption: because an entry's preferences never depend on the other entries,
//!   adding or removing one entry moves few slots besides the ones it gains or loses, so few
//!   established flows are re-steered.
//!
//! The build is deterministic: no randomness, no `std` hasher (whose keys are randomised per
//! process), and input order does not matter. Several load balancer instances behind ECMP,
//! and one daemon across restarts, therefore compute byte-identical tables from the same
//! entries, and a flow lands on the same worker whichever instance receives it.
//!
//! Weights follow Katran's `MaglevHashV2`: each round an entry earns `weight` credit and takes
//! a turn whenever its credit reaches the largest weight. An entry thus claims slots in
//! proportion to its weight, turns are spread evenly over the rounds instead of coming in
//! bursts, and scaling every weight by the same factor yields the same table.

use std::fmt;

/// Number of slots in every service's lookup table (defined with the map in `lb-common`): a
/// prime, as Maglev requires. A prime size makes every skip in `1..size` coprime with it, so
/// each entry's permutation visits every slot and the fill always terminates. It is far above
/// the number of workers (the paper suggests over 100x) so the balance and disruption bounds
/// are tight: removing one of N workers moves at most 1/N + 1% of the slots.
pub use lb_common::MAGLEV_TABLE_SIZE;

// Checked at compile time so a careless edit of the constant cannot ship.
const _: () = assert!(is_prime(MAGLEV_TABLE_SIZE));

/// The slot value the kernel reads as "no worker": it drops the packet. Real entries must
/// therefore never use it as their value.
const EMPTY_SLOT: u32 = 0;

/// Fixed, arbitrary seeds (the first hexadecimal digits of pi's fraction, so nothing is
/// hidden in them) that turn one mixer into two independent hashes of the key. Changing
/// either reshuffles every table, so they must stay put: instances that disagree on them
/// send the same flow to different workers.
const OFFSET_SEED: u64 = 0x243F_6A88_85A3_08D3;
const SKIP_SEED: u64 = 0x1319_8A2E_0370_7344;

/// One candidate for the table: a stable identity used for hashing (so a worker keeps its
/// permutation across rebuilds) and the value written into its slots.
///
/// `value` must not be 0, which the kernel reads as an empty slot. `weight` is relative to
/// the other entries of the same table; 0 leaves the entry out (a draining worker). Keys
/// should be unique: entries sharing a key share a permutation, which keeps the table valid
/// but loses the minimal-disruption property between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevEntry {
    pub key: u64,
    pub value: u32,
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The requested size is not prime (0 and 1 included), so some entries' permutations
    /// would not cover the table and the fill could never finish.
    SizeNotPrime(u32),
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaglevError::SizeNotPrime(size) => {
                write!(f, "Maglev table size {size} is not prime; use a prime such as {MAGLEV_TABLE_SIZE}")
            }
        }
    }
}

impl std::error::Error for MaglevError {}

/// Builds the table of `size` slots, each holding the `value` of the entry that owns it.
///
/// With no entry of non-zero weight every slot is 0 (empty); otherwise every slot is owned.
/// The result depends only on the set of entries and `size`, not on the order of `entries`.
///
/// # Panics
///
/// If `size` is not prime (see [`try_build_table`] for the fallible form). In debug builds,
/// also if an entry has the reserved value 0.
pub fn build_table(entries: &[MaglevEntry], size: u32) -> Vec<u32> {
    try_build_table(entries, size).unwrap_or_else(|error| panic!("{error}"))
}

/// [`build_table`], returning an error instead of panicking when `size` is not prime.
pub fn try_build_table(entries: &[MaglevEntry], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime(size));
    }
    debug_assert!(
        entries.iter().all(|entry| entry.value != EMPTY_SLOT),
        "a Maglev entry uses value {EMPTY_SLOT}, which the kernel reads as an empty slot"
    );

    let mut table = vec![EMPTY_SLOT; size as usize];
    let mut live: Vec<MaglevEntry> = entries.iter().copied().filter(|entry| entry.weight > 0).collect();
    // Turn order decides who wins contested slots, so it must not depend on the caller's
    // order. Sorting on every field makes even duplicate keys order-independent.
    live.sort_unstable_by_key(|entry| (entry.key, entry.value, entry.weight));
    let Some(max_weight) = live.iter().map(|entry| u64::from(entry.weight)).max() else {
        return Ok(table);
    };

    let mut cursors: Vec<Cursor> = live.iter().map(|entry| Cursor::new(entry, size)).collect();
    // Occupancy is tracked apart from the values so that a misused value 0 in a release
    // build cannot make a slot look free twice and end the fill early.
    let mut taken = vec![false; size as usize];
    let mut filled = 0u32;
    // Terminates: the largest-weight entry takes a turn every round, and each turn claims a
    // slot, because a prime size makes every permutation reach every empty slot.
    loop {
        for cursor in &mut cursors {
            cursor.credit += cursor.weight;
            if cursor.credit < max_weight {
                continue;
            }
            cursor.credit -= max_weight;
            let slot = cursor.claim_next_empty(&taken, size);
            taken[slot] = true;
            table[slot] = cursor.value;
            filled += 1;
            if filled == size {
                return Ok(table);
            }
        }
    }
}

/// Slots whose value differs between two tables of the same size: the writes needed to move
/// from `old` to `new`.
///
/// Yields `(index, new value)` in increasing index order. Writing only these keeps map
/// updates, and the window in which the kernel sees a half-updated table, small.
///
/// # Panics
///
/// If the tables differ in length, or are longer than a `u32` can index.
pub fn changed_slots<'a>(old: &'a [u32], new: &'a [u32]) -> impl Iterator<Item = (u32, u32)> + 'a {
    // Checked eagerly, here rather than in the iterator: zipping would silently drop the
    // tail of the longer table and leave stale slots in the kernel.
    assert_eq!(old.len(), new.len(), "changed_slots needs two tables of the same size");
    assert!(u32::try_from(old.len()).is_ok(), "a Maglev table has at most u32::MAX slots");
    (0..=u32::MAX)
        .zip(old.iter().zip(new))
        .filter(|(_, (old_value, new_value))| old_value != new_value)
        .map(|(index, (_, &new_value))| (index, new_value))
}

/// One entry's walk along its permutation `offset, offset + skip, offset + 2 * skip, ...`
/// (mod size), plus its weighted-turn credit.
struct Cursor {
    /// The next slot of the permutation not yet looked at. Slots before it are all taken
    /// (by this entry or another), so the walk never needs to go back.
    next: u32,
    skip: u32,
    value: u32,
    weight: u64,
    /// Earned but unspent turn credit; always below the largest weight between turns.
    credit: u64,
}

impl Cursor {
    fn new(entry: &MaglevEntry, size: u32) -> Self {
        let size64 = u64::from(size);
        // Both casts are lossless: the results are below `size`, itself a u32.
        let offset = (splitmix64(entry.key ^ OFFSET_SEED) % size64) as u32;
        // In 1..size, never 0, so the walk moves; coprime with the prime size, so it
        // visits every slot once per `size` steps.
        let skip = (splitmix64(entry.key ^ SKIP_SEED) % (size64 - 1) + 1) as u32;
        Cursor { next: offset, skip, value: entry.value, weight: u64::from(entry.weight), credit: 0 }
    }

    /// Returns this entry's most preferred empty slot and moves past it.
    fn claim_next_empty(&mut self, taken: &[bool], size: u32) -> usize {
        while taken[self.next as usize] {
            self.advance(size);
        }
        let slot = self.next as usize;
        self.advance(size);
        slot
    }

    /// `next = (next + skip) % size` without overflowing for sizes near `u32::MAX`, and
    /// without the division.
    fn advance(&mut self, size: u32) {
        let room = size - self.skip;
        self.next = if self.next >= room { self.next - room } else { self.next + self.skip };
    }
}

/// SplitMix64 (Steele, Lea and Flood, OOPSLA 2014; Vigna's `splitmix64.c`): one step from
/// `state`. A bijective, well-mixing 64-bit hash, defined by integer arithmetic alone, so it
/// yields the same bits on every machine.
const fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trial division: at most ~32k steps for a u32, negligible next to a table build.
const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut divisor = 3;
    // `divisor <= n / divisor` is `divisor² <= n` without overflow.
    while divisor <= n / divisor {
        if n.is_multiple_of(divisor) {
            return false;
        }
        divisor += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = MAGLEV_TABLE_SIZE;

    /// `n` equal-weight entries with scattered keys (as real identities would be) and
    /// values `1..=n`.
    fn entries(n: u32) -> Vec<MaglevEntry> {
        (1..=n).map(|i| entry(u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5, i, 1)).collect()
    }

    fn entry(key: u64, value: u32, weight: u32) -> MaglevEntry {
        MaglevEntry { key, value, weight }
    }

    /// Slots owned by `value`.
    fn owned(table: &[u32], value: u32) -> usize {
        table.iter().filter(|&&slot| slot == value).count()
    }

    fn differing(old: &[u32], new: &[u32]) -> usize {
        old.iter().zip(new).filter(|(a, b)| a != b).count()
    }

    /// Slots allowed to move beyond the ideal (those the changed entry gains or loses): 1% of
    /// the table, the bound Sluice promises. Maglev keeps this collateral small but not zero,
    /// and it grows with N / size: at 16381 slots it peaked at 1.2% for N = 50 or 64, which is
    /// why the table has 65537. A broken permutation (one depending on the other entries or
    /// on positions) moves ~50% or more.
    const SLACK: usize = SIZE as usize / 100;

    #[test]
    fn fills_every_slot_and_balances_equal_weights() {
        for n in [1, 2, 3, 4, 7, 16, 64, 256] {
            let table = build_table(&entries(n), SIZE);
            assert_eq!(table.len(), SIZE as usize);
            assert!(table.iter().all(|&slot| slot != EMPTY_SLOT), "n={n}: empty slot left");
            let ideal = f64::from(SIZE) / f64::from(n);
            for value in 1..=n {
                let count = owned(&table, value) as f64;
                assert!(
                    (ideal * 0.9..=ideal * 1.1).contains(&count),
                    "n={n}: value {value} owns {count} slots, ideal {ideal:.1}"
                );
            }
        }
    }

    #[test]
    fn removing_an_entry_moves_little_besides_its_slots() {
        for n in [2, 3, 5, 8, 13, 32, 50, 64] {
            let all = entries(n);
            let old = build_table(&all, SIZE);
            for removed in [0, n as usize / 2, n as usize - 1] {
                let removed_value = all[removed].value;
                let mut rest = all.clone();
                rest.remove(removed);
                let new = build_table(&rest, SIZE);

                assert_eq!(owned(&new, removed_value), 0, "n={n}: removed entry still owns slots");
                let changed = differing(&old, &new);
                assert!(
                    changed <= SIZE as usize / n as usize + SLACK,
                    "n={n}, removed {removed_value}: {changed} slots changed"
                );
                // Maglev does not promise that survivors keep every slot, only that few move.
                let collateral =
                    old.iter().zip(&new).filter(|&(&a, &b)| a != b && a != removed_value).count();
                assert!(collateral <= SLACK, "n={n}, removed {removed_value}: {collateral} collateral moves");
            }
        }
    }

    #[test]
    fn adding_an_entry_moves_about_its_share() {
        for n in [1, 2, 3, 5, 8, 13, 32, 63] {
            let mut all = entries(n + 1);
            let added = all.remove(n as usize / 2);
            let old = build_table(&all, SIZE);
            all.push(added);
            let new = build_table(&all, SIZE);

            let changed = differing(&old, &new);
            let share = SIZE as usize / (n as usize + 1);
            assert!(changed <= share + SLACK, "n={n}: adding one entry changed {changed} slots");
            let collateral = old.iter().zip(&new).filter(|&(&a, &b)| a != b && b != added.value).count();
            assert!(collateral <= SLACK, "n={n}: {collateral} slots moved between old entries");
        }
    }

    #[test]
    fn input_order_does_not_matter_and_builds_are_deterministic() {
        let sorted = entries(37);
        let table = build_table(&sorted, SIZE);
        assert_eq!(build_table(&sorted, SIZE), table);

        let reversed: Vec<_> = sorted.iter().rev().copied().collect();
        assert_eq!(build_table(&reversed, SIZE), table);
        // A shuffle that is neither sorted nor reversed: stride 10 over 37 visits every entry.
        let strided: Vec<_> = (0..sorted.len()).map(|i| sorted[i * 10 % sorted.len()]).collect();
        assert_ne!(strided, sorted);
        assert_eq!(build_table(&strided, SIZE), table);
    }

    #[test]
    fn hash_matches_the_splitmix64_reference() {
        // Reference outputs of splitmix64.c seeded with 1234567 (also on Rosetta Code):
        // another mixer would silently give other instances other tables.
        assert_eq!(splitmix64(1_234_567), 0x599E_D017_FB08_FC85);
        assert_eq!(splitmix64(1_234_567u64.wrapping_add(0x9E37_79B9_7F4A_7C15)), 0x2C73_F084_5854_0FA5);
    }

    #[test]
    fn table_is_pinned_across_versions_and_machines() {
        // Every load balancer instance must build the same table, whatever the version or
        // machine. If this fails the hashing or turn order changed: that reshuffles every
        // flow during a rolling upgrade, so do it only on purpose, and update the pin.
        let table = build_table(&[entry(1, 10, 1), entry(2, 20, 1), entry(3, 30, 2)], 13);
        assert_eq!(table, PINNED_SMALL_TABLE);
        let table = build_table(&entries(5), 16381);
        assert_eq!(fnv1a(&table), PINNED_LARGE_TABLE_FNV);
    }

    const PINNED_SMALL_TABLE: [u32; 13] = [30, 10, 20, 30, 10, 30, 20, 10, 30, 30, 30, 20, 30];
    const PINNED_LARGE_TABLE_FNV: u64 = 0x80B6_4090_798B_2510;

    /// A fixed (not `std`, not randomised) digest of a table, for pinning large ones.
    fn fnv1a(table: &[u32]) -> u64 {
        table
            .iter()
            .flat_map(|slot| slot.to_le_bytes())
            .fold(0xCBF2_9CE4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3))
    }

    /// The populate loop exactly as the paper's pseudocode 1 writes it: full permutation
    /// tables and a `next` index per entry, equal weights, entries in key order.
    fn paper_populate(entries: &[MaglevEntry], size: u32) -> Vec<u32> {
        let m = u64::from(size);
        let permutation: Vec<Vec<usize>> = entries
            .iter()
            .map(|e| {
                let offset = splitmix64(e.key ^ OFFSET_SEED) % m;
                let skip = splitmix64(e.key ^ SKIP_SEED) % (m - 1) + 1;
                (0..m).map(|j| ((offset + j * skip) % m) as usize).collect()
            })
            .collect();
        let mut next = vec![0; entries.len()];
        let mut table = vec![None; size as usize];
        let mut filled = 0;
        loop {
            for (i, e) in entries.iter().enumerate() {
                let mut c = permutation[i][next[i]];
                while table[c].is_some() {
                    next[i] += 1;
                    c = permutation[i][next[i]];
                }
                table[c] = Some(e.value);
                next[i] += 1;
                filled += 1;
                if filled == size {
                    return table.into_iter().map(Option::unwrap).collect();
                }
            }
        }
    }

    #[test]
    fn matches_the_papers_pseudocode() {
        for (n, size) in [(1, SIZE), (2, SIZE), (7, SIZE), (64, SIZE), (20, 13)] {
            let mut all = entries(n);
            let table = build_table(&all, size);
            all.sort_by_key(|e| e.key);
            assert_eq!(table, paper_populate(&all, size), "n={n}, size={size}");
        }
    }

    #[test]
    fn weight_two_gets_twice_the_slots() {
        let mut all = entries(8);
        all[3].weight = 2;
        let table = build_table(&all, SIZE);
        let heavy = owned(&table, all[3].value) as f64;
        let light: Vec<f64> =
            all.iter().filter(|e| e.weight == 1).map(|e| owned(&table, e.value) as f64).collect();
        let light_mean = light.iter().sum::<f64>() / light.len() as f64;
        let ratio = heavy / light_mean;
        assert!((1.8..=2.2).contains(&ratio), "weight 2 got {ratio:.3}x the slots of weight 1");
        // Each light entry gets its share too, 1/9 of the table.
        let ideal = f64::from(SIZE) / 9.0;
        assert!(light.iter().all(|&count| (ideal * 0.9..=ideal * 1.1).contains(&count)), "{light:?}");
    }

    #[test]
    fn mixed_weights_are_proportional() {
        let all: Vec<_> = (1..=4).map(|w| entry(u64::from(w) * 7919, w, w)).collect();
        let table = build_table(&all, SIZE);
        let total_weight: u32 = all.iter().map(|e| e.weight).sum();
        for e in &all {
            let ideal = f64::from(SIZE) * f64::from(e.weight) / f64::from(total_weight);
            let count = owned(&table, e.value) as f64;
            assert!(
                (ideal * 0.9..=ideal * 1.1).contains(&count),
                "weight {}: {count}, ideal {ideal:.1}",
                e.weight
            );
        }
    }

    #[test]
    fn scaling_all_weights_keeps_the_table() {
        let ones = entries(10);
        let fives: Vec<_> = ones.iter().map(|e| MaglevEntry { weight: 5, ..*e }).collect();
        assert_eq!(build_table(&fives, SIZE), build_table(&ones, SIZE));
    }

    #[test]
    fn empty_input_gives_an_all_empty_table() {
        assert_eq!(build_table(&[], SIZE), vec![EMPTY_SLOT; SIZE as usize]);
        let drained: Vec<_> = entries(4).into_iter().map(|e| MaglevEntry { weight: 0, ..e }).collect();
        assert_eq!(build_table(&drained, SIZE), vec![EMPTY_SLOT; SIZE as usize]);
    }

    #[test]
    fn zero_weight_entries_get_no_slots_and_change_nothing() {
        let live = entries(6);
        let mut with_drained = live.clone();
        with_drained.push(entry(0xDEAD_BEEF, 99, 0));
        with_drained.insert(0, entry(1, 98, 0));
        let table = build_table(&with_drained, SIZE);
        assert_eq!(owned(&table, 99), 0);
        assert_eq!(owned(&table, 98), 0);
        assert_eq!(table, build_table(&live, SIZE));
    }

    #[test]
    fn small_prime_sizes_fill_even_with_more_entries_than_slots() {
        for size in [2, 3, 5, 7, 13] {
            for n in [1, 2, 6, 20] {
                let table = build_table(&entries(n), size);
                assert_eq!(table.len(), size as usize);
                assert!(table.iter().all(|&slot| (1..=n).contains(&slot)), "size={size}, n={n}: {table:?}");
            }
        }
    }

    #[test]
    fn non_prime_sizes_are_rejected() {
        for size in [0, 1, 4, 9, 16_384, 65_536] {
            assert_eq!(try_build_table(&entries(3), size), Err(MaglevError::SizeNotPrime(size)));
        }
        assert!(try_build_table(&entries(3), 65_537).is_ok());
    }

    #[test]
    #[should_panic(expected = "not prime")]
    fn build_table_panics_on_a_non_prime_size() {
        build_table(&entries(3), 16_384);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "empty slot")]
    fn value_zero_is_refused_in_debug_builds() {
        build_table(&[entry(1, 0, 1)], SIZE);
    }

    #[test]
    fn is_prime_agrees_with_a_sieve() {
        let limit = 10_000usize;
        let mut composite = vec![false; limit];
        for i in 2..limit {
            for multiple in (i * i..limit).step_by(i) {
                composite[multiple] = true;
            }
        }
        for (n, &is_composite) in composite.iter().enumerate() {
            assert_eq!(is_prime(n as u32), n >= 2 && !is_composite, "n={n}");
        }
        assert!(is_prime(4_294_967_291)); // the largest u32 prime
        assert!(!is_prime(u32::MAX));
    }

    #[test]
    fn changed_slots_lists_exactly_the_differences() {
        let old = [5, 6, 7, 8, 9];
        let new = [5, 1, 7, 2, 3];
        assert_eq!(changed_slots(&old, &new).collect::<Vec<_>>(), [(1, 1), (3, 2), (4, 3)]);
        assert_eq!(changed_slots(&old, &old).count(), 0);
        assert_eq!(changed_slots(&[], &[]).count(), 0);

        // On real tables: applying the writes to `old` yields `new`, and every write is needed.
        let old = build_table(&entries(20), SIZE);
        let new = build_table(&entries(21), SIZE);
        let writes: Vec<_> = changed_slots(&old, &new).collect();
        assert_eq!(writes.len(), differing(&old, &new));
        assert!(writes.windows(2).all(|pair| pair[0].0 < pair[1].0), "indices not increasing");
        let mut patched = old.clone();
        for &(index, value) in &writes {
            assert_ne!(old[index as usize], value, "slot {index} written without changing");
            patched[index as usize] = value;
        }
        assert_eq!(patched, new);
    }

    #[test]
    #[should_panic(expected = "same size")]
    fn changed_slots_refuses_tables_of_different_sizes() {
        let _ = changed_slots(&[1, 2, 3], &[1, 2]);
    }
}
