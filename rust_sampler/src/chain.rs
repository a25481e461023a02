//! Chain speculative sampling (SpS): verification of one drafted chain against the target.
//!
//! Modified rejection sampling (Leviathan et al. 2023, arXiv 2211.17192, Algorithm 1; Chen et al. 2023,
//! arXiv 2302.01318, Algorithm 2). The draft proposed x_1..x_G with x_i ~ q_i; one target forward gave
//! rows p_1..p_{G+1}, where p_i is the law of token i given the prefix and x_<i. For i = 1..G:
//!
//! * accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), by the strict test `u·q < p`, so a token
//!   with p_i(x_i) = 0 is never accepted;
//! * on the first rejection emit y ~ norm((p_i − q_i)+) with fresh randomness and stop.
//!
//! If all G drafts are accepted, emit a bonus y ~ p_{G+1}. Then P(out = y) = min(p, q)(y) + (p − q)+(y)
//! = p(y) at every position, so the emitted tokens have exactly the target's law. A residual that is
//! all zero or not finite (p == q up to rounding) falls back to p_i; this costs at most the probability
//! of that event in total variation, and it is reported so tests can assert it does not happen.
//!
//! A chain is a tree whose nodes each have one i.i.d.-sampled child, so [`verify`] runs the tree walk of
//! [`crate::tree`]: one node procedure for both. This module keeps what the tree verifier shares with it
//! (the [`ProbTable`] trait, row validation, the [`Flaw`] switch) and the chain's own input checks.
//!
//! All arithmetic is in f64 whatever the input precision.

use std::str::FromStr;

use crate::coin::{enumerate_law, Coin};
use crate::error::{Index, SamplerError};
use crate::tree::{self, Rows, Tree};

/// The largest accepted |Σ row − 1| for p and q rows. Loose enough for float32 softmax over a large
/// vocabulary, tight enough to catch unnormalised inputs (masked logits, forgotten softmax).
pub const NORM_TOLERANCE: f64 = 1e-4;

/// A read-only table of probabilities (one distribution per row) whose entries widen to f64.
///
/// Implemented for slices and vectors of rows here and for strided NumPy views in the Python glue, so
/// the verifier reads caller memory in place.
pub trait ProbTable {
    /// Number of rows.
    fn rows(&self) -> usize;
    /// Number of entries in row `i` (the vocabulary size, once validated).
    fn row_len(&self, i: usize) -> usize;
    /// Entry `(i, j)`; may panic out of bounds, which validation rules out.
    fn prob(&self, i: usize, j: usize) -> f64;
}

impl<T: Copy + Into<f64>> ProbTable for [Vec<T>] {
    fn rows(&self) -> usize {
        self.len()
    }

    fn row_len(&self, i: usize) -> usize {
        self[i].len()
    }

    fn prob(&self, i: usize, j: usize) -> f64 {
        self[i][j].into()
    }
}

impl<T: Copy + Into<f64>> ProbTable for Vec<Vec<T>> {
    fn rows(&self) -> usize {
        self.as_slice().rows()
    }

    fn row_len(&self, i: usize) -> usize {
        self.as_slice().row_len(i)
    }

    fn prob(&self, i: usize, j: usize) -> f64 {
        self.as_slice().prob(i, j)
    }
}

/// A known bug that the verifier can re-inject, so that tests can prove they detect it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flaw {
    /// The correct verifier; production always uses this.
    #[default]
    None,
    /// Accept with `u·q <= p` instead of `u·q < p`, so u = 0 accepts a token with p(x) = 0.
    NonStrict,
    /// Draw the bonus from row G − 1 instead of row G (in a tree: from the leaf's parent's row).
    BonusRowOff,
    /// Verify `Deterministic` (top-k) children with the ratio test against q\[node\], as if they were
    /// i.i.d. draws: the SpecInfer rule on a top-k tree.
    TopkWithRatio,
    /// Try sampled children in descending q order instead of draw order.
    SortedSiblings,
    /// Verify `WithoutReplacement` children with q_j = q\[node\], not zeroed and renormalised.
    NoRenorm,
    /// Reject a duplicate `IidSampled` sibling without applying r <- norm((r − q)+).
    SkipDupUpdate,
}

