//! Tree speculation: lossless verification of a draft tree, one root-to-node path plus one token.
//!
//! A tree is a parent array plus tokens. Node 0 is the root, the last committed token (not a draft), with
//! `parents[0] = -1`; every other node i has `0 <= parents[i] < i`. A node's children are the nodes whose
//! parent it is, in increasing index: that order is part of the draft law (draw order for sampled children,
//! rank order for top-k). `p[i]` is the target law of the token after node i, `q[i]` the draft law node i's
//! children were drawn from; how they were drafted (the node's [`Kind`]) decides how they are verified
//! (Miao et al. 2024, SpecInfer, arXiv 2305.09781; Jeon et al. 2024, arXiv 2402.14160; Li et al. 2024,
//! EAGLE, arXiv 2401.15077; lossless.md Lemmas 2 and 3).

use crate::bail;
use crate::check::{check_parents, check_row, check_token, Probs};
use crate::coin::{residual_or_fallback, Coin};
use crate::error::{at, Result};

/// How a node's children were drafted; its code in `kinds` arrays is its index in [`KINDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A set chosen without the target's randomness (top-k ranks): δ-verification.
    Deterministic,
    /// Independent draws, with replacement, from q\[node\]: recursive rejection sampling with q_j = q.
    IidSampled,
    /// Draws one after another without replacement from q\[node\]: recursive rejection sampling with q_j =
    /// q with the earlier siblings' tokens zeroed and renormalised.
    WithoutReplacement,
}

pub const KINDS: [Kind; 3] = [Kind::Deterministic, Kind::IidSampled, Kind::WithoutReplacement];

/// A validated tree: parents, tokens and kinds, with each node's children listed in increasing index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pub(crate) parents: Vec<Option<usize>>,
    /// `tokens[0]` (the root's) is never read.
    pub(crate) tokens: Vec<usize>,
    pub(crate) kinds: Vec<Kind>,
    pub(crate) children: Vec<Vec<usize>>,
}

impl Tree {
    /// Validates one tree: the parent array, kinds, tokens in [0, vocab) for nodes >= 1, and for sampled
    /// children a q row they can have been drawn from (q\[parent\]\[token\] > 0; rows are checked when read)
    /// and, drawn without replacement, distinct tokens. `batch` only labels positions in error messages.
    pub fn new(
        [parents, tokens, kinds]: [&[i64]; 3],
        vocab: usize,
        q: Option<Probs>,
        batch: Option<usize>,
    ) -> Result<Self> {
        if tokens.len() != parents.len() || kinds.len() != parents.len() {
            bail!("parents, tokens and kinds must have one entry per node");
        }
        let parents = check_parents(parents, batch)?;
        let kinds = (kinds.iter().enumerate())
            .map(|(i, &kind)| match usize::try_from(kind).ok().and_then(|k| KINDS.get(k)) {
                Some(&k) => Ok(k),
                None => bail!(
                    "kinds{} is {kind}; expected 0 (Deterministic), 1 (IidSampled) or 2 (WithoutReplacement)",
                    at(batch, &[i])
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        let tokens = (tokens.iter().enumerate())
            .map(|(i, &t)| if i == 0 { Ok(0) } else { check_token("tokens", t, vocab, batch, i) })
            .collect::<Result<Vec<_>>>()?;
        let mut children = vec![Vec::new(); parents.len()];
        for (node, &parent) in parents.iter().enumerate().skip(1) {
            let (p, x) = (parent.expect("only the root has no parent"), tokens[node]);
            let twin = children[p].iter().find(|&&c| tokens[c] == x);
            match (kinds[p], q, twin) {
                (Kind::Deterministic, _, _) => {}
                (kind, None, _) => bail!(
                    "q is None, but node {} has {kind:?} children, which need the q they were drawn from",
                    at(batch, &[p])
                ),
                (_, Some(q), _) if q.row(p)[x] == 0.0 => bail!(
                    "tokens{} = {x} has zero probability under q{}, its parent's row, so q is not the law the child \
                     was drawn from",
                    at(batch, &[node]),
                    at(batch, &[p])
                ),
                (Kind::WithoutReplacement, _, Some(first)) => bail!(
                    "tokens{} = {x} repeats the token of its sibling node {first}; children drawn without replacement \
                     (kind 2) must be distinct",
                    at(batch, &[node])
                ),
                _ => {}
            }
            children[p].push(node);
        }
        Ok(Self { parents, tokens, kinds, children })
    }
}

/// One tree's p and q tables, each row validated the first time the walk reads it: rows of nodes the walk
/// never visits are never read, so they cost nothing and may hold anything.
pub struct Rows<'a> {
    tables: [Option<Probs<'a>>; 2],
    batch: Option<usize>,
    checked: Vec<[bool; 2]>,
}

impl<'a> Rows<'a> {
    pub fn new(p: Probs<'a>, q: Option<Probs<'a>>, batch: Option<usize>) -> Self {
        Self { tables: [Some(p), q], batch, checked: vec![[false; 2]; p.rows()] }
    }

    /// Row `node` of p, once known to be a probability vector.
    pub fn p(&mut self, node: usize) -> Result<&'a [f64]> {
        self.read(0, node)
    }

    /// Row `node` of q, once known to be a probability vector.
    pub fn q(&mut self, node: usize) -> Result<&'a [f64]> {
        self.read(1, node)
    }

    fn read(&mut self, which: usize, node: usize) -> Result<&'a [f64]> {
        let Some(table) = self.tables[which] else {
            bail!("q is None, but node {}'s children are verified with q", at(self.batch, &[node]));
        };
        if !self.checked[node][which] {
            check_row(["p", "q"][which], table.row(node), self.batch, node)?;
            self.checked[node][which] = true;
        }
        Ok(table.row(node))
    }
}

