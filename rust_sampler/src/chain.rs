//! Chain speculative sampling (SpS): verify one drafted chain against the target, README steps 3-5.
//!
//! Modified rejection sampling (Leviathan et al. 2023, arXiv 2211.17192, Algorithm 1; Chen et al. 2023,
//! arXiv 2302.01318, Algorithm 2). The draft proposed x_1..x_G with x_i ~ q_i; one target forward gave rows
//! p_1..p_{G+1}, p_i the law of token i given the prefix and x_<i. All arithmetic is in f64.

use crate::check::{check_chain, Probs};
use crate::coin::{residual_or_fallback, Coin};
use crate::error::Result;

/// What verifying one chain emits: drafts x_1..x_accepted, then `token`.
///
/// Ordered by (accepted, token, fallback), the order in which exact laws are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainOutcome {
    /// How many leading drafts were accepted, 0..=G.
    pub accepted: usize,
    /// The token emitted after them: the correction if `accepted < G`, else the bonus.
    pub token: usize,
    /// The residual had no mass (p == q up to rounding) and `token` was drawn from p_i instead.
    pub fallback: bool,
}

/// Verifies one chain (validated by [`check_chain`]): p has G+1 rows, q has G, `draft` holds x_1..x_G.
///
/// ```text
/// for i = 1..G:   accept x_i iff u_i · q_i(x_i) < p_i(x_i), u_i ~ U[0, 1) fresh      (step 3)
///                 at the first rejection emit y ~ norm((p_i − q_i)+) and stop          (step 4)
/// all accepted:   emit the bonus y ~ p_{G+1}                                           (step 5)
/// ```
///
/// P(emit y at position i) = min(p_i, q_i)(y) + (p_i − q_i)+(y) = p_i(y): the emitted tokens are distributed
/// exactly as sampling from the target, whatever the draft (Leviathan et al. 2023, Theorem 1).
pub fn verify_chain<C: Coin + ?Sized>(p: Probs, q: Probs, draft: &[usize], coin: &mut C) -> ChainOutcome {
    for (i, &x) in draft.iter().enumerate() {
        let (p_i, q_i) = (p.row(i), q.row(i));
        if coin.accept(p_i[x], q_i[x]) {
            continue;
        }
        let residual: Vec<f64> = p_i.iter().zip(q_i).map(|(p, q)| (p - q).max(0.0)).collect();
        let (token, fallback) = residual_or_fallback(coin, &residual, p_i);
        return ChainOutcome { accepted: i, token, fallback };
    }
    let bonus = coin.categorical(p.row(draft.len()));
    ChainOutcome { accepted: draft.len(), token: bonus, fallback: false }
}

