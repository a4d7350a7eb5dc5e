//! The pre-queue shuffle: a pure, seeded permutation. Users who join before the on-sale instant are
//! put in a random order at that instant. The algorithm is spelled out here (SplitMix64 driving an
//! unbiased Fisher–Yates) instead of borrowed from `rand`, whose generators may change between
//! versions: an audit years later must reproduce the order from the logged seed and the
//! (sorted) member list alone.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fully specified.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0) by rejection, so no index is favoured.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % bound;
            }
        }
    }
}

/// Returns the members in shuffled order. The input is sorted first, so the result depends only
/// on the set of members and the seed — not on the order Redis happened to return them in.
pub fn shuffle(members: &[String], seed: u64) -> Vec<String> {
    let mut out: Vec<String> = members.to_vec();
    out.sort();
    let mut rng = SplitMix64::new(seed);
    for i in (1..out.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        out.swap(i, j);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn users(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user-{i:04}")).collect()
    }

    #[test]
    fn splitmix_matches_the_reference_vector() {
        // First outputs of SplitMix64 seeded with 1234567 (from the reference C implementation).
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn is_a_permutation_reproducible_and_seed_dependent() {
        let input = users(500);
        let a = shuffle(&input, 42);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, input);
        assert_eq!(a, shuffle(&input, 42));
        assert_ne!(a, shuffle(&input, 43));
        assert_ne!(
            a, input,
            "a 500-element shuffle equal to the identity is astronomically unlikely"
        );
    }

    #[test]
    fn input_order_does_not_matter() {
        let input = users(50);
        let mut reversed = input.clone();
        reversed.reverse();
        assert_eq!(shuffle(&input, 7), shuffle(&reversed, 7));
    }

    #[test]
    fn every_position_is_reachable_roughly_uniformly() {
        // 4 members, 24 000 seeds: each member lands first about 6 000 times.
        let input = users(4);
        let mut first = std::collections::HashMap::new();
        for seed in 0..24_000u64 {
            *first.entry(shuffle(&input, seed)[0].clone()).or_insert(0u32) += 1;
        }
        for (_, n) in first {
            assert!((5_400..6_600).contains(&n), "{n}");
        }
    }

    #[test]
    fn edge_cases() {
        assert!(shuffle(&[], 1).is_empty());
        assert_eq!(shuffle(&["a".to_owned()], 1), vec!["a".to_owned()]);
    }

    proptest! {
        #[test]
        fn always_a_permutation(n in 0usize..200, seed in any::<u64>()) {
            let input = users(n);
            let mut out = shuffle(&input, seed);
            out.sort();
            prop_assert_eq!(out, input);
        }
    }
}