/// What verifying one tree emits: the accepted nodes' tokens, then `token`. Ordered by (path, token,
/// fallback), the order in which exact laws are listed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreeOutcome {
    /// Accepted node indices from the root (included), each the parent of the next.
    pub path: Vec<usize>,
    /// The token emitted after the path: a correction if the last node's children were all rejected, else
    /// (at a leaf) the bonus.
    pub token: usize,
    /// The residual had no mass and `token` was drawn from the raw p row instead.
    pub fallback: bool,
}

/// Verifies one tree: from the root, try the children of the current node ([`try_children`]), descend into
/// the first accepted one, and stop with the correction token when all are rejected; at a leaf emit the
/// bonus y ~ p\[leaf\]. Each node step is lossless, so by induction over depth the emitted tokens (path
/// tokens, then the last one) are distributed as sampling from p token by token.
///
/// Errors only if a row read on the way is malformed (see [`Rows`]).
pub fn verify_tree<C: Coin + ?Sized>(tree: &Tree, rows: &mut Rows, coin: &mut C) -> Result<TreeOutcome> {
    let mut path = vec![0];
    loop {
        let node = path[path.len() - 1];
        let p = rows.p(node)?;
        if tree.children[node].is_empty() {
            let bonus = coin.categorical(p);
            return Ok(TreeOutcome { path, token: bonus, fallback: false });
        }
        let q = if tree.kinds[node] == Kind::Deterministic { None } else { Some(rows.q(node)?) };
        match try_children(tree, node, p, q, coin) {
            Ok(child) => path.push(child),
            Err((token, fallback)) => return Ok(TreeOutcome { path, token, fallback }),
        }
    }
}

/// The node procedure: with the residual r = p\[node\], try each child x in order, by the node's kind:
///
/// ```text
/// Deterministic        accept x iff u < r(x)          else r ← norm(r with r(x) = 0)     δ-verification
/// IidSampled           accept x iff u·q(x) < r(x)     else r ← norm((r − q)+)            recursive rejection
/// WithoutReplacement   accept x iff u·q_j(x) < r(x)   else r ← norm((r − q_j)+),          sampling
///                                                          q_{j+1} = norm(q_j with x zeroed)
/// ```
///
/// Returns the accepted child, or, if every child is rejected, `Err((y, fallback))` with y ~ r. Each rule
/// leaves the emitted token exactly p-distributed (lossless.md Lemma 2 for δ, Lemma 3 for RRS), and a
/// rejected child has r(x) = 0 afterwards, so the correction is never a rejected sibling. An r with no mass
/// left (p == q up to rounding) falls back to p.
fn try_children<C: Coin + ?Sized>(
    tree: &Tree,
    node: usize,
    p: &[f64],
    q: Option<&[f64]>,
    coin: &mut C,
) -> std::result::Result<usize, (usize, bool)> {
    let mut r = p.to_vec();
    let mut q_j = q.map(<[f64]>::to_vec); // the law the next child was drawn from; None for δ-verification
    for (j, &child) in tree.children[node].iter().enumerate() {
        if j > 0 {
            normalise(&mut r); // only before r is tested again: a residual that is only sampled stays as is
        }
        let x = tree.tokens[child];
        if coin.accept(r[x], q_j.as_ref().map_or(1.0, |q| q[x])) {
            return Ok(child);
        }
        match &mut q_j {
            None => r[x] = 0.0,
            Some(q) => {
                r.iter_mut().zip(q.iter()).for_each(|(r, q)| *r = (*r - q).max(0.0));
                if tree.kinds[node] == Kind::WithoutReplacement {
                    q[x] = 0.0;
                    normalise(q);
                }
            }
        }
    }
    Err(residual_or_fallback(coin, &r, p))
}