/// Validates every chain of a batch, then verifies them in order with the one coin: nothing is drawn unless
/// the whole batch is valid. `p` (B, G+1, V), `q` (B, G, V) and `draft` (B, G) are row-major, shapes checked.
pub fn verify_batch(
    p: &[f64],
    q: &[f64],
    draft: &[i64],
    (batch, g, vocab): (usize, usize, usize),
    coin: &mut dyn Coin,
) -> Result<Vec<ChainOutcome>> {
    let chains = (0..batch)
        .map(|b| {
            let p = Probs::new(&p[b * (g + 1) * vocab..(b + 1) * (g + 1) * vocab], vocab);
            let q = Probs::new(&q[b * g * vocab..(b + 1) * g * vocab], vocab);
            Ok((p, q, check_chain(p, q, &draft[b * g..(b + 1) * g], Some(b))?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(chains.iter().map(|(p, q, x)| verify_chain(*p, *q, x, coin)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coin::{enumerate_law, SeededCoin};
    use crate::testing::FixedCoin;
    use crate::testing::{all_values, flat, product_law, random_rows, tv, Table};

    fn out(accepted: usize, token: usize) -> ChainOutcome {
        ChainOutcome { accepted, token, fallback: false }
    }

    /// The exact law of one chain's verification.
    pub(crate) fn law(p: &Table, q: &Table, draft: &[usize]) -> Vec<(ChainOutcome, f64)> {
        let (p, q, v) = (flat(p), flat(q), p[0].len());
        enumerate_law(|coin| Ok(verify_chain(Probs::new(&p, v), Probs::new(&q, v), draft, coin))).expect("small")
    }

    /// Outcomes under a spread of fixed uniforms and seeds, for cases whose outcome is certain.
    fn outcomes(p: &Table, q: &Table, draft: &[usize]) -> Vec<ChainOutcome> {
        let (pf, qf, v) = (flat(p), flat(q), p[0].len());
        all_values(|coin| verify_chain(Probs::new(&pf, v), Probs::new(&qf, v), draft, coin))
    }

    #[test]
    fn two_accepted_then_certain_rejection_and_forced_residual() {
        // Rows 0 and 1: p == q, ratio 1, certain accept. Row 2: p(x_3 = 1) = 0, certain rejection, and
        // (p − q)+ = [0, 0, 0, 0.5] is one-hot on token 3.
        let p = vec![
            vec![0.25, 0.25, 0.25, 0.25],
            vec![0.1, 0.2, 0.3, 0.4],
            vec![0.0, 0.0, 0.5, 0.5],
            vec![1.0, 0.0, 0.0, 0.0],
        ];
        let q = vec![vec![0.25, 0.25, 0.25, 0.25], vec![0.1, 0.2, 0.3, 0.4], vec![0.0, 0.5, 0.5, 0.0]];
        assert_eq!(outcomes(&p, &q, &[2, 0, 1]), vec![out(2, 3)]);
        assert_eq!(law(&p, &q, &[2, 0, 1]), vec![(out(2, 3), 1.0)]);
    }

    #[test]
    fn zero_target_probability_rejects_even_at_u_zero() {
        let (p, q) = (vec![vec![0.0, 1.0], vec![0.5, 0.5]], vec![vec![0.5, 0.5]]);
        let (pf, qf) = (flat(&p), flat(&q));
        let got = verify_chain(Probs::new(&pf, 2), Probs::new(&qf, 2), &[0], &mut FixedCoin { u: 0.0 });
        assert_eq!(got, out(0, 1));
        assert_eq!(law(&p, &q, &[0]), vec![(out(0, 1), 1.0)]);
    }

    #[test]
    fn the_bonus_comes_from_the_last_row() {
        let (p, q) = (vec![vec![0.5, 0.5], vec![0.2, 0.8]], vec![vec![0.5, 0.5]]);
        assert_eq!(law(&p, &q, &[0]), vec![(out(1, 0), 0.2), (out(1, 1), 0.8)]);
        // No drafts: the bonus is row 0.
        assert_eq!(law(&vec![vec![0.25, 0.0, 0.75]], &vec![], &[]), vec![(out(0, 0), 0.25), (out(0, 2), 0.75)]);
    }

    #[test]
    fn degenerate_residual_falls_back_to_p_and_says_so() {
        // Σp = 1 − 1e-5 is within tolerance; p(x = 1) < q(x) and p ≤ q everywhere, so (p − q)+ = 0.
        let (p, q) = (vec![vec![0.5, 0.5 - 1e-5], vec![1.0, 0.0]], vec![vec![0.5, 0.5]]);
        let (pf, qf) = (flat(&p), flat(&q));
        let rejected = verify_chain(Probs::new(&pf, 2), Probs::new(&qf, 2), &[1], &mut FixedCoin { u: 0.999_99 });
        assert_eq!((rejected.accepted, rejected.fallback), (0, true));
        let law = law(&p, &q, &[1]);
        let fallback: f64 = law.iter().filter(|(o, _)| o.fallback).map(|(_, w)| w).sum();
        assert!((fallback - 2e-5).abs() < 1e-12, "P(fallback) = {fallback}");
        assert!(law.iter().all(|(o, _)| o.fallback == (o.accepted == 0)));
    }

    /// Drafts x_i ~ q_i inside the enumeration, verified, then the emitted tokens completed to G+1 positions
    /// by sampling p's rows: with position-indexed (context-free) toy rows the result must have the law
    /// p_0 ⊗ … ⊗ p_G exactly.
    pub(crate) fn decoded_law(p: &Table, q: &Table) -> Vec<(Vec<usize>, f64)> {
        let (pf, qf, v) = (flat(p), flat(q), p[0].len());
        enumerate_law(|coin| {
            let draft: Vec<usize> = q.iter().map(|row| coin.categorical(row)).collect();
            let o = verify_chain(Probs::new(&pf, v), Probs::new(&qf, v), &draft, coin);
            let mut seq = draft[..o.accepted].to_vec();
            seq.push(o.token);
            while seq.len() < p.len() {
                seq.push(coin.categorical(&p[seq.len()]));
            }
            Ok(seq)
        })
        .expect("small model")
    }

    #[test]
    fn decoded_tokens_have_the_target_law_exactly() {
        let mut rng = SeededCoin::new(2023);
        for case in 0..60 {
            let (g, vocab) = (1 + case % 3, 2 + case % 3);
            let p = random_rows(&mut rng, g + 1, vocab);
            let q = random_rows(&mut rng, g, vocab);
            let (got, want) = (decoded_law(&p, &q), product_law(&p));
            assert!(tv(&got, &want) < 1e-12, "case {case}: p={p:?} q={q:?}");
            assert_eq!(got.len(), want.len(), "support differs in case {case}");
        }
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
            let p = [p0.clone(), vec![1.0 / p0.len() as f64; p0.len()]].concat();
            // P(accepted, first emitted token) with x ~ q drawn inside the enumeration.
            let parts = enumerate_law(|coin| {
                let x = coin.categorical(&q0);
                let o = verify_chain(Probs::new(&p, p0.len()), Probs::new(&q0, q0.len()), &[x], coin);
                Ok((o.accepted, if o.accepted == 1 { x } else { o.token }))
            })
            .expect("small");
            for y in 0..p0.len() {
                let part = |acc| parts.iter().filter(|((a, t), _)| *a == acc && *t == y).map(|(_, w)| w).sum::<f64>();
                let (accept, reject) = (part(1), part(0));
                assert!((accept - p0[y].min(q0[y])).abs() < 1e-12, "P(accept, {y}) p={p0:?} q={q0:?}");
                assert!((reject - (p0[y] - q0[y]).max(0.0)).abs() < 1e-12, "P(reject, {y})");
            }
        }
    }

    #[test]
    fn batches_are_validated_whole_before_any_draw() {
        let (p, q) = ([0.5, 0.5, 0.25, 0.75].repeat(2), [0.5, 0.5, 1.0, 0.0]);
        let mut coin = SeededCoin::new(9);
        let before = coin.clone().next_u64();
        // The bad row is last; nothing may have been drawn when it is refused.
        let e = verify_batch(&p, &q, &[0, 1], (2, 1, 2), &mut coin).unwrap_err();
        assert!(e.0.starts_with("draft_tokens[1, 0] = 1 has zero probability"), "{e}");
        assert_eq!(coin.next_u64(), before);
        let outs = verify_batch(&p, &[0.5; 4], &[1, 1], (2, 1, 2), &mut coin).expect("valid batch");
        assert!(outs.iter().all(|o| o.accepted == 1 && o.token < 2 && !o.fallback));
    }

    #[test]
    fn batch_matches_rowwise_verification_with_one_coin() {
        let mut rng = SeededCoin::new(5);
        let ps: Vec<Table> = (0..20).map(|_| random_rows(&mut rng, 3, 4)).collect();
        let qs: Vec<Table> = (0..20).map(|_| random_rows(&mut rng, 2, 4)).collect();
        let drafts: Vec<Vec<usize>> = qs.iter().map(|q| q.iter().map(|row| rng.categorical(row)).collect()).collect();
        let as_i64: Vec<i64> = drafts.concat().iter().map(|&x| x as i64).collect();
        let (pf, qf) = (ps.concat().concat(), qs.concat().concat());
        let batched = verify_batch(&pf, &qf, &as_i64, (20, 2, 4), &mut SeededCoin::new(77)).expect("valid");
        let mut coin = SeededCoin::new(77);
        for (b, o) in batched.iter().enumerate() {
            let (p, q) = (flat(&ps[b]), flat(&qs[b]));
            assert_eq!(*o, verify_chain(Probs::new(&p, 4), Probs::new(&q, 4), &drafts[b], &mut coin));
        }
    }
}
