//! Known bugs, re-injected on purpose so that tests can prove they catch them (lossless.md §4); the Python
//! tests reach them through the extension's `flaw=` argument. Nothing here changes the production
//! verifiers: each flaw is a different coin, a changed tree or changed p rows handed to them, with exactly
//! the effect on the output law of the bug it stands for.

use crate::bail;
use crate::coin::Coin;
use crate::error::Result;
use crate::tree::{Kind, Tree};

/// A known bug; [`mutate_tree`] says what each one changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    NonStrict,
    BonusRowOff,
    TopkWithRatio,
    SortedSiblings,
    NoRenorm,
    SkipDupUpdate,
}

impl Flaw {
    /// The names `flaw=` accepts, in declaration order.
    pub const NAMES: [&str; 6] =
        ["non_strict", "bonus_row_off", "topk_with_ratio", "sorted_siblings", "no_renorm", "skip_dup_update"];

    /// The flaw named `name`, one of [`Flaw::NAMES`].
    pub fn parse(name: &str) -> Result<Self> {
        use Flaw::*;
        match Self::NAMES.iter().position(|&n| n == name) {
            Some(i) => Ok([NonStrict, BonusRowOff, TopkWithRatio, SortedSiblings, NoRenorm, SkipDupUpdate][i]),
            None => bail!("unknown flaw {name:?}; expected None or one of {:?}", Self::NAMES),
        }
    }
}

/// Runs `run` with `coin`, or under `NonStrict` with a coin whose test is `u·q <= p`.
pub fn with_flaw<T>(flaw: Option<Flaw>, coin: &mut dyn Coin, run: impl FnOnce(&mut dyn Coin) -> T) -> T {
    match flaw {
        Some(Flaw::NonStrict) => run(&mut NonStrict(coin)),
        _ => run(coin),
    }
}

/// Uniforms are multiples of 2^-53, so `u·q < p + q·2^-53` is `u·q <= p`: u = 0 accepts p(x) = 0.
struct NonStrict<'c>(&'c mut dyn Coin);

impl Coin for NonStrict<'_> {
    fn accept(&mut self, p: f64, q: f64) -> bool {
        self.0.accept(p + q * f64::EPSILON / 2.0, q)
    }

    fn categorical(&mut self, w: &[f64]) -> usize {
        self.0.categorical(w)
    }
}

/// `BonusRowOff` on chains of G drafts (p: rows of G+1 per chain): the bonus row p_{G+1} becomes p_G.
pub fn mutate_chains(flaw: Flaw, p: &mut [f64], g: usize, vocab: usize) {
    if flaw == Flaw::BonusRowOff && g > 0 {
        for chain in p.chunks_mut((g + 1) * vocab) {
            chain.copy_within((g - 1) * vocab..g * vocab, g * vocab);
        }
    }
}

/// [`mutate_tree`] on every tree of a batch, p and q (B, n, V) row-major.
pub fn mutate_trees(flaw: Flaw, trees: &mut [Tree], p: &mut [f64], q: Option<&[f64]>, vocab: usize) -> Result<()> {
    let rows = trees.first().map_or(0, |t| t.parents.len() * vocab);
    for (i, (tree, p)) in trees.iter_mut().zip(p.chunks_mut(rows.max(1))).enumerate() {
        mutate_tree(flaw, tree, p, q.map(|q| &q[i * rows..(i + 1) * rows]), vocab)?;
    }
    Ok(())
}

