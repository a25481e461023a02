//! Randomness for the verifiers, as an explicit interface.
//!
//! The proofs of speculative sampling (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv
//! 2302.01318) need exactly two primitives, each consuming *fresh* randomness:
//!
//! * the acceptance test `u·q < p` for a uniform u in [0, 1): it passes with probability min(1, p/q), and it
//!   is strict, so a token the target forbids (p = 0) never passes;
//! * a categorical draw of index i with probability w\[i\] / Σw, by inverse CDF.
//!
//! Verifiers are written against [`Coin`], so the same production code runs under [`SeededCoin`] (a
//! reproducible PRNG) or under [`enumerate_law`], which walks every branch and returns the exact output law.

use std::collections::BTreeMap;

use crate::bail;
use crate::error::Result;

/// The randomness a verifier consumes; every call is an independent draw.
pub trait Coin {
    /// The acceptance test `u·q < p` for a fresh uniform u in [0, 1).
    fn accept(&mut self, p: f64, q: f64) -> bool;
    /// Index i with probability `w[i] / Σw`; never a zero-weight index. The caller guarantees w non-empty,
    /// finite, non-negative, with Σw > 0.
    fn categorical(&mut self, w: &[f64]) -> usize;
}

/// P(u·q < p) for u uniform on [0, 1): min(1, p/q); with q = 0, 1 if p > 0. NaN counts as 0.
pub fn acceptance_probability(p: f64, q: f64) -> f64 {
    let ratio = p / q;
    if ratio > 0.0 {
        ratio.min(1.0)
    } else {
        0.0
    }
}

/// y ~ norm(r), or y ~ p with `true` when r has no finite positive mass (p == q up to rounding). The
/// fallback is the one place a verifier leaves the exact law, by at most that event's probability; it is
/// reported so that tests can bound it.
pub fn residual_or_fallback<C: Coin + ?Sized>(coin: &mut C, r: &[f64], p: &[f64]) -> (usize, bool) {
    let mass: f64 = r.iter().sum();
    let fallback = !(mass > 0.0 && mass.is_finite());
    (coin.categorical(if fallback { p } else { r }), fallback)
}

/// Inverse-CDF draw from unnormalised weights `w` given a uniform `u` in [0, 1).
///
/// The running sum skips zero weights, so a zero-weight index is never returned. `u * total` can round up
/// to the final running sum (e.g. for subnormal totals), leaving no index with `cum > target`; the last
/// positive-weight index is then the right answer, since it owns the top of the CDF.
pub fn inverse_cdf(w: &[f64], u: f64) -> usize {
    let target = u * w.iter().sum::<f64>();
    let (mut cum, mut last_positive) = (0.0, 0);
    for (i, &wi) in w.iter().enumerate().filter(|(_, &wi)| wi > 0.0) {
        cum += wi;
        last_positive = i;
        if cum > target {
            return i;
        }
    }
    last_positive
}

/// Reproducible coin: xoshiro256++ (Blackman & Vigna) with its 256-bit state seeded from a u64 by
/// splitmix64, the seeding procedure its authors recommend.
#[derive(Clone, Debug)]
pub struct SeededCoin {
    s: [u64; 4],
}

impl SeededCoin {
    /// A coin whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut splitmix64 = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (sm ^ (sm >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self { s: [splitmix64(), splitmix64(), splitmix64(), splitmix64()] }
    }

    /// The next raw 64-bit output of xoshiro256++.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// A uniform on [0, 1) with 53 random bits: every value is a multiple of 2^-53, and 0 is possible.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

impl Coin for SeededCoin {
    fn accept(&mut self, p: f64, q: f64) -> bool {
        self.uniform() * q < p
    }

    fn categorical(&mut self, w: &[f64]) -> usize {
        inverse_cdf(w, self.uniform())
    }
}

/// The most runs [`enumerate_law`] makes before giving up.
pub const MAX_RUNS: usize = 1_000_000;

/// Replays a script of branch choices, then records the first unscripted choice point.
struct ScriptedCoin<'a> {
    script: &'a [usize],
    next: usize,
    /// Product of the probabilities of the scripted branches taken so far.
    path_probability: f64,
    /// Branches with positive probability at the first choice point past the script.
    frontier: Option<Vec<usize>>,
    /// Set when a scripted branch does not exist at its choice point: the run is not deterministic.
    diverged: bool,
}