/// The names [`Flaw`]'s `FromStr` accepts, in declaration order after `None`.
pub const FLAW_NAMES: [&str; 6] = [
    "non_strict",
    "bonus_row_off",
    "topk_with_ratio",
    "sorted_siblings",
    "no_renorm",
    "skip_dup_update",
];

impl FromStr for Flaw {
    type Err = SamplerError;

    fn from_str(name: &str) -> Result<Self, SamplerError> {
        match name {
            "non_strict" => Ok(Self::NonStrict),
            "bonus_row_off" => Ok(Self::BonusRowOff),
            "topk_with_ratio" => Ok(Self::TopkWithRatio),
            "sorted_siblings" => Ok(Self::SortedSiblings),
            "no_renorm" => Ok(Self::NoRenorm),
            "skip_dup_update" => Ok(Self::SkipDupUpdate),
            _ => Err(SamplerError::UnknownFlaw(name.to_owned())),
        }
    }
}

/// What verifying one chain emits: drafts x_1..x_accepted, then `token`.
///
/// Ordered by (accepted, token, fallback), the order in which exact laws are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Outcome {
    /// How many leading drafts were accepted, 0..=G.
    pub accepted: usize,
    /// The token emitted after them: a correction if `accepted < G`, else the bonus.
    pub token: usize,
    /// The residual was degenerate and `token` was drawn from the raw target row instead.
    pub fallback: bool,
}

/// Verifies one chain: `p` has G+1 rows, `q` and `draft` have G, all validated by [`check_row`].
///
/// Runs the tree walk on the path root -> x_1 -> … -> x_G, every node `IidSampled`: per position one
/// Bernoulli (accept iff u·q_i(x_i) < p_i(x_i)), then one categorical for the correction or bonus, so the
/// output law under [`enumerate_law`] is exact and a seeded coin reproduces its stream.
///
/// # Panics
/// If a draft token is not a column index of `p` and `q`, which [`check_row`] rules out.
pub fn verify<P, Q, C>(p: &P, q: &Q, draft: &[usize], coin: &mut C, flaw: Flaw) -> Outcome
where
    P: ProbTable + ?Sized,
    Q: ProbTable + ?Sized,
    C: Coin + ?Sized,
{
    let mut rows = Rows::validated(p, Some(q));
    let walked = tree::verify(&Tree::chain(draft), &mut rows, coin, flaw)
        .expect("validated rows raise no error");
    Outcome {
        accepted: walked.path.len() - 1,
        token: walked.token,
        fallback: walked.fallback,
    }
}