/// A flaw applied to one validated tree and its p rows (`q` as given). The bug each flaw stands for:
///
/// * `NonStrict` ([`with_flaw`]): accept on `u·q <= p`, so u = 0 accepts a token with p(x) = 0;
/// * `BonusRowOff`: the bonus drawn from the leaf's parent's row (in a chain, row G − 1 instead of G);
///   each leaf's p row, read only for its bonus, becomes its parent's;
/// * `TopkWithRatio`: top-k children verified with the ratio test against q, the SpecInfer rule;
/// * `NoRenorm`: children drawn without replacement verified with q_j = q, not renormalised; with
///   `TopkWithRatio`, the node becomes `IidSampled`;
/// * `SortedSiblings`: sampled children tried in descending q order (stable) instead of draw order;
/// * `SkipDupUpdate`: a repeated `IidSampled` sibling is dropped. It can never be accepted (rejecting its
///   first copy left r(x) = 0), so dropping it skips exactly its residual update.
pub fn mutate_tree(flaw: Flaw, tree: &mut Tree, p: &mut [f64], q: Option<&[f64]>, vocab: usize) -> Result<()> {
    let sampled = |kind: Kind| kind != Kind::Deterministic;
    for node in 0..tree.parents.len() {
        let (kind, q_row) = (tree.kinds[node], q.map(|q| &q[node * vocab..(node + 1) * vocab]));
        match (flaw, tree.parents[node]) {
            (Flaw::BonusRowOff, Some(parent)) if tree.children[node].is_empty() => {
                p.copy_within(parent * vocab..(parent + 1) * vocab, node * vocab)
            }
            (Flaw::TopkWithRatio, _) if !sampled(kind) && !tree.children[node].is_empty() => {
                if q.is_none() {
                    bail!("flaw \"topk_with_ratio\" verifies with q, but q is None");
                }
                tree.kinds[node] = Kind::IidSampled;
            }
            (Flaw::NoRenorm, _) if kind == Kind::WithoutReplacement => tree.kinds[node] = Kind::IidSampled,
            (Flaw::SortedSiblings, _) if sampled(kind) => {
                if let Some(q_row) = q_row {
                    let tokens = &tree.tokens;
                    tree.children[node].sort_by(|&a, &b| q_row[tokens[b]].total_cmp(&q_row[tokens[a]]));
                }
            }
            (Flaw::SkipDupUpdate, _) if kind == Kind::IidSampled => {
                let mut seen = Vec::new();
                tree.children[node].retain(|&c| {
                    !seen.contains(&tree.tokens[c]) && {
                        seen.push(tree.tokens[c]);
                        true
                    }
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainOutcome;
    use crate::coin::{enumerate_law, SeededCoin};
    use crate::law::chain_law;
    use crate::testing::{flat, product_law, random_row, tree_law, tv, Table};
    use crate::tree::tests::first_token_law;

    fn law(p: &Table, q: &Table, draft: &[i64], flaw: Option<Flaw>) -> Vec<(ChainOutcome, f64)> {
        chain_law(flat(p), &flat(q), draft, p[0].len(), flaw).expect("valid")
    }

    fn out(accepted: usize, token: usize) -> ChainOutcome {
        ChainOutcome { accepted, token, fallback: false }
    }

    #[test]
    fn non_strict_acceptance_puts_mass_on_a_forbidden_token() {
        let (p, q) = (vec![vec![0.0, 1.0], vec![0.5, 0.5]], vec![vec![0.5, 0.5]]);
        assert_eq!(law(&p, &q, &[0], None), vec![(out(0, 1), 1.0)]);
        let buggy = law(&p, &q, &[0], Some(Flaw::NonStrict));
        let tiny = f64::EPSILON / 2.0;
        assert_eq!(buggy[0], (out(0, 1), 1.0 - tiny));
        assert_eq!((buggy.len(), buggy[1].0), (3, out(1, 0)));
        assert!((buggy[1].1 - tiny * 0.5).abs() < 1e-30);
    }

    #[test]
    fn bonus_row_off_moves_the_bonus_and_breaks_the_decoded_law() {
        // p == q on the drafts; row 1 is one-hot on the draft token, row 2 (the bonus row) on token 2.
        let p = vec![vec![0.5, 0.5, 0.0], vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0]];
        let q = vec![vec![0.5, 0.5, 0.0], vec![1.0, 0.0, 0.0]];
        assert_eq!(law(&p, &q, &[1, 0], None), vec![(out(2, 2), 1.0)]);
        assert_eq!(law(&p, &q, &[1, 0], Some(Flaw::BonusRowOff)), vec![(out(2, 0), 1.0)]);
        // No drafts: there is no row G − 1 to move to.
        let p0 = vec![vec![0.25, 0.0, 0.75]];
        assert_eq!(law(&p0, &vec![], &[], Some(Flaw::BonusRowOff)), law(&p0, &vec![], &[], None));
        // Decoded with drafts x ~ q and completed from p, the flaw leaves the target's law.
        let p = vec![vec![0.5, 0.5], vec![0.9, 0.1], vec![0.3, 0.7]];
        let q = vec![vec![0.5, 0.5], vec![0.5, 0.5]];
        let decoded = |flaw| {
            enumerate_law(|coin| {
                let draft: Vec<i64> = q.iter().map(|row| coin.categorical(row) as i64).collect();
                let outcomes = law(&p, &q, &draft, flaw);
                let o = outcomes[coin.categorical(&outcomes.iter().map(|(_, w)| *w).collect::<Vec<_>>())].0;
                let mut seq: Vec<usize> = draft[..o.accepted].iter().map(|&x| x as usize).collect();
                seq.push(o.token);
                while seq.len() < p.len() {
                    seq.push(coin.categorical(&p[seq.len()]));
                }
                Ok(seq)
            })
            .expect("small")
        };
        assert!(tv(&decoded(None), &product_law(&p)) < 1e-12);
        assert!(tv(&decoded(Some(Flaw::BonusRowOff)), &product_law(&p)) > 0.05);
    }

    #[test]
    fn tree_flaws_break_the_one_node_law() {
        let tv_to = |p: &[f64], law: &[(usize, f64)]| {
            let mut got = vec![0.0; p.len()];
            law.iter().for_each(|&(y, w)| got[y] += w);
            got.iter().zip(p).map(|(a, b)| (a - b).abs()).sum::<f64>() / 2.0
        };
        let cases = [
            (Kind::Deterministic, Flaw::TopkWithRatio),
            (Kind::IidSampled, Flaw::SortedSiblings),
            (Kind::WithoutReplacement, Flaw::SortedSiblings),
            (Kind::WithoutReplacement, Flaw::NoRenorm),
            (Kind::IidSampled, Flaw::SkipDupUpdate),
        ];
        let mut rng = SeededCoin::new(21);
        let pairs: Vec<(Vec<f64>, Vec<f64>)> = (0..20)
            .map(|_| (random_row(&mut rng, 3), random_row(&mut rng, 3)))
            .filter(|(_, q)| q.iter().all(|&x| x > 0.0))
            .collect();
        for (kind, flaw) in cases {
            let mut worst: f64 = 0.0;
            for (p, q) in &pairs {
                assert!(tv_to(p, &first_token_law(p, q, kind, 2, None)) < 1e-12);
                worst = worst.max(tv_to(p, &first_token_law(p, q, kind, 2, Some(flaw))));
            }
            assert!(worst > 0.01, "{kind:?} {flaw:?}: max TV {worst}");
        }
    }

    #[test]
    fn skipping_the_duplicate_update_changes_the_correction() {
        // Two i.i.d. children with token 0; p = [0.2, 0.3, 0.5], q = [0.5, 0.25, 0.25]: r1 = norm([0, 0.05,
        // 0.25]) = [0, 1/6, 5/6]; the update at the duplicate gives r2 = [0, 0, 1]; skipping it keeps r1.
        let p = vec![vec![0.2, 0.3, 0.5], vec![1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0]];
        let q = vec![vec![0.5, 0.25, 0.25], vec![1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0]];
        let tokens = |flaw| {
            let law = tree_law(flaw, [&[-1, 0, 0], &[0, 0, 0], &[1, 0, 0]], &p, Some(&q)).expect("valid");
            law.iter().filter(|(o, _)| o.path == [0]).map(|(o, _)| o.token).collect::<Vec<_>>()
        };
        assert_eq!(tokens(None), vec![2]);
        assert_eq!(tokens(Some(Flaw::SkipDupUpdate)), vec![1, 2]);
    }

    #[test]
    fn topk_with_ratio_needs_q_and_names() {
        let p = vec![vec![0.5, 0.5], vec![1.0, 0.0]];
        let e = tree_law(Some(Flaw::TopkWithRatio), [&[-1, 0], &[0, 0], &[0, 0]], &p, None).unwrap_err();
        assert!(e.0.contains("topk_with_ratio"), "{e}");
        assert_eq!(Flaw::parse("non_strict"), Ok(Flaw::NonStrict));
        assert_eq!(Flaw::parse("skip_dup_update"), Ok(Flaw::SkipDupUpdate));
        let e = Flaw::parse("none").unwrap_err();
        assert!(e.0.starts_with("unknown flaw \"none\"") && e.0.contains(r#""topk_with_ratio", "sorted_siblings""#));
    }
}