/// Divides `w` by its sum; an all-zero or non-finite `w` becomes all zeros (no mass left).
fn normalise(w: &mut [f64]) {
    let mass: f64 = w.iter().sum();
    if mass > 0.0 && mass.is_finite() {
        w.iter_mut().for_each(|v| *v /= mass); // division, not a reciprocal: a lone entry becomes exactly 1
    } else {
        w.fill(0.0);
    }
}

/// Validates the structure of every tree of a batch (parents, tokens and kinds (B, n) and q (B, n, V) if
/// given, row-major, shapes checked) before anything is drawn.
pub fn batch(arrays: [&[i64]; 3], q: Option<&[f64]>, (b, n, vocab): (usize, usize, usize)) -> Result<Vec<Tree>> {
    let q = |i: usize| q.map(|q| Probs::new(&q[i * n * vocab..(i + 1) * n * vocab], vocab));
    (0..b).map(|i| Tree::new(arrays.map(|a| &a[i * n..(i + 1) * n]), vocab, q(i), Some(i))).collect()
}

/// Verifies validated trees in order with the one coin; `p` (B, n, V) and `q` are row-major, shapes checked.
/// Rows are validated as the walk reads them, so a bad row in tree b is reported after trees 0..b drew.
pub fn verify_batch<'a>(
    trees: &[Tree],
    p: &'a [f64],
    q: Option<&'a [f64]>,
    (n, vocab): (usize, usize),
    coin: &mut dyn Coin,
) -> Result<Vec<TreeOutcome>> {
    let rows = |t: &'a [f64], b: usize| Probs::new(&t[b * n * vocab..(b + 1) * n * vocab], vocab);
    (trees.iter().enumerate())
        .map(|(b, tree)| verify_tree(tree, &mut Rows::new(rows(p, b), q.map(|q| rows(q, b)), Some(b)), coin))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chain::{verify_chain, ChainOutcome};
    use crate::coin::{enumerate_law, SeededCoin};
    use crate::testing::{all_values, flat, random_row, tree_law, Table};

    fn uniform(n: usize, vocab: usize) -> Table {
        vec![vec![1.0 / vocab as f64; vocab]; n]
    }

    fn outcome(path: &[usize], token: usize) -> TreeOutcome {
        TreeOutcome { path: path.to_vec(), token, fallback: false }
    }

    fn law(tree: [&[i64]; 3], p: &Table, q: Option<&Table>) -> Vec<(TreeOutcome, f64)> {
        tree_law(None, tree, p, q).expect("valid")
    }

    /// Every outcome under a spread of fixed uniforms and seeds, for cases whose outcome is certain.
    fn outcomes([parents, tokens, kinds]: [&[i64]; 3], p: &Table, q: Option<&Table>) -> Vec<TreeOutcome> {
        let (pf, qf, v) = (flat(p), q.map(|q| flat(q)), p[0].len());
        let tree =
            Tree::new([parents, tokens, kinds], v, qf.as_deref().map(|q| Probs::new(q, v)), None).expect("valid");
        all_values(|coin| {
            let mut rows = Rows::new(Probs::new(&pf, v), qf.as_deref().map(|q| Probs::new(q, v)), None);
            verify_tree(&tree, &mut rows, coin).expect("valid")
        })
    }

    #[test]
    fn tree_structure_is_validated() {
        let q = flat(&uniform(3, 3));
        let check = |tokens: &[i64], kinds: &[i64], q: Option<&[f64]>| {
            Tree::new([&[-1, 0, 0], tokens, kinds], 3, q.map(|q| Probs::new(q, 3)), Some(1))
        };
        let err = |tokens: &[i64], kinds: &[i64], q: Option<&[f64]>| check(tokens, kinds, q).unwrap_err().0;
        assert!(check(&[-7, 0, 1], &[2, 0, 0], Some(&q)).is_ok(), "the root's token is never read");
        let e = err(&[0, 0, 1], &[3, 0, 0], Some(&q));
        assert_eq!(e, "kinds[1, 0] is 3; expected 0 (Deterministic), 1 (IidSampled) or 2 (WithoutReplacement)");
        assert!(err(&[0, 0, 1], &[0, 0, -1], Some(&q)).starts_with("kinds[1, 2] is -1"));
        assert_eq!(err(&[0, 3, 1], &[0, 0, 0], Some(&q)), "tokens[1, 1] is 3, outside the vocabulary [0, 3)");
        assert!(err(&[0, 0, -1], &[0, 0, 0], Some(&q)).starts_with("tokens[1, 2] is -1"));
        let e = err(&[0, 2, 2], &[2, 0, 0], Some(&q));
        assert!(e.starts_with("tokens[1, 2] = 2 repeats the token of its sibling node 1"), "{e}");
        // Duplicates are fine for the other kinds.
        for kind in [0, 1] {
            assert!(check(&[0, 2, 2], &[kind, 0, 0], Some(&q)).is_ok());
        }
        let e = err(&[0, 0, 1], &[1, 0, 0], None);
        assert!(e.starts_with("q is None, but node [1, 0] has IidSampled children"), "{e}");
        // A leaf's kind needs no q; δ-nodes need none either.
        assert!(check(&[0, 0, 1], &[0, 2, 2], None).is_ok());
        let zero_q = [0.5, 0.0, 0.5].repeat(3);
        let e = err(&[0, 0, 1], &[1, 0, 0], Some(&zero_q));
        assert_eq!(
            e,
            "tokens[1, 2] = 1 has zero probability under q[1, 0], its parent's row, so q is not the law the child \
             was drawn from"
        );
        assert!(Tree::new([&[-1, 0, 0], &[0, 0], &[0, 0, 0]], 3, None, None).is_err());
        let e = Tree::new([&[0, 0, 0], &[0; 3], &[0; 3]], 3, None, None).unwrap_err();
        assert!(e.0.contains("node 0 is the root"));
    }

    #[test]
    fn kinds_from_codes() {
        let q = flat(&uniform(4, 3));
        let tree = Tree::new([&[-1, 0, 0, 0], &[0, 0, 1, 2], &[2, 1, 0, 0]], 3, Some(Probs::new(&q, 3)), None);
        assert_eq!(
            tree.expect("valid").kinds,
            [Kind::WithoutReplacement, Kind::IidSampled, Kind::Deterministic, KINDS[0]]
        );
    }

    #[test]
    fn rows_are_validated_when_read() {
        // Node 2's p row is unnormalised but never visited when node 1 is certainly accepted.
        let p = vec![vec![0.0, 1.0], vec![0.5, 0.5], vec![0.9, 0.9]];
        assert!(tree_law(None, [&[-1, 0, 0], &[0, 1, 0], &[0, 0, 0]], &p, None).is_ok());
        let e = tree_law(None, [&[-1, 0, 0], &[0, 0, 1], &[0, 0, 0]], &p, None).unwrap_err();
        assert_eq!(e.0, "p[2] sums to 1.8, not 1 (tolerance 1e-4); pass normalised probabilities");
        // q rows are read only at nodes whose children are sampled.
        let q = vec![vec![0.5, 0.5], vec![f64::NAN, 0.5], vec![0.5, 0.5]];
        let p = uniform(3, 2);
        assert!(tree_law(None, [&[-1, 0, 1], &[0, 1, 0], &[1, 0, 0]], &p, Some(&q)).is_ok());
        let e = tree_law(None, [&[-1, 0, 1], &[0, 1, 0], &[1, 1, 0]], &p, Some(&q)).unwrap_err();
        assert!(e.0.starts_with("q[1, 0] is NaN"), "{e}");
        // In a batch, the bad row is named with its batch position.
        let trees = vec![Tree::new([&[-1, 0], &[0, 1], &[0, 0]], 2, None, None).expect("valid"); 2];
        let p = [flat(&uniform(2, 2)), vec![0.5, 0.5, -0.5, 1.5]].concat();
        let e = verify_batch(&trees, &p, None, (2, 2), &mut SeededCoin::new(0)).unwrap_err();
        assert_eq!(e.0, "p[1, 1, 0] is -0.5; probabilities must be non-negative");
    }

    #[test]
    fn delta_verification_follows_the_target() {
        // The root's children carry tokens 0, 1, 2; the target puts all mass on token 1 (node 2), and node 2's
        // row all on token 2 (the bonus).
        let p = vec![vec![0.0, 1.0, 0.0], vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0]];
        assert_eq!(outcomes([&[-1, 0, 0, 0], &[0, 0, 1, 2], &[0; 4]], &p, None), vec![outcome(&[0, 2], 2)]);
        // No child matches: the correction comes from p minus the rejected children, here token 2.
        let p = vec![vec![0.25, 0.25, 0.5], vec![1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0]];
        let want = vec![(outcome(&[0], 2), 0.5), (outcome(&[0, 1], 0), 0.25), (outcome(&[0, 2], 0), 0.25)];
        assert_eq!(law([&[-1, 0, 0], &[0, 0, 1], &[0; 3]], &p, None), want);
    }

    #[test]
    fn rrs_forced_rejection_then_forced_acceptance() {
        // Child 1 (token 0) has p = 0: rejected for every u. Then r = norm((p − q)+) = [0, 0.7, 0.3], and child
        // 2 (token 1) has ratio 0.7 / 0.25 > 1: accepted for every u. Bonus from p[2], one-hot on 2.
        let p = vec![vec![0.0, 0.6, 0.4], vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0]];
        let q = vec![vec![0.5, 0.25, 0.25], vec![1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0]];
        assert_eq!(outcomes([&[-1, 0, 0], &[0, 0, 1], &[1, 0, 0]], &p, Some(&q)), vec![outcome(&[0, 2], 2)]);
        // Without replacement: q_2 = [0, 0.5, 0.5], ratio 1.4: accepted as well.
        assert_eq!(outcomes([&[-1, 0, 0], &[0, 0, 1], &[2, 0, 0]], &p, Some(&q)), vec![outcome(&[0, 2], 2)]);
        // Without replacement, where renormalising decides: p = [0, 0.5, 0.5], q = [0.5, 0.5, 0]. After rejecting
        // token 0, r = [0, 0, 1]; child 2 (token 1) is rejected, and the correction is token 2.
        let p = vec![vec![0.0, 0.5, 0.5], vec![1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0]];
        let q = vec![vec![0.5, 0.5, 0.0], vec![1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0]];
        assert_eq!(outcomes([&[-1, 0, 0], &[0, 0, 1], &[2, 0, 0]], &p, Some(&q)), vec![outcome(&[0], 2)]);
    }

    #[test]
    fn iid_duplicates_are_tried_and_update_the_residual() {
        // Two i.i.d. children with the same token 0; p = [0.2, 0.3, 0.5], q = [0.6, 0.4, 0]. First: accept w.p.
        // 1/3; else r1 = norm([0, 0, 0.5]) = [0, 0, 1]. Second: ratio 0; r2 = r1.
        let p = vec![vec![0.2, 0.3, 0.5], vec![1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0]];
        let q = vec![vec![0.6, 0.4, 0.0], vec![1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0]];
        let got = law([&[-1, 0, 0], &[0, 0, 0], &[1, 0, 0]], &p, Some(&q));
        assert_eq!(got.iter().map(|(o, _)| o.clone()).collect::<Vec<_>>(), [outcome(&[0], 2), outcome(&[0, 1], 0)]);
        assert!((got[0].1 - 2.0 / 3.0).abs() < 1e-15);
    }

    /// A random tree with children drafted by their kind's law, for `vocab` tokens.
    pub(crate) fn random_tree(coin: &mut SeededCoin, n: usize, vocab: usize) -> ([Vec<i64>; 3], Table, Table) {
        let p: Table = (0..n).map(|_| random_row(coin, vocab)).collect();
        let q: Table = (0..n).map(|_| random_row(coin, vocab)).collect();
        let kinds: Vec<i64> = (0..n).map(|_| (coin.next_u64() % 3) as i64).collect();
        let (mut parents, mut tokens) = (vec![-1], vec![0]);
        let mut left = q.clone(); // what each node's next without-replacement child is drawn from
        for i in 1..n {
            // A node whose support is exhausted cannot draw another child without replacement; node i − 1 has no
            // children yet, so some parent is always possible.
            let open: Vec<usize> = (0..i).filter(|&v| kinds[v] != 2 || left[v].iter().sum::<f64>() > 0.0).collect();
            let parent = open[(coin.next_u64() % open.len() as u64) as usize];
            let token = match kinds[parent] {
                0 => (coin.next_u64() % vocab as u64) as usize,
                1 => coin.categorical(&q[parent]),
                _ => coin.categorical(&left[parent]),
            };
            left[parent][token] = 0.0;
            parents.push(parent as i64);
            tokens.push(token as i64);
        }
        ([parents, tokens, kinds], p, q)
    }

    #[test]
    fn correction_is_never_a_rejected_sibling() {
        let (mut rng, mut coin) = (SeededCoin::new(31), SeededCoin::new(32));
        for case in 0..300 {
            let (n, vocab) = (1 + case % 9, 2 + case % 4);
            let ([parents, tokens, kinds], p, q) = random_tree(&mut rng, n, vocab);
            let (pf, qf) = (flat(&p), flat(&q));
            let tree =
                Tree::new([&parents, &tokens, &kinds], vocab, Some(Probs::new(&qf, vocab)), None).expect("valid");
            let mut rows = Rows::new(Probs::new(&pf, vocab), Some(Probs::new(&qf, vocab)), None);
            for _ in 0..20 {
                let o = verify_tree(&tree, &mut rows, &mut coin).expect("valid");
                assert!(!o.fallback && o.path[0] == 0);
                assert!(o.path.windows(2).all(|w| tree.parents[w[1]] == Some(w[0])), "{o:?}");
                let stop = o.path[o.path.len() - 1];
                assert!(p[stop][o.token] > 0.0, "case {case}: {o:?}");
                assert!(tree.children[stop].iter().all(|&c| tree.tokens[c] != o.token), "case {case}: {o:?}");
            }
            let total: f64 = law([&parents, &tokens, &kinds], &p, Some(&q)).iter().map(|(_, w)| w).sum();
            assert!((total - 1.0).abs() < 1e-12);
        }
    }

    /// The first emitted token of a one-node tree whose `k` children are drafted inside the enumeration by
    /// `kind`'s law: Lemma 2 / Lemma 3 say its law is p.
    pub(crate) fn first_token_law(
        p: &[f64],
        q: &[f64],
        kind: Kind,
        k: usize,
        flaw: Option<crate::mutants::Flaw>,
    ) -> Vec<(usize, f64)> {
        let vocab = p.len();
        let table = |row: &[f64]| [vec![row.to_vec()], vec![vec![1.0 / vocab as f64; vocab]; k]].concat();
        let (pt, qt) = (table(p), table(q));
        enumerate_law(|coin| {
            let (mut tokens, mut left) = (vec![0i64], q.to_vec());
            for j in 0..k {
                let x = match kind {
                    Kind::Deterministic => {
                        // Top-k of q, ties by token id.
                        let mut order: Vec<usize> = (0..vocab).collect();
                        order.sort_by(|&a, &b| q[b].total_cmp(&q[a]));
                        order[j]
                    }
                    Kind::IidSampled => coin.categorical(q),
                    Kind::WithoutReplacement => coin.categorical(&left),
                };
                left[x] = 0.0;
                tokens.push(x as i64);
            }
            let parents: Vec<i64> = [vec![-1], vec![0; k]].concat();
            let kinds: Vec<i64> = [vec![kind as i64], vec![0; k]].concat();
            let law = tree_law(flaw, [&parents, &tokens, &kinds], &pt, Some(&qt))?;
            // The law of the first token given these drafts, drawn by the enumerating coin.
            let weights: Vec<f64> = law.iter().map(|(_, w)| *w).collect();
            let o = &law[coin.categorical(&weights)].0;
            Ok(if o.path.len() > 1 { tokens[o.path[1]] as usize } else { o.token })
        })
        .expect("small")
    }

    #[test]
    fn one_node_law_is_the_target_for_every_kind() {
        let mut rng = SeededCoin::new(8);
        for case in 0..120 {
            let vocab = 2 + case % 4;
            let p = random_row(&mut rng, vocab);
            // Full support for without-replacement drafts of up to `vocab` children.
            let q: Vec<f64> =
                random_row(&mut rng, vocab).iter().map(|x| (x + 0.1) / (1.0 + 0.1 * vocab as f64)).collect();
            for kind in [Kind::Deterministic, Kind::IidSampled, Kind::WithoutReplacement] {
                let k = 1 + case % vocab.min(3);
                let mut got = vec![0.0; vocab];
                first_token_law(&p, &q, kind, k, None).iter().for_each(|&(y, w)| got[y] += w);
                for y in 0..vocab {
                    assert!((got[y] - p[y]).abs() < 1e-12, "{kind:?} k={k} p={p:?} q={q:?}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn a_chain_of_iid_nodes_is_the_chain_verifier() {
        let mut rng = SeededCoin::new(3);
        for _ in 0..50 {
            let p: Table = (0..4).map(|_| random_row(&mut rng, 3)).collect();
            let q: Table = (0..3).map(|_| random_row(&mut rng, 3)).collect();
            let draft: Vec<usize> = q.iter().map(|row| rng.categorical(row)).collect();
            let tokens: Vec<i64> = [vec![0], draft.iter().map(|&x| x as i64).collect()].concat();
            let (pf, qf) = (flat(&p), flat(&[q.clone(), uniform(1, 3)].concat()));
            let tree = Tree::new([&[-1, 0, 1, 2], &tokens, &[1; 4]], 3, Some(Probs::new(&qf, 3)), None).expect("valid");
            for seed in 0..5 {
                let c = verify_chain(Probs::new(&pf, 3), Probs::new(&qf[..9], 3), &draft, &mut SeededCoin::new(seed));
                let mut rows = Rows::new(Probs::new(&pf, 3), Some(Probs::new(&qf, 3)), None);
                let t = verify_tree(&tree, &mut rows, &mut SeededCoin::new(seed)).expect("valid");
                assert_eq!(c, ChainOutcome { accepted: t.path.len() - 1, token: t.token, fallback: t.fallback });
            }
        }
    }

    #[test]
    fn batch_matches_treewise_verification_with_one_coin() {
        let mut rng = SeededCoin::new(12);
        let cases: Vec<_> = (0..30).map(|_| random_tree(&mut rng, 5, 3)).collect();
        let p: Vec<f64> = cases.iter().flat_map(|c| flat(&c.1)).collect();
        let q: Vec<f64> = cases.iter().flat_map(|c| flat(&c.2)).collect();
        let trees: Vec<Tree> = (cases.iter().enumerate())
            .map(|(b, ([par, tok, kin], _, _))| {
                Tree::new([par, tok, kin], 3, Some(Probs::new(&q[b * 15..][..15], 3)), None)
            })
            .collect::<Result<_>>()
            .expect("valid");
        let batched = verify_batch(&trees, &p, Some(&q), (5, 3), &mut SeededCoin::new(4)).expect("valid");
        let mut coin = SeededCoin::new(4);
        for (b, o) in batched.iter().enumerate() {
            let one = verify_batch(&trees[b..=b], &p[b * 15..], Some(&q[b * 15..]), (5, 3), &mut coin).expect("valid");
            assert_eq!(*o, one[0]);
        }
    }

    #[test]
    fn degenerate_residual_falls_back_and_says_so() {
        // q exceeds p everywhere p is positive by rounding: a rejection leaves no residual mass.
        let p = vec![vec![0.5, 0.5 - 1e-5], vec![1.0, 0.0]];
        let q = vec![vec![0.5, 0.5], vec![1.0, 0.0]];
        let law = law([&[-1, 0], &[0, 1], &[1, 0]], &p, Some(&q));
        let fallback: f64 = law.iter().filter(|(o, _)| o.fallback).map(|(_, w)| w).sum();
        assert!((fallback - 2e-5).abs() < 1e-12, "P(fallback) = {fallback}");
        assert!(law.iter().all(|(o, _)| o.fallback == (o.path.len() == 1)));
    }
}