/// Validates every row of a batch, then verifies the rows in order with one coin.
///
/// Nothing is drawn unless the whole batch is valid.
pub fn verify_batch<P, Q, D, C>(
    p: &[P],
    q: &[Q],
    draft: &[D],
    coin: &mut C,
    flaw: Flaw,
) -> Result<Vec<Outcome>, SamplerError>
where
    P: ProbTable,
    Q: ProbTable,
    D: AsRef<[i64]>,
    C: Coin + ?Sized,
{
    if p.is_empty() {
        return Err(SamplerError::Empty {
            arg: "p",
            axis: "batch",
        });
    }
    for (arg, len) in [("q", q.len()), ("draft_tokens", draft.len())] {
        if len != p.len() {
            return Err(SamplerError::Shape {
                arg,
                detail: format!("batch size {len} differs from p's {}", p.len()),
            });
        }
    }
    let tokens = p
        .iter()
        .zip(q)
        .zip(draft)
        .enumerate()
        .map(|(b, ((p, q), d))| check_row(p, q, d.as_ref(), Some(b)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(p.iter()
        .zip(q)
        .zip(&tokens)
        .map(|((p, q), x)| verify(p, q, x, coin, flaw))
        .collect())
}

/// The exact output law of [`verify`] for one validated row: every [`Outcome`] with its probability,
/// sorted, probabilities summing to 1 up to rounding.
pub fn exact_law<P, Q>(
    p: &P,
    q: &Q,
    draft: &[i64],
    flaw: Flaw,
) -> Result<Vec<(Outcome, f64)>, SamplerError>
where
    P: ProbTable + ?Sized,
    Q: ProbTable + ?Sized,
{
    let tokens = check_row(p, q, draft, None)?;
    enumerate_law(|coin| verify(p, q, &tokens, coin, flaw))
}

/// Checks array shapes: p (B, G+1, V), q (B, G, V), draft (B, G) if `batched`, else without the B axis.
///
/// B and V must be positive; G may be 0.
pub fn check_shapes(
    batched: bool,
    p: &[usize],
    q: &[usize],
    draft: &[usize],
) -> Result<(), SamplerError> {
    let lead = usize::from(batched);
    for (arg, shape, ndim) in [
        ("p", p, 2 + lead),
        ("q", q, 2 + lead),
        ("draft_tokens", draft, 1 + lead),
    ] {
        if shape.len() != ndim {
            return Err(SamplerError::Ndim {
                arg,
                expected: ndim,
                got: shape.len(),
            });
        }
    }
    // Lengths are checked above, so these indices exist.
    let (batch, rows, vocab, g) = (&p[..lead], p[lead], p[lead + 1], draft[lead]);
    if batch.contains(&0) {
        return Err(SamplerError::Empty {
            arg: "p",
            axis: "batch",
        });
    }
    if vocab == 0 {
        return Err(SamplerError::Empty {
            arg: "p",
            axis: "vocabulary",
        });
    }
    let context = || format!("p {}, draft_tokens {}", tuple(p), tuple(draft));
    if draft[..lead] != *batch {
        return Err(SamplerError::Shape {
            arg: "draft_tokens",
            detail: format!("its batch size differs from p's ({})", context()),
        });
    }
    if rows != g + 1 {
        return Err(SamplerError::Shape {
            arg: "p",
            detail: format!(
                "{rows} rows per sequence, but G = {g} draft tokens need G+1 = {} ({})",
                g + 1,
                context()
            ),
        });
    }
    let want_q: Vec<usize> = batch.iter().copied().chain([g, vocab]).collect();
    if q != want_q {
        let axes = if batched { "(B, G, V)" } else { "(G, V)" };
        return Err(SamplerError::Shape {
            arg: "q",
            detail: format!(
                "{}, expected {axes} = {} ({})",
                tuple(q),
                tuple(&want_q),
                context()
            ),
        });
    }
    Ok(())
}

/// A shape as Python prints it: `(2, 3)`, `(3,)`.
pub(crate) fn tuple(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("{:?}", shape).replace('[', "(").replace(']', ")"),
    }
}

/// Validates one chain and returns its draft tokens as indices.
///
/// Checks that p has G+1 rows and q has G rows of the same width V > 0; that every entry is finite and
/// non-negative and every row sums to 1 within [`NORM_TOLERANCE`]; and that each draft token x_i is in
/// [0, V) with q_i(x_i) > 0. `batch` only labels positions in error messages.
pub fn check_row<P, Q>(
    p: &P,
    q: &Q,
    draft: &[i64],
    batch: Option<usize>,
) -> Result<Vec<usize>, SamplerError>
where
    P: ProbTable + ?Sized,
    Q: ProbTable + ?Sized,
{
    let at = |idx: &[usize]| Index(batch.into_iter().chain(idx.iter().copied()).collect());
    let g = draft.len();
    for (arg, rows, want) in [("p", p.rows(), g + 1), ("q", q.rows(), g)] {
        if rows != want {
            return Err(SamplerError::Shape {
                arg,
                detail: format!(
                    "{arg}{} has {rows} rows, expected {want} for G = {g}",
                    at(&[])
                ),
            });
        }
    }
    let vocab = p.row_len(0);
    if vocab == 0 {
        return Err(SamplerError::Empty {
            arg: "p",
            axis: "vocabulary",
        });
    }
    check_rows("p", p, vocab, &at)?;
    check_rows("q", q, vocab, &at)?;
    draft
        .iter()
        .enumerate()
        .map(|(i, &token)| {
            let x = usize::try_from(token).ok().filter(|&x| x < vocab).ok_or(
                SamplerError::TokenOutOfRange {
                    arg: "draft_tokens",
                    at: at(&[i]),
                    token,
                    vocab,
                },
            )?;
            if q.prob(i, x) == 0.0 {
                return Err(SamplerError::ZeroDraftProbability {
                    at: at(&[i]),
                    token: x,
                });
            }
            Ok(x)
        })
        .collect()
}

/// Checks that every row of `t` is a probability vector of length `vocab`.
fn check_rows<T: ProbTable + ?Sized>(
    arg: &'static str,
    t: &T,
    vocab: usize,
    at: &impl Fn(&[usize]) -> Index,
) -> Result<(), SamplerError> {
    (0..t.rows()).try_for_each(|i| check_prob_row(arg, t, i, vocab, at))
}

/// Checks that row `i` of `t` has `vocab` entries, all finite and non-negative, summing to 1 within
/// [`NORM_TOLERANCE`]. `at` turns an index into the table into the position reported in errors.
pub(crate) fn check_prob_row<T: ProbTable + ?Sized>(
    arg: &'static str,
    t: &T,
    i: usize,
    vocab: usize,
    at: &impl Fn(&[usize]) -> Index,
) -> Result<(), SamplerError> {
    let len = t.row_len(i);
    if len != vocab {
        return Err(SamplerError::Shape {
            arg,
            detail: format!(
                "row {arg}{} has {len} entries, expected V = {vocab}",
                at(&[i])
            ),
        });
    }
    let mut sum = 0.0;
    for j in 0..len {
        let value = t.prob(i, j);
        if !value.is_finite() {
            return Err(SamplerError::NonFinite {
                arg,
                at: at(&[i, j]),
                value,
            });
        }
        if value < 0.0 {
            return Err(SamplerError::Negative {
                arg,
                at: at(&[i, j]),
                value,
            });
        }
        sum += value;
    }
    if (sum - 1.0).abs() > NORM_TOLERANCE {
        return Err(SamplerError::NotNormalized {
            arg,
            at: at(&[i]),
            sum,
            tolerance: NORM_TOLERANCE,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coin::{FixedCoin, SeededCoin};

    type Table = Vec<Vec<f64>>;

    const U_MAX: f64 = 1.0 - f64::EPSILON / 2.0;

    fn out(accepted: usize, token: usize) -> Outcome {
        Outcome {
            accepted,
            token,
            fallback: false,
        }
    }

    fn law(p: &Table, q: &Table, draft: &[i64], flaw: Flaw) -> Vec<(Outcome, f64)> {
        exact_law(p, q, draft, flaw).expect("valid chain")
    }

    /// Outcome under a spread of fixed uniforms and seeds, for cases whose outcome is certain.
    fn all_outcomes(p: &Table, q: &Table, draft: &[usize], flaw: Flaw) -> Vec<Outcome> {
        let mut outs: Vec<Outcome> = [0.0, 0.3, 0.7, U_MAX]
            .iter()
            .map(|&u| verify(p, q, draft, &mut FixedCoin { u }, flaw))
            .chain((0..100).map(|s| verify(p, q, draft, &mut SeededCoin::new(s), flaw)))
            .collect();
        outs.sort();
        outs.dedup();
        outs
    }

    #[test]
    fn two_accepted_then_certain_rejection_and_forced_residual() {
        // Rows 0 and 1: p == q, ratio 1, certain accept. Row 2: p(x_3 = 1) = 0, certain rejection,
        // and (p − q)+ = [0, 0, 0, 0.5] is one-hot on token 3.
        let p = vec![
            vec![0.25, 0.25, 0.25, 0.25],
            vec![0.1, 0.2, 0.3, 0.4],
            vec![0.0, 0.0, 0.5, 0.5],
            vec![1.0, 0.0, 0.0, 0.0],
        ];
        let q = vec![
            vec![0.25, 0.25, 0.25, 0.25],
            vec![0.1, 0.2, 0.3, 0.4],
            vec![0.0, 0.5, 0.5, 0.0],
        ];
        assert_eq!(
            all_outcomes(&p, &q, &[2, 0, 1], Flaw::None),
            vec![out(2, 3)]
        );
        assert_eq!(law(&p, &q, &[2, 0, 1], Flaw::None), vec![(out(2, 3), 1.0)]);
    }

    #[test]
    fn zero_target_probability_rejects_even_at_u_zero() {
        let p = vec![vec![0.0, 1.0], vec![0.5, 0.5]];
        let q = vec![vec![0.5, 0.5]];
        let mut coin = FixedCoin { u: 0.0 };
        assert_eq!(verify(&p, &q, &[0], &mut coin, Flaw::None), out(0, 1));
        // The `<=` bug accepts, and its exact law puts mass 2^-53 on the forbidden token.
        assert_eq!(verify(&p, &q, &[0], &mut coin, Flaw::NonStrict), out(1, 0));
        assert_eq!(law(&p, &q, &[0], Flaw::None), vec![(out(0, 1), 1.0)]);
        let buggy = law(&p, &q, &[0], Flaw::NonStrict);
        let tiny = f64::EPSILON / 2.0;
        assert_eq!(buggy.len(), 3);
        assert_eq!(buggy[0], (out(0, 1), 1.0 - tiny));
        assert_eq!(buggy[1].0, out(1, 0));
        assert!((buggy[1].1 - tiny * 0.5).abs() < 1e-30);
    }

    #[test]
    fn bonus_comes_from_row_g() {
        // p == q on the drafts; row 1 is one-hot on the draft token, row 2 (the bonus row) on token 2.
        let p = vec![
            vec![0.5, 0.5, 0.0],
            vec![1.0, 0.0, 0.0],
            vec![0.0, 0.0, 1.0],
        ];
        let q = vec![vec![0.5, 0.5, 0.0], vec![1.0, 0.0, 0.0]];
        assert_eq!(all_outcomes(&p, &q, &[1, 0], Flaw::None), vec![out(2, 2)]);
        assert_eq!(
            all_outcomes(&p, &q, &[1, 0], Flaw::BonusRowOff),
            vec![out(2, 0)]
        );
    }

    #[test]
    fn full_accept_draws_the_bonus_from_the_last_row() {
        let p = vec![vec![0.5, 0.5], vec![0.2, 0.8]];
        let q = vec![vec![0.5, 0.5]];
        assert_eq!(
            law(&p, &q, &[0], Flaw::None),
            vec![(out(1, 0), 0.2), (out(1, 1), 0.8)]
        );
    }

    #[test]
    fn no_drafts_samples_row_zero() {
        let p = vec![vec![0.25, 0.0, 0.75]];
        let q = Table::new();
        assert_eq!(
            law(&p, &q, &[], Flaw::None),
            vec![(out(0, 0), 0.25), (out(0, 2), 0.75)]
        );
        // The flaw has no row G−1 to move to.
        assert_eq!(
            law(&p, &q, &[], Flaw::BonusRowOff),
            law(&p, &q, &[], Flaw::None)
        );
    }

    #[test]
    fn degenerate_residual_falls_back_to_p_and_says_so() {
        // Σp = 1 − 1e-5 is within tolerance; p(x = 1) < q(x) and p ≤ q everywhere, so (p − q)+ = 0.
        let p = vec![vec![0.5, 0.5 - 1e-5], vec![1.0, 0.0]];
        let q = vec![vec![0.5, 0.5]];
        let rejected = verify(&p, &q, &[1], &mut FixedCoin { u: 0.999_99 }, Flaw::None);
        assert_eq!((rejected.accepted, rejected.fallback), (0, true));
        let law = law(&p, &q, &[1], Flaw::None);
        let fallback: f64 = law.iter().filter(|(o, _)| o.fallback).map(|(_, w)| w).sum();
        assert!((fallback - 2e-5).abs() < 1e-12, "P(fallback) = {fallback}");
        assert!(law.iter().all(|(o, _)| o.fallback == (o.accepted == 0)));
    }

    /// Random probability rows with small integer weights, zeros included.
    fn random_rows(coin: &mut SeededCoin, rows: usize, vocab: usize) -> Table {
        (0..rows)
            .map(|_| loop {
                let w: Vec<f64> = (0..vocab).map(|_| (coin.next_u64() % 5) as f64).collect();
                let total: f64 = w.iter().sum();
                if total > 0.0 {
                    break w.iter().map(|x| x / total).collect();
                }
            })
            .collect()
    }

    /// Drafts x_i ~ q_i inside the enumeration, verifies, then completes the emitted tokens to G+1
    /// positions by sampling p's rows: with position-indexed (context-free) toy rows the result must
    /// have the law p_0 ⊗ … ⊗ p_G exactly.
    fn decoded_law(p: &Table, q: &Table, flaw: Flaw) -> Vec<(Vec<usize>, f64)> {
        enumerate_law(|coin| {
            let draft: Vec<usize> = q.iter().map(|row| coin.categorical(row)).collect();
            let o = verify(p, q, &draft, coin, flaw);
            let mut seq = draft[..o.accepted].to_vec();
            seq.push(o.token);
            while seq.len() < p.len() {
                seq.push(coin.categorical(&p[seq.len()]));
            }
            seq
        })
        .expect("small model")
    }

    fn product_law(p: &Table) -> Vec<(Vec<usize>, f64)> {
        let mut law = vec![(Vec::new(), 1.0)];
        for row in p {
            law = law
                .into_iter()
                .flat_map(|(seq, w)| {
                    row.iter()
                        .enumerate()
                        .filter(|(_, &r)| r > 0.0)
                        .map(move |(y, &r)| {
                            let mut longer = seq.clone();
                            longer.push(y);
                            (longer, w * r)
                        })
                })
                .collect();
        }
        law.sort_by(|a, b| a.0.cmp(&b.0));
        law
    }

    fn tv(a: &[(Vec<usize>, f64)], b: &[(Vec<usize>, f64)]) -> f64 {
        let mut all: std::collections::BTreeMap<&Vec<usize>, (f64, f64)> = Default::default();
        for (k, w) in a {
            all.entry(k).or_default().0 += w;
        }
        for (k, w) in b {
            all.entry(k).or_default().1 += w;
        }
        all.values().map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
    }

    #[test]
    fn decoded_tokens_have_the_target_law_exactly() {
        let mut rng = SeededCoin::new(2023);
        for case in 0..60 {
            let (g, vocab) = (1 + case % 3, 2 + case % 3);
            let p = random_rows(&mut rng, g + 1, vocab);
            let q = random_rows(&mut rng, g, vocab);
            let got = decoded_law(&p, &q, Flaw::None);
            let want = product_law(&p);
            assert!(tv(&got, &want) < 1e-12, "case {case}: p={p:?} q={q:?}");
            assert_eq!(got.len(), want.len(), "support differs in case {case}");
        }
    }

    #[test]
    fn bonus_row_flaw_is_detected_by_the_exact_law() {
        let p = vec![vec![0.5, 0.5], vec![0.9, 0.1], vec![0.3, 0.7]];
        let q = vec![vec![0.5, 0.5], vec![0.5, 0.5]];
        assert!(tv(&decoded_law(&p, &q, Flaw::None), &product_law(&p)) < 1e-12);
        assert!(tv(&decoded_law(&p, &q, Flaw::BonusRowOff), &product_law(&p)) > 0.05);
    }

    /// P(outcome) per (accepted, first emitted token) with x ~ q drawn inside the enumeration.
    fn first_token_parts(p: &Table, q: &Table) -> Vec<((usize, usize), f64)> {
        enumerate_law(|coin| {
            let x = coin.categorical(&q[0]);
            let o = verify(p, q, &[x], coin, Flaw::None);
            (o.accepted, if o.accepted == 1 { x } else { o.token })
        })
        .expect("small model")
    }

    #[test]
    fn component_identities_for_one_draft() {
        let cases: Vec<(Vec<f64>, Vec<f64>)> = vec![
            (vec![0.6, 0.4], vec![0.8, 0.2]),
            (vec![0.2, 0.3, 0.5], vec![0.5, 0.5, 0.0]),
            (vec![0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0]),
            (vec![0.25, 0.25, 0.5], vec![0.25, 0.25, 0.5]),
            (vec![0.1, 0.0, 0.9], vec![0.0, 1.0, 0.0]),
            (vec![0.7, 0.1, 0.1, 0.1], vec![0.1, 0.1, 0.1, 0.7]),
        ];
        for (p0, q0) in cases {
            let p = vec![p0.clone(), vec![1.0 / p0.len() as f64; p0.len()]];
            let q = vec![q0.clone()];
            let parts = first_token_parts(&p, &q);
            for y in 0..p0.len() {
                let part = |acc| {
                    parts
                        .iter()
                        .filter(|((a, t), _)| *a == acc && *t == y)
                        .map(|(_, w)| w)
                        .sum::<f64>()
                };
                let (accept, reject) = (part(1), part(0));
                assert!(
                    (accept - p0[y].min(q0[y])).abs() < 1e-12,
                    "P(accept, {y}) p={p0:?} q={q0:?}"
                );
                assert!(
                    (reject - (p0[y] - q0[y]).max(0.0)).abs() < 1e-12,
                    "P(reject, {y})"
                );
                assert!((accept + reject - p0[y]).abs() < 1e-12, "P(first = {y})");
            }
        }
    }

    #[test]
    fn validation_refuses_malformed_rows() {
        let p = || vec![vec![0.5, 0.5], vec![0.5, 0.5]];
        let q = || vec![vec![0.5, 0.5]];
        let err = |p: Table, q: Table, d: &[i64]| check_row(&p, &q, d, Some(3)).unwrap_err();
        assert!(check_row(&p(), &q(), &[1], None).is_ok());

        let e = err(p(), q(), &[]);
        assert!(matches!(e, SamplerError::Shape { arg: "p", .. }), "{e}");
        let e = err(p(), vec![], &[0]);
        assert!(matches!(e, SamplerError::Shape { arg: "q", .. }), "{e}");
        let e = err(vec![vec![], vec![]], vec![vec![]], &[0]);
        assert!(
            matches!(
                e,
                SamplerError::Empty {
                    axis: "vocabulary",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(p(), vec![vec![0.5, 0.25, 0.25]], &[0]);
        assert!(matches!(e, SamplerError::Shape { arg: "q", .. }), "{e}");
        let e = err(vec![vec![0.5, f64::NAN], vec![0.5, 0.5]], q(), &[0]);
        assert_eq!(
            e.to_string(),
            "p[3, 0, 1] is NaN; probabilities must be finite"
        );
        let e = err(p(), vec![vec![f64::INFINITY, 0.0]], &[0]);
        assert!(matches!(e, SamplerError::NonFinite { arg: "q", .. }), "{e}");
        let e = err(vec![vec![0.5, 0.5], vec![1.5, -0.5]], q(), &[0]);
        assert!(matches!(e, SamplerError::Negative { arg: "p", .. }), "{e}");
        let e = err(p(), vec![vec![0.5, 0.6]], &[0]);
        assert!(
            matches!(e, SamplerError::NotNormalized { arg: "q", .. }),
            "{e}"
        );
        assert!(e.to_string().starts_with("q[3, 0] sums to 1.1"), "{e}");
        // Within tolerance passes, beyond it fails.
        assert!(check_row(&p(), &vec![vec![0.5, 0.5 + 0.9e-4]], &[0], None).is_ok());
        let e = err(p(), vec![vec![0.5, 0.5 + 1.1e-4]], &[0]);
        assert!(matches!(e, SamplerError::NotNormalized { .. }), "{e}");
        let e = err(p(), q(), &[2]);
        assert_eq!(
            e.to_string(),
            "draft_tokens[3, 0] is 2, outside the vocabulary [0, 2)"
        );
        let e = err(p(), q(), &[-1]);
        assert!(
            matches!(e, SamplerError::TokenOutOfRange { token: -1, .. }),
            "{e}"
        );
        let e = err(p(), vec![vec![1.0, 0.0]], &[1]);
        assert!(
            matches!(e, SamplerError::ZeroDraftProbability { token: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("zero probability under q"), "{e}");
    }

    #[test]
    fn validation_refuses_malformed_shapes() {
        assert_eq!(check_shapes(true, &[2, 4, 5], &[2, 3, 5], &[2, 3]), Ok(()));
        assert_eq!(check_shapes(true, &[2, 1, 5], &[2, 0, 5], &[2, 0]), Ok(()));
        assert_eq!(check_shapes(false, &[4, 5], &[3, 5], &[3]), Ok(()));
        let shape_err =
            |b, p: &[usize], q: &[usize], d: &[usize]| check_shapes(b, p, q, d).unwrap_err();
        let e = shape_err(true, &[4, 5], &[3, 5], &[3]);
        assert_eq!(e.to_string(), "p must have 3 dimensions, got 2");
        let e = shape_err(false, &[4, 5], &[3, 5], &[1, 3]);
        assert!(matches!(
            e,
            SamplerError::Ndim {
                arg: "draft_tokens",
                expected: 1,
                got: 2
            }
        ));
        let e = shape_err(true, &[0, 4, 5], &[0, 3, 5], &[0, 3]);
        assert!(matches!(e, SamplerError::Empty { axis: "batch", .. }));
        let e = shape_err(true, &[2, 4, 0], &[2, 3, 0], &[2, 3]);
        assert!(matches!(
            e,
            SamplerError::Empty {
                axis: "vocabulary",
                ..
            }
        ));
        let e = shape_err(true, &[2, 4, 5], &[2, 3, 5], &[1, 3]);
        assert!(
            matches!(
                e,
                SamplerError::Shape {
                    arg: "draft_tokens",
                    ..
                }
            ),
            "{e}"
        );
        let e = shape_err(true, &[2, 3, 5], &[2, 3, 5], &[2, 3]);
        assert!(matches!(e, SamplerError::Shape { arg: "p", .. }), "{e}");
        for q in [[1, 3, 5], [2, 2, 5], [2, 3, 4]] {
            let e = shape_err(true, &[2, 4, 5], &q, &[2, 3]);
            assert!(matches!(e, SamplerError::Shape { arg: "q", .. }), "{e}");
        }
        // q must keep p's vocabulary even when it has no rows.
        let e = shape_err(true, &[2, 1, 5], &[2, 0, 4], &[2, 0]);
        assert!(matches!(e, SamplerError::Shape { arg: "q", .. }), "{e}");
    }

    #[test]
    fn batches_are_validated_whole_before_any_draw() {
        let good_p = vec![vec![0.5f32, 0.5], vec![0.25, 0.75]];
        let good_q = vec![vec![0.5f32, 0.5]];
        let mut coin = SeededCoin::new(9);
        let before = coin.clone().next_u64();
        // The bad row is last; nothing may have been drawn when it is refused.
        let e = verify_batch(
            &[good_p.clone(), good_p.clone()],
            &[good_q.clone(), vec![vec![1.0, 0.0]]],
            &[[0i64], [1]],
            &mut coin,
            Flaw::None,
        )
        .unwrap_err();
        assert!(matches!(e, SamplerError::ZeroDraftProbability { ref at, .. } if at.0 == [1, 0]));
        assert_eq!(coin.next_u64(), before);

        let e = verify_batch(
            std::slice::from_ref(&good_p),
            &[good_q.clone(), good_q.clone()],
            &[[0i64]],
            &mut coin,
            Flaw::None,
        );
        assert!(matches!(e, Err(SamplerError::Shape { arg: "q", .. })));
        let e = verify_batch::<Table, Table, [i64; 0], _>(&[], &[], &[], &mut coin, Flaw::None);
        assert!(matches!(e, Err(SamplerError::Empty { axis: "batch", .. })));

        let outs = verify_batch(
            &vec![good_p; 3],
            &vec![good_q; 3],
            &[[1i64]; 3],
            &mut coin,
            Flaw::None,
        )
        .expect("valid batch");
        assert!(outs
            .iter()
            .all(|o| o.accepted == 1 && o.token < 2 && !o.fallback));
    }

    #[test]
    fn batch_matches_rowwise_verification_with_one_coin() {
        let mut rng = SeededCoin::new(5);
        let ps: Vec<Table> = (0..20).map(|_| random_rows(&mut rng, 3, 4)).collect();
        let qs: Vec<Table> = (0..20).map(|_| random_rows(&mut rng, 2, 4)).collect();
        let drafts: Vec<Vec<i64>> = qs
            .iter()
            .map(|q| q.iter().map(|row| rng.categorical(row) as i64).collect())
            .collect();
        let batched =
            verify_batch(&ps, &qs, &drafts, &mut SeededCoin::new(77), Flaw::None).expect("valid");
        let mut coin = SeededCoin::new(77);
        for (b, o) in batched.iter().enumerate() {
            let x: Vec<usize> = drafts[b].iter().map(|&t| t as usize).collect();
            assert_eq!(*o, verify(&ps[b], &qs[b], &x, &mut coin, Flaw::None));
        }
    }

    #[test]
    fn flaw_names_parse() {
        assert_eq!("non_strict".parse(), Ok(Flaw::NonStrict));
        assert_eq!("bonus_row_off".parse(), Ok(Flaw::BonusRowOff));
        for name in FLAW_NAMES {
            assert_eq!(name.parse::<Flaw>().map(|f| f != Flaw::None), Ok(true));
        }
        let e = "none".parse::<Flaw>().unwrap_err();
        assert_eq!(e, SamplerError::UnknownFlaw("none".into()));
        assert!(
            e.to_string()
                .contains(r#""topk_with_ratio", "sorted_siblings""#),
            "{e}"
        );
    }
}