impl ScriptedCoin<'_> {
    /// Takes the scripted branch among `probs` (branch index -> probability) or, past the script, records the
    /// choice point and returns its first possible branch so that the run can finish harmlessly.
    fn choose(&mut self, probs: impl Iterator<Item = f64>) -> usize {
        let probs: Vec<f64> = probs.collect();
        if let Some(&branch) = self.script.get(self.next) {
            self.next += 1;
            match probs.get(branch) {
                Some(&p) if p > 0.0 => self.path_probability *= p,
                _ => self.diverged = true,
            }
            return branch.min(probs.len().saturating_sub(1)); // a diverged run may name one past the end
        }
        let possible: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
        let first = possible.first().copied().unwrap_or(0);
        self.frontier.get_or_insert(possible);
        first
    }
}

impl Coin for ScriptedCoin<'_> {
    fn accept(&mut self, p: f64, q: f64) -> bool {
        let t = acceptance_probability(p, q);
        self.choose([t, 1.0 - t].into_iter()) == 0 // branch 0 is acceptance, branch 1 rejection
    }

    fn categorical(&mut self, w: &[f64]) -> usize {
        let total: f64 = w.iter().sum();
        self.choose(w.iter().map(|&wi| wi / total)) // branch indices are weight indices
    }
}

/// The exact law of `run`'s output over every possible sequence of coin outcomes.
///
/// Replay-DFS: `run` is called with a coin that replays a prefix of branch choices; at the first choice
/// point past it the coin records the branches with positive probability (accept w.p. min(1, p/q), reject
/// w.p. the rest; categorical index i w.p. w\[i\]/Σw), and the script is extended by each. A run that meets
/// no unscripted choice is a complete path: its output gets the product of the branch probabilities along
/// it. Returns `(output, probability)` sorted by output, equal outputs merged.
///
/// `run` must be deterministic given its coin outcomes. Errors with the first error a run returns, if it
/// is not deterministic (detected when a scripted branch has no probability at replay), or after
/// [`MAX_RUNS`] runs.
pub fn enumerate_law<T: Ord + Clone>(mut run: impl FnMut(&mut dyn Coin) -> Result<T>) -> Result<Vec<(T, f64)>> {
    let mut law: BTreeMap<T, f64> = BTreeMap::new();
    let mut pending: Vec<Vec<usize>> = vec![Vec::new()];
    let mut runs = 0;
    while let Some(script) = pending.pop() {
        runs += 1;
        if runs > MAX_RUNS {
            bail!("exact enumeration needs more than {MAX_RUNS} runs; use a smaller vocabulary or fewer drafts");
        }
        let mut coin =
            ScriptedCoin { script: &script, next: 0, path_probability: 1.0, frontier: None, diverged: false };
        let output = run(&mut coin)?;
        if coin.diverged {
            bail!("exact enumeration failed: the run made different choices when replayed");
        }
        match coin.frontier {
            None => *law.entry(output).or_insert(0.0) += coin.path_probability,
            Some(branches) => pending.extend(branches.into_iter().rev().map(|b| [&script[..], &[b]].concat())),
        }
    }
    Ok(law.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FixedCoin;

    /// The largest uniform a 53-bit generator can return.
    const U_MAX: f64 = 1.0 - f64::EPSILON / 2.0;

    #[test]
    fn splitmix64_seeding_matches_reference_output() {
        // splitmix64 from state 0 first outputs 0xE220A8397B1DCDAF (Vigna's reference implementation).
        let coin = SeededCoin::new(0);
        assert_eq!(coin.s[0], 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn xoshiro256plusplus_matches_reference_outputs() {
        // Outputs from state [1, 2, 3, 4], as in the reference implementation's published vectors.
        let mut coin = SeededCoin { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..4).map(|_| coin.next_u64()).collect();
        assert_eq!(got, [41943041, 58720359, 3588806011781223, 3591011842654386]);
    }

    #[test]
    fn seeded_coin_is_reproducible_and_seed_dependent() {
        let draw = |seed| {
            let mut c = SeededCoin::new(seed);
            (0..8).map(|_| c.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert_ne!(draw(0), draw(u64::MAX));
    }

    #[test]
    fn seeded_uniforms_are_in_range_with_sane_moments() {
        let mut c = SeededCoin::new(42);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| c.uniform()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard error of the mean is ~0.00065; of the variance ~0.0002.
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.002, "variance {var}");
    }

    #[test]
    fn seeded_categorical_frequencies_follow_weights() {
        let mut c = SeededCoin::new(1);
        let w = [1.0, 0.0, 3.0];
        let mut counts = [0usize; 3];
        for _ in 0..40_000 {
            counts[c.categorical(&w)] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = counts[2] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "share {share}");
    }

    #[test]
    fn acceptance_is_strict() {
        assert!(!FixedCoin { u: 0.0 }.accept(0.0, 0.5));
        assert!(FixedCoin { u: 0.0 }.accept(f64::MIN_POSITIVE, 0.5));
        assert!(!FixedCoin { u: 0.5 }.accept(0.25, 0.5));
        assert!(FixedCoin { u: U_MAX }.accept(0.5, 0.5));
        assert!(!FixedCoin { u: 0.0 }.accept(f64::NAN, 1.0));
        assert_eq!(acceptance_probability(0.2, 0.5), 0.4);
        assert_eq!(acceptance_probability(0.7, 0.5), 1.0);
        assert_eq!(acceptance_probability(0.1, 0.0), 1.0);
        assert_eq!(acceptance_probability(0.0, 0.0), 0.0);
    }

    #[test]
    fn inverse_cdf_never_returns_zero_weight_or_out_of_range() {
        let cases: &[&[f64]] = &[
            &[0.0, 0.0, 1e-300],
            &[0.5, 0.5, 0.0],
            &[0.0, 1.0, 0.0, 0.0],
            &[1e-300, 0.0, 0.0],
            &[0.0, 5e-324, 0.0],
            &[0.1, 0.2, 0.3, 0.4, 0.0],
            &[1.0],
        ];
        for w in cases {
            for u in [0.0, 1e-17, 0.25, 0.5, 0.999_999, U_MAX] {
                let i = inverse_cdf(w, u);
                assert!(i < w.len() && w[i] > 0.0, "w={w:?} u={u} gave {i}");
            }
        }
    }

    #[test]
    fn inverse_cdf_rounding_falls_back_to_last_positive() {
        // 0.99 * 5e-324 rounds back up to 5e-324, so no running sum exceeds the target.
        assert_eq!(0.99 * 5e-324, 5e-324);
        assert_eq!(inverse_cdf(&[0.0, 5e-324, 0.0], 0.99), 1);
    }

    #[test]
    fn inverse_cdf_boundaries() {
        let w = [0.25, 0.25, 0.5];
        assert_eq!(inverse_cdf(&w, 0.0), 0);
        assert_eq!(inverse_cdf(&w, 0.25), 1); // target 0.25 is not below cum 0.25
        assert_eq!(inverse_cdf(&w, 0.499), 1);
        assert_eq!(inverse_cdf(&w, 0.5), 2);
        assert_eq!(inverse_cdf(&w, U_MAX), 2);
    }

    #[test]
    fn enumerate_law_of_simple_programs() {
        let law = enumerate_law(|c| Ok((c.accept(0.25, 1.0), c.categorical(&[1.0, 0.0, 3.0])))).expect("small program");
        let expect =
            [((false, 0), 0.75 * 0.25), ((false, 2), 0.75 * 0.75), ((true, 0), 0.25 * 0.25), ((true, 2), 0.25 * 0.75)];
        assert_eq!(law.len(), expect.len());
        for ((out, p), (want, q)) in law.iter().zip(expect) {
            assert_eq!(*out, want);
            assert!((p - q).abs() < 1e-15);
        }
        // Choices depending on earlier outcomes; degenerate Bernoulli branches are never explored.
        let law = enumerate_law(|c| {
            Ok(if c.accept(2.0, 1.0) { c.categorical(&[0.5, 0.5]) + 10 * usize::from(c.accept(-1.0, 1.0)) } else { 99 })
        })
        .expect("small program");
        assert_eq!(law, vec![(0, 0.5), (1, 0.5)]);
    }

    #[test]
    fn enumerate_law_with_no_choices_is_a_point_mass() {
        assert_eq!(enumerate_law(|_| Ok(5u8)).expect("trivial"), vec![(5, 1.0)]);
    }

    #[test]
    fn enumerate_law_bounds_its_work() {
        // 2^21 paths exceed MAX_RUNS.
        let err = enumerate_law(|c| Ok((0..21).map(|_| c.accept(0.5, 1.0)).collect::<Vec<_>>()));
        assert!(err.unwrap_err().0.contains("more than 1000000 runs"));
        // A run's own error ends the enumeration.
        let err = enumerate_law(|c| match c.categorical(&[1.0, 1.0]) {
            1 => Err(crate::error::Error("bad row".into())),
            x => Ok(x),
        });
        assert_eq!(err.unwrap_err().0, "bad row");
    }

    #[test]
    fn enumerate_law_rejects_nondeterministic_runs() {
        let mut calls = 0usize;
        let err = enumerate_law(|c| {
            calls += 1;
            // The second run sees a different choice point than the one recorded by the first.
            let w: &[f64] = if calls == 1 { &[1.0, 1.0] } else { &[1.0, 0.0] };
            Ok(c.categorical(w))
        });
        assert!(err.unwrap_err().0.contains("different choices"));
    }
}
