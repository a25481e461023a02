//! Tree speculation: static-tree layouts, the target-side buffers of a tree, and lossless verification.
//!
//! A tree is a parent array plus tokens. Node 0 is the root, the last committed token (not a draft), with
//! `parents[0] = -1`; every other node i has `0 <= parents[i] < i`, so nodes are in topological order. A
//! node's children are the nodes whose parent it is, in increasing node index: that order is part of the
//! draft law (draw order for sampled children, rank order for top-k). `p[i]` is the target law of the token
//! after node i, `q[i]` the draft law its children were drawn from.
//!
//! Verification walks from the root (Miao et al. 2024, SpecInfer, arXiv 2305.09781; Jeon et al. 2024,
//! arXiv 2402.14160; Li et al. 2024, EAGLE). At a node, with r = p\[node\], the children are tried one by
//! one, by the rule of the node's [`Kind`]:
//!
//! * `Deterministic` (top-k or any set chosen without the target's randomness): δ-verification, accept
//!   child x with probability r(x), else r <- norm(r with r(x) = 0);
//! * `IidSampled` (children drawn i.i.d. from q): recursive rejection sampling (RRS), accept x with
//!   probability min(1, r(x)/q(x)), else r <- norm((r − q)+); duplicates are tried too and update r;
//! * `WithoutReplacement` (children drawn one after another without replacement): RRS in draw order with
//!   q_j = q with the earlier siblings' tokens zeroed and renormalised, r <- norm((r − q_j)+).
//!
//! Acceptance descends into the child with a fresh r = p\[child\]. At a leaf, or when every child is
//! rejected, the walk emits y ~ r and stops. Each step is lossless (lossless.md, Lemmas 2 and 3), so by
//! induction over depth the emitted tokens (path tokens, then y) are distributed as sampling from p token
//! by token. A rejected child x had r(x) < q_j(x), so its residual mass is 0: the emitted token is never a
//! rejected sibling. A residual with no finite positive mass (p == q up to rounding) falls back to
//! p\[node\] and is reported.
//!
//! The chain verifier of [`crate::chain`] is this walk on a path whose nodes are all `IidSampled` with one
//! child; both run the one node procedure here.

use std::collections::HashMap;

use crate::chain::{check_prob_row, tuple, Flaw, ProbTable};
use crate::coin::{enumerate_law, Coin};
use crate::error::{ChoiceProblem, Index, SamplerError};

/// The most nodes (root included) that [`static_tree`] builds.
pub const MAX_TREE_NODES: usize = 4096;

/// How a node's children were drafted, which decides how they are verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A set chosen without the target's randomness (top-k ranks): δ-verification.
    Deterministic = 0,
    /// Independent draws, with replacement, from q\[node\]: RRS with q_j = q.
    IidSampled = 1,
    /// Draws one after another without replacement from q\[node\]: RRS with renormalised q_j.
    WithoutReplacement = 2,
}

impl Kind {
    /// The kind with code 0, 1 or 2, as in the `kinds` arrays.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Deterministic),
            1 => Some(Self::IidSampled),
            2 => Some(Self::WithoutReplacement),
            _ => None,
        }
    }

    /// Whether the children were sampled from q (and so need q to be verified).
    pub fn is_sampled(self) -> bool {
        self != Self::Deterministic
    }
}

/// A validated tree: parents, tokens and kinds, with each node's children listed in increasing index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    parents: Vec<Option<usize>>,
    /// `tokens[0]` (the root's) is never read.
    tokens: Vec<usize>,
    kinds: Vec<Kind>,
    children: Vec<Vec<usize>>,
}

/// Checks a parent array (node 0 the root with -1, `0 <= parents[i] < i` otherwise) and returns it with
/// `None` for the root. `batch` only labels positions in error messages.
pub fn check_parents(
    parents: &[i64],
    batch: Option<usize>,
) -> Result<Vec<Option<usize>>, SamplerError> {
    if parents.is_empty() {
        return Err(SamplerError::Empty {
            arg: "parents",
            axis: "node",
        });
    }
    parents
        .iter()
        .enumerate()
        .map(|(node, &parent)| {
            let bad = || SamplerError::Parent {
                at: at(batch, &[node]),
                node,
                parent,
            };
            match (node, usize::try_from(parent)) {
                (0, _) if parent == -1 => Ok(None),
                (0, _) => Err(bad()),
                (_, Ok(p)) if p < node => Ok(Some(p)),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// An index with the batch position, if any, in front.
fn at(batch: Option<usize>, idx: &[usize]) -> Index {
    Index(batch.into_iter().chain(idx.iter().copied()).collect())
}

/// Each node's children in increasing index.
fn children_of(parents: &[Option<usize>]) -> Vec<Vec<usize>> {
    let mut children = vec![Vec::new(); parents.len()];
    for (node, parent) in parents.iter().enumerate() {
        if let Some(p) = parent {
            children[*p].push(node);
        }
    }
    children
}

impl Tree {
    /// Validates the structure of one tree: the parent array, kinds in 0..=2 for every node, tokens in
    /// [0, vocab) for nodes >= 1, and distinct tokens among `WithoutReplacement` siblings.
    pub fn new(
        parents: &[i64],
        tokens: &[i64],
        kinds: &[i64],
        vocab: usize,
        batch: Option<usize>,
    ) -> Result<Self, SamplerError> {
        for (arg, len) in [("tokens", tokens.len()), ("kinds", kinds.len())] {
            if len != parents.len() {
                return Err(SamplerError::Shape {
                    arg,
                    detail: format!("{len} nodes, but parents has {}", parents.len()),
                });
            }
        }
        let parents = check_parents(parents, batch)?;
        let kinds = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                Kind::from_code(kind).ok_or(SamplerError::Kind {
                    at: at(batch, &[i]),
                    kind,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tokens = tokens
            .iter()
            .enumerate()
            .map(|(i, &token)| match usize::try_from(token) {
                _ if i == 0 => Ok(0),
                Ok(x) if x < vocab => Ok(x),
                _ => Err(SamplerError::TokenOutOfRange {
                    arg: "tokens",
                    at: at(batch, &[i]),
                    token,
                    vocab,
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let children = children_of(&parents);
        for (node, kids) in children.iter().enumerate() {
            if kinds[node] != Kind::WithoutReplacement {
                continue;
            }
            for (j, &child) in kids.iter().enumerate() {
                if let Some(&first) = kids[..j].iter().find(|&&c| tokens[c] == tokens[child]) {
                    return Err(SamplerError::DuplicateSibling {
                        at: at(batch, &[child]),
                        token: tokens[child],
                        first,
                    });
                }
            }
        }
        Ok(Self {
            parents,
            tokens,
            kinds,
            children,
        })
    }

    /// The path root -> x_1 -> … -> x_G of a drafted chain: every node `IidSampled` with one child.
    pub fn chain(draft: &[usize]) -> Self {
        let parents: Vec<Option<usize>> = (0..=draft.len()).map(|i| i.checked_sub(1)).collect();
        Self {
            children: children_of(&parents),
            parents,
            tokens: std::iter::once(0).chain(draft.iter().copied()).collect(),
            kinds: vec![Kind::IidSampled; draft.len() + 1],
        }
    }

    /// Number of nodes, root included.
    pub fn len(&self) -> usize {
        self.parents.len()
    }

    /// Never true: a tree has at least its root.
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// The parent of `node`, `None` for the root.
    pub fn parent(&self, node: usize) -> Option<usize> {
        self.parents[node]
    }

    /// The token of `node` (meaningless for the root).
    pub fn token(&self, node: usize) -> usize {
        self.tokens[node]
    }

    /// How the children of `node` were drafted.
    pub fn kind(&self, node: usize) -> Kind {
        self.kinds[node]
    }

    /// The children of `node`, in increasing index (draw or rank order).
    pub fn children(&self, node: usize) -> &[usize] {
        &self.children[node]
    }

    /// Checks that q is there for every node whose children need it (sampled kinds; any node with children
    /// under [`Flaw::TopkWithRatio`]) and that every sampled child has q\[parent\]\[token\] > 0. The rest of
    /// q's rows are validated when they are used.
    pub fn check_draft_laws<Q: ProbTable + ?Sized>(
        &self,
        q: Option<&Q>,
        flaw: Flaw,
        batch: Option<usize>,
    ) -> Result<(), SamplerError> {
        for node in 0..self.len() {
            let kind = self.kind(node);
            if self.children(node).is_empty() || !(kind.is_sampled() || flaw == Flaw::TopkWithRatio)
            {
                continue;
            }
            let Some(q) = q else {
                return Err(SamplerError::MissingQ {
                    reason: if kind.is_sampled() {
                        format!(
                            "node {} has {kind:?} children, which need the q they were drawn from",
                            at(batch, &[node])
                        )
                    } else {
                        "flaw \"topk_with_ratio\" verifies with q".to_owned()
                    },
                });
            };
            if !kind.is_sampled() {
                continue;
            }
            for &child in self.children(node) {
                let x = self.token(child);
                if x >= q.row_len(node) {
                    return Err(SamplerError::Shape {
                        arg: "q",
                        detail: format!(
                            "row q{} has {} entries, fewer than the vocabulary",
                            at(batch, &[node]),
                            q.row_len(node)
                        ),
                    });
                }
                if q.prob(node, x) == 0.0 {
                    return Err(SamplerError::ZeroChildProbability {
                        at: at(batch, &[child]),
                        token: x,
                        q_at: at(batch, &[node]),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The p and q tables of one tree, with each row validated the first time the walk reads it.
///
/// Only the p rows of visited nodes and the q rows of nodes whose children are tried are read, so only
/// those are checked (finite, non-negative, summing to 1 within [`crate::chain::NORM_TOLERANCE`]).
pub struct Rows<'a, P: ?Sized, Q: ?Sized> {
    p: &'a P,
    q: Option<&'a Q>,
    vocab: usize,
    batch: Option<usize>,
    p_checked: Vec<bool>,
    q_checked: Vec<bool>,
}

impl<'a, P: ProbTable + ?Sized, Q: ProbTable + ?Sized> Rows<'a, P, Q> {
    /// Tables whose rows are checked on first use; `p` must have at least one row.
    pub fn lazy(p: &'a P, q: Option<&'a Q>, batch: Option<usize>) -> Self {
        Self {
            p,
            q,
            vocab: p.row_len(0),
            batch,
            p_checked: vec![false; p.rows()],
            q_checked: vec![false; q.map_or(0, |q| q.rows())],
        }
    }

    /// Tables the caller validated already.
    pub fn validated(p: &'a P, q: Option<&'a Q>) -> Self {
        Self {
            p_checked: vec![true; p.rows()],
            q_checked: vec![true; q.map_or(0, |q| q.rows())],
            ..Self::lazy(p, q, None)
        }
    }

    /// The p table, once row `node` is known to be a probability vector.
    fn p(&mut self, node: usize) -> Result<&'a P, SamplerError> {
        if !self.p_checked[node] {
            let batch = self.batch;
            check_prob_row("p", self.p, node, self.vocab, &|idx: &[usize]| {
                at(batch, idx)
            })?;
            self.p_checked[node] = true;
        }
        Ok(self.p)
    }

    /// The q table, once row `node` is known to be a probability vector.
    fn q(&mut self, node: usize) -> Result<&'a Q, SamplerError> {
        let q = self.q.ok_or_else(|| SamplerError::MissingQ {
            reason: format!("node {node}'s children are verified with q"),
        })?;
        if !self.q_checked[node] {
            let batch = self.batch;
            check_prob_row("q", q, node, self.vocab, &|idx: &[usize]| at(batch, idx))?;
            self.q_checked[node] = true;
        }
        Ok(q)
    }
}

/// Row `i` of a table, widened to f64.
pub(crate) fn row_of<T: ProbTable + ?Sized>(t: &T, i: usize) -> Vec<f64> {
    (0..t.row_len(i)).map(|j| t.prob(i, j)).collect()
}

/// A probability row read in place from its table until it is first modified, then owned.
enum Row<'a, T: ?Sized> {
    Table(&'a T, usize),
    Owned(Vec<f64>),
}

impl<T: ProbTable + ?Sized> Row<'_, T> {
    fn get(&self, x: usize) -> f64 {
        match self {
            Self::Table(t, i) => t.prob(*i, x),
            Self::Owned(w) => w[x],
        }
    }

    fn owned(&mut self) -> &mut Vec<f64> {
        if let Self::Table(t, i) = self {
            *self = Self::Owned(row_of(*t, *i));
        }
        match self {
            Self::Owned(w) => w,
            Self::Table(..) => unreachable!("just converted"),
        }
    }

    /// Divides by the sum; returns false (and leaves the row) if the sum is not finite and positive.
    fn normalise(&mut self) -> bool {
        let w = self.owned();
        let mass: f64 = w.iter().sum();
        if !(mass > 0.0 && mass.is_finite()) {
            return false;
        }
        w.iter_mut().for_each(|v| *v /= mass);
        true
    }
}

/// The residual target r at a node: starts as p\[node\] (taken as normalised, as validated), and is
/// renormalised lazily, only before it is tested again, so a residual that is only sampled from is never
/// rescaled.
struct Residual<'a, P: ?Sized> {
    row: Row<'a, P>,
    normalised: bool,
}

impl<'a, P: ProbTable + ?Sized> Residual<'a, P> {
    fn fresh(p: &'a P, node: usize) -> Self {
        Self {
            row: Row::Table(p, node),
            normalised: true,
        }
    }

    /// r(x), normalised; 0 everywhere once the residual has no usable mass.
    fn prob(&mut self, x: usize) -> f64 {
        if !self.normalised {
            if !self.row.normalise() {
                self.row.owned().fill(0.0);
            }
            self.normalised = true;
        }
        self.row.get(x)
    }

    /// r <- (r − q_j)+ (renormalised before the next test).
    fn subtract<Q: ProbTable + ?Sized>(&mut self, q_j: &Row<'_, Q>) {
        for (v, w) in self.row.owned().iter_mut().enumerate() {
            *w = (*w - q_j.get(v)).max(0.0);
        }
        self.normalised = false;
    }

    /// r(x) <- 0 (renormalised before the next test).
    fn remove(&mut self, x: usize) {
        self.row.owned()[x] = 0.0;
        self.normalised = false;
    }

    /// y ~ r, or y ~ p\[node\] with `true` when r has no finite positive mass.
    fn sample(self, p: &P, node: usize, coin: &mut (impl Coin + ?Sized)) -> (usize, bool) {
        let w = match self.row {
            Row::Table(t, i) => row_of(t, i),
            Row::Owned(w) => w,
        };
        let mass: f64 = w.iter().sum();
        if mass > 0.0 && mass.is_finite() {
            (coin.categorical(&w), false)
        } else {
            (coin.categorical(&row_of(p, node)), true)
        }
    }
}

/// The Bernoulli test `u < t`, or `u <= t` under [`Flaw::NonStrict`] (uniforms are multiples of 2^-53).
fn accept(coin: &mut (impl Coin + ?Sized), t: f64, flaw: Flaw) -> bool {
    let t = if flaw == Flaw::NonStrict {
        t + f64::EPSILON / 2.0
    } else {
        t
    };
    coin.bernoulli(t)
}

/// What trying a node's children gave.
enum Step {
    /// This child was accepted.
    Descend(usize),
    /// Every child was rejected; emit `token` (from the residual, or from p if `fallback`).
    Stop { token: usize, fallback: bool },
}

/// The node procedure: tries the children of `node` (which has some) by the rule of its kind.
///
/// Draws one Bernoulli per tried child and, if all are rejected, one categorical.
fn try_children<P, Q, C>(
    tree: &Tree,
    node: usize,
    rows: &mut Rows<'_, P, Q>,
    coin: &mut C,
    flaw: Flaw,
) -> Result<Step, SamplerError>
where
    P: ProbTable + ?Sized,
    Q: ProbTable + ?Sized,
    C: Coin + ?Sized,
{
    let kind = tree.kind(node);
    // The rule actually applied: the SpecInfer ratio rule on a top-k node is the flaw.
    let rule = match (kind, flaw) {
        (Kind::Deterministic, Flaw::TopkWithRatio) => Kind::IidSampled,
        _ => kind,
    };
    let p = rows.p(node)?;
    let q = match rule {
        Kind::Deterministic => None,
        _ => Some(rows.q(node)?),
    };
    let mut order = tree.children(node).to_vec();
    if let (Flaw::SortedSiblings, true, Some(q)) = (flaw, kind.is_sampled(), q) {
        // Stable: equal q keeps draw order.
        order.sort_by(|&a, &b| {
            q.prob(node, tree.token(b))
                .total_cmp(&q.prob(node, tree.token(a)))
        });
    }
    let mut r = Residual::fresh(p, node);
    // q_j, the law of the next child given the earlier ones: None for δ-verification.
    let mut q_j = q.map(|q| Row::Table(q, node));
    let mut tried: Vec<usize> = Vec::with_capacity(order.len());
    for &child in &order {
        let x = tree.token(child);
        let accepted = match &mut q_j {
            None => accept(coin, r.prob(x), flaw),
            Some(q_j) => {
                if let (Kind::WithoutReplacement, false, Some(&last)) =
                    (rule, flaw == Flaw::NoRenorm, tried.last())
                {
                    // Drawn without replacement: the earlier siblings are out of the running.
                    q_j.owned()[last] = 0.0;
                    q_j.normalise();
                }
                accept(coin, r.prob(x) / q_j.get(x), flaw)
            }
        };
        if accepted {
            return Ok(Step::Descend(child));
        }
        match &q_j {
            None => r.remove(x),
            // The flaw: a duplicate i.i.d. child is rejected without applying its update.
            Some(_)
                if flaw == Flaw::SkipDupUpdate
                    && kind == Kind::IidSampled
                    && tried.contains(&x) => {}
            Some(q_j) => r.subtract(q_j),
        }
        tried.push(x);
    }
    let (token, fallback) = r.sample(p, node, coin);
    debug_assert!(
        fallback || !tried.contains(&token),
        "emitted token {token} is a rejected child of node {node}"
    );
    Ok(Step::Stop { token, fallback })
}

/// What verifying one tree emits: the accepted nodes' tokens, then `token`.
///
/// Ordered by (path, token, fallback), the order in which exact laws are listed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreeOutcome {
    /// Accepted node indices from the root (included), each the parent of the next.
    pub path: Vec<usize>,
    /// The token emitted after the path: a correction if the last node's children were all rejected,
    /// else (at a leaf) the bonus.
    pub token: usize,
    /// The residual was degenerate and `token` was drawn from the raw p row instead.
    pub fallback: bool,
}

/// Verifies one tree: walks from the root with the node procedure, descending on acceptance.
///
/// Errors only if a row read on the way fails its check (see [`Rows`]).
pub fn verify<P, Q, C>(
    tree: &Tree,
    rows: &mut Rows<'_, P, Q>,
    coin: &mut C,
    flaw: Flaw,
) -> Result<TreeOutcome, SamplerError>
where
    P: ProbTable + ?Sized,
    Q: ProbTable + ?Sized,
    C: Coin + ?Sized,
{
    let mut path = vec![0];
    let mut node = 0;
    loop {
        if tree.children(node).is_empty() {
            let bonus_row = match (flaw, tree.parent(node)) {
                (Flaw::BonusRowOff, Some(parent)) => parent,
                _ => node,
            };
            let p = rows.p(bonus_row)?;
            let token = coin.categorical(&row_of(p, bonus_row));
            return Ok(TreeOutcome {
                path,
                token,
                fallback: false,
            });
        }
        match try_children(tree, node, rows, coin, flaw)? {
            Step::Descend(child) => {
                path.push(child);
                node = child;
            }
            Step::Stop { token, fallback } => {
                return Ok(TreeOutcome {
                    path,
                    token,
                    fallback,
                })
            }
        }
    }
}

/// One tree's integer arrays, as passed in: parents, tokens and kind codes, one entry per node.
#[derive(Clone, Copy, Debug)]
pub struct TreeArrays<'a> {
    pub parents: &'a [i64],
    pub tokens: &'a [i64],
    pub kinds: &'a [i64],
}

/// Checks array shapes for tree verification: parents, tokens and kinds (B, n), p (B, n, V) and q (B, n, V)
/// if `batched`, else without the B axis. B, n and V must be positive; q may be absent.
pub fn check_tree_shapes(
    batched: bool,
    parents: &[usize],
    tokens: &[usize],
    kinds: &[usize],
    p: &[usize],
    q: Option<&[usize]>,
) -> Result<(), SamplerError> {
    let lead = usize::from(batched);
    let dims = [
        ("parents", Some(parents), 1 + lead),
        ("tokens", Some(tokens), 1 + lead),
        ("kinds", Some(kinds), 1 + lead),
        ("p", Some(p), 2 + lead),
        ("q", q, 2 + lead),
    ];
    for (arg, shape, ndim) in dims {
        if let Some(shape) = shape.filter(|s| s.len() != ndim) {
            return Err(SamplerError::Ndim {
                arg,
                expected: ndim,
                got: shape.len(),
            });
        }
    }
    let (nodes, n) = (&parents[..=lead], parents[lead]);
    if parents[..lead].contains(&0) {
        return Err(SamplerError::Empty {
            arg: "parents",
            axis: "batch",
        });
    }
    if n == 0 {
        return Err(SamplerError::Empty {
            arg: "parents",
            axis: "node",
        });
    }
    for (arg, shape) in [("tokens", tokens), ("kinds", kinds), ("p", &p[..=lead])] {
        if shape != nodes {
            let axes = if batched { "(B, n)" } else { "(n,)" };
            return Err(SamplerError::Shape {
                arg,
                detail: format!(
                    "{}, but parents is {} and {arg} needs {axes} first",
                    tuple(if arg == "p" { p } else { shape }),
                    tuple(parents)
                ),
            });
        }
    }
    if p[lead + 1] == 0 {
        return Err(SamplerError::Empty {
            arg: "p",
            axis: "vocabulary",
        });
    }
    if let Some(q) = q.filter(|&q| q != p) {
        return Err(SamplerError::Shape {
            arg: "q",
            detail: format!("{}, expected p's shape {}", tuple(q), tuple(p)),
        });
    }
    Ok(())
}

/// Validates one tree's structure and its tables' shapes (p and q with one row per node, V > 0).
pub fn check_tree<P, Q>(
    arrays: TreeArrays<'_>,
    p: &P,
    q: Option<&Q>,
    flaw: Flaw,
    batch: Option<usize>,
) -> Result<Tree, SamplerError>
where
    P: ProbTable + ?Sized,
    Q: ProbTable + ?Sized,
{
    let n = arrays.parents.len();
    if n == 0 {
        return Err(SamplerError::Empty {
            arg: "parents",
            axis: "node",
        });
    }
    let rows = [("p", Some(p.rows())), ("q", q.map(|q| q.rows()))];
    for (arg, count) in rows {
        if let Some(count) = count.filter(|&c| c != n) {
            return Err(SamplerError::Shape {
                arg,
                detail: format!(
                    "{arg}{} has {count} rows, expected one per node ({n})",
                    at(batch, &[])
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
    let tree = Tree::new(arrays.parents, arrays.tokens, arrays.kinds, vocab, batch)?;
    tree.check_draft_laws(q, flaw, batch)?;
    Ok(tree)
}

/// Validates every tree's structure, then verifies the trees in order with one coin.
///
/// Probability rows are checked lazily as the walk reads them, so a bad row in tree b is reported only
/// after trees 0..b were verified (and drew from the coin).
pub fn verify_batch<P, Q, C>(
    trees: &[TreeArrays<'_>],
    p: &[P],
    q: Option<&[Q]>,
    coin: &mut C,
    flaw: Flaw,
) -> Result<Vec<TreeOutcome>, SamplerError>
where
    P: ProbTable,
    Q: ProbTable,
    C: Coin + ?Sized,
{
    if trees.is_empty() {
        return Err(SamplerError::Empty {
            arg: "parents",
            axis: "batch",
        });
    }
    for (arg, len) in [("p", Some(p.len())), ("q", q.map(<[Q]>::len))] {
        if let Some(len) = len.filter(|&len| len != trees.len()) {
            return Err(SamplerError::Shape {
                arg,
                detail: format!("batch size {len} differs from parents' {}", trees.len()),
            });
        }
    }
    let checked = trees
        .iter()
        .enumerate()
        .map(|(b, &arrays)| check_tree(arrays, &p[b], q.map(|q| &q[b]), flaw, Some(b)))
        .collect::<Result<Vec<_>, _>>()?;
    checked
        .iter()
        .enumerate()
        .map(|(b, tree)| {
            let mut rows = Rows::lazy(&p[b], q.map(|q| &q[b]), Some(b));
            verify(tree, &mut rows, coin, flaw)
        })
        .collect()
}

/// The exact output law of [`verify`] on one tree: every [`TreeOutcome`] with its probability, sorted,
/// probabilities summing to 1 up to rounding. Errors if a reachable row is malformed.
pub fn exact_law<P, Q>(
    arrays: TreeArrays<'_>,
    p: &P,
    q: Option<&Q>,
    flaw: Flaw,
) -> Result<Vec<(TreeOutcome, f64)>, SamplerError>
where
    P: ProbTable + ?Sized,
    Q: ProbTable + ?Sized,
{
    let tree = check_tree(arrays, p, q, flaw, None)?;
    let mut rows = Rows::lazy(p, q, None);
    let mut failure = None;
    let law = enumerate_law(|coin| match verify(&tree, &mut rows, coin, flaw) {
        Ok(outcome) => Some(outcome),
        Err(e) => {
            failure.get_or_insert(e);
            None
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(law
            .into_iter()
            .filter_map(|(o, w)| o.map(|o| (o, w)))
            .collect()),
    }
}

/// Lays out an EAGLE/Medusa static tree from its "choices": each path lists child ranks from the root.
///
/// Returns (parents, ranks) with node 0 the root (parent and rank -1) and nodes sorted by (path length,
/// lexicographic path), so every parent precedes its children and siblings come in rank order.
pub fn static_tree(choices: &[Vec<i64>]) -> Result<(Vec<i64>, Vec<i64>), SamplerError> {
    let nodes = choices.len() + 1;
    if nodes > MAX_TREE_NODES {
        return Err(SamplerError::TooManyNodes {
            nodes,
            limit: MAX_TREE_NODES,
        });
    }
    let bad = |path, problem| Err(SamplerError::Choice { path, problem });
    let mut first_seen: HashMap<&[i64], usize> = HashMap::with_capacity(choices.len());
    for (i, path) in choices.iter().enumerate() {
        if path.is_empty() {
            return bad(i, ChoiceProblem::Empty);
        }
        if let Some((position, &rank)) = path.iter().enumerate().find(|(_, &r)| r < 0) {
            return bad(i, ChoiceProblem::NegativeRank { position, rank });
        }
        if let Some(&first) = first_seen.get(path.as_slice()) {
            return bad(i, ChoiceProblem::Duplicate { first });
        }
        first_seen.insert(path.as_slice(), i);
    }
    if let Some(i) = choices
        .iter()
        .position(|path| path.len() > 1 && !first_seen.contains_key(&path[..path.len() - 1]))
    {
        return bad(i, ChoiceProblem::MissingParent);
    }
    let mut sorted: Vec<&[i64]> = choices.iter().map(Vec::as_slice).collect();
    sorted.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
    let node_of: HashMap<&[i64], i64> = sorted.iter().zip(1..).map(|(&p, i)| (p, i)).collect();
    let parents = std::iter::once(-1)
        .chain(sorted.iter().map(|path| match path.len() {
            1 => 0,
            len => node_of[&path[..len - 1]],
        }))
        .collect();
    let ranks = std::iter::once(-1)
        .chain(sorted.iter().map(|path| path[path.len() - 1]))
        .collect();
    Ok((parents, ranks))
}

/// What a target forward over a tree needs, derived from its parent array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeBuffers {
    /// Depth of every node, root 0 (position offset of its token).
    pub depth: Vec<usize>,
    /// n × n row-major: entry (i, j) is set iff j is i or an ancestor of i (the root included).
    pub ancestors: Vec<bool>,
    /// For every leaf (node without children), in increasing index: node indices from the root to it.
    pub leaf_paths: Vec<Vec<usize>>,
}

/// Depths, the ancestor mask and root-to-leaf paths of the tree with parent array `parents`.
pub fn tree_buffers(parents: &[i64], batch: Option<usize>) -> Result<TreeBuffers, SamplerError> {
    let parents = check_parents(parents, batch)?;
    let n = parents.len();
    let mut depth = vec![0; n];
    let mut ancestors = vec![false; n * n];
    for (i, parent) in parents.iter().enumerate() {
        if let Some(p) = *parent {
            depth[i] = depth[p] + 1;
            // p < i, so row p is complete: row i is row p plus i itself.
            ancestors.copy_within(p * n..p * n + p + 1, i * n);
        }
        ancestors[i * n + i] = true;
    }
    let children = children_of(&parents);
    let leaf_paths = (0..n)
        .filter(|&i| children[i].is_empty())
        .map(|leaf| {
            let mut path: Vec<usize> = std::iter::successors(Some(leaf), |&i| parents[i]).collect();
            path.reverse();
            path
        })
        .collect();
    Ok(TreeBuffers {
        depth,
        ancestors,
        leaf_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coin::{FixedCoin, SeededCoin};

    type Table = Vec<Vec<f64>>;

    const U_MAX: f64 = 1.0 - f64::EPSILON / 2.0;

    /// Medusa's 63-node `mc_sim_7b_63` choices (EAGLE's list of that name keeps 25 of them).
    fn mc_sim_7b_63() -> Vec<Vec<i64>> {
        let paths: &[&[i64]] = &[
            &[0],
            &[0, 0],
            &[1],
            &[0, 1],
            &[2],
            &[0, 0, 0],
            &[1, 0],
            &[0, 2],
            &[3],
            &[0, 3],
            &[4],
            &[0, 4],
            &[2, 0],
            &[0, 5],
            &[0, 0, 1],
            &[5],
            &[0, 6],
            &[6],
            &[0, 7],
            &[0, 1, 0],
            &[1, 1],
            &[7],
            &[0, 8],
            &[0, 0, 2],
            &[3, 0],
            &[0, 9],
            &[8],
            &[9],
            &[1, 0, 0],
            &[0, 2, 0],
            &[1, 2],
            &[0, 0, 3],
            &[4, 0],
            &[2, 1],
            &[0, 0, 4],
            &[0, 0, 5],
            &[0, 0, 0, 0],
            &[0, 0, 0, 1],
            &[0, 0, 6],
            &[0, 3, 0],
            &[5, 0],
            &[1, 3],
            &[0, 0, 7],
            &[0, 0, 8],
            &[0, 0, 9],
            &[6, 0],
            &[0, 4, 0],
            &[1, 4],
            &[7, 0],
            &[0, 1, 1],
            &[2, 0, 0],
            &[3, 1],
            &[2, 2],
            &[8, 0],
            &[0, 5, 0],
            &[1, 5],
            &[1, 0, 1],
            &[0, 2, 1],
            &[9, 0],
            &[0, 6, 0],
            &[0, 0, 0, 2],
            &[1, 6],
            &[0, 7, 0],
        ];
        paths.iter().map(|p| p.to_vec()).collect()
    }

    /// The 25-path default tree of specref's EAGLE driver (4 / 8 / 8 / 3 / 2 nodes at depths 1-5).
    fn default_25() -> Vec<Vec<i64>> {
        let paths: &[&[i64]] = &[
            &[0],
            &[1],
            &[2],
            &[3],
            &[0, 0],
            &[0, 1],
            &[0, 2],
            &[1, 0],
            &[1, 1],
            &[2, 0],
            &[2, 1],
            &[3, 0],
            &[0, 0, 0],
            &[0, 0, 1],
            &[0, 0, 2],
            &[0, 1, 0],
            &[0, 1, 1],
            &[0, 2, 0],
            &[0, 2, 1],
            &[1, 0, 0],
            &[0, 0, 0, 0],
            &[0, 0, 0, 1],
            &[0, 0, 0, 2],
            &[0, 0, 0, 0, 0],
            &[0, 0, 0, 0, 1],
        ];
        paths.iter().map(|p| p.to_vec()).collect()
    }

    /// Checks the layout of `static_tree(choices)` and returns its depth histogram (depth 1 first).
    fn check_layout(choices: &[Vec<i64>]) -> Vec<usize> {
        let (parents, ranks) = static_tree(choices).expect("valid choices");
        let n = choices.len() + 1;
        assert_eq!((parents.len(), ranks.len()), (n, n));
        assert_eq!((parents[0], ranks[0]), (-1, -1));
        // Rebuild each node's path from parents and ranks: it must be a choice, sorted order kept.
        let mut paths: Vec<Vec<i64>> = vec![vec![]];
        for i in 1..n {
            let parent = parents[i];
            assert!(0 <= parent && parent < i as i64, "node {i} parent {parent}");
            let mut path = paths[parent as usize].clone();
            path.push(ranks[i]);
            paths.push(path);
        }
        let mut expect = choices.to_vec();
        expect.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        assert_eq!(paths[1..], expect[..]);
        let tree = Tree::new(&parents, &vec![0; n], &vec![0; n], 1, None).expect("valid");
        for node in 0..n {
            let kid_ranks: Vec<i64> = tree.children(node).iter().map(|&c| ranks[c]).collect();
            assert!(
                kid_ranks.windows(2).all(|w| w[0] < w[1]),
                "siblings in rank order"
            );
        }
        let depth = tree_buffers(&parents, None).expect("valid").depth;
        let max = depth.iter().copied().max().unwrap_or(0);
        (1..=max)
            .map(|d| depth.iter().filter(|&&x| x == d).count())
            .collect()
    }

    #[test]
    fn static_tree_lays_out_the_eagle_defaults_and_a_chain() {
        let defaults = mc_sim_7b_63();
        assert_eq!(defaults.len(), 63);
        assert_eq!(check_layout(&defaults), vec![10, 28, 22, 3]);
        assert_eq!(check_layout(&default_25()), vec![4, 8, 8, 3, 2]);
        let chain: Vec<Vec<i64>> = (1..=4).map(|len| vec![0; len]).collect();
        assert_eq!(
            static_tree(&chain),
            Ok((vec![-1, 0, 1, 2, 3], vec![-1, 0, 0, 0, 0]))
        );
        assert_eq!(static_tree(&[]), Ok((vec![-1], vec![-1])));
        // Gaps in ranks are allowed; siblings still come in rank order.
        let gappy = vec![vec![3], vec![1], vec![3, 5], vec![3, 0]];
        assert_eq!(
            static_tree(&gappy),
            Ok((vec![-1, 0, 0, 2, 2], vec![-1, 1, 3, 0, 5]))
        );
    }

    #[test]
    fn static_tree_refuses_malformed_choices() {
        let err = |c: &[Vec<i64>]| static_tree(c).unwrap_err();
        let choice = |path, problem| SamplerError::Choice { path, problem };
        assert_eq!(err(&[vec![0], vec![]]), choice(1, ChoiceProblem::Empty));
        let e = err(&[vec![0], vec![0, -2]]);
        assert_eq!(
            e,
            choice(
                1,
                ChoiceProblem::NegativeRank {
                    position: 1,
                    rank: -2
                }
            )
        );
        assert_eq!(
            e.to_string(),
            "choices[1] has rank -2 at position 1; ranks must be >= 0"
        );
        let e = err(&[vec![0], vec![1], vec![0]]);
        assert_eq!(e, choice(2, ChoiceProblem::Duplicate { first: 0 }));
        assert_eq!(e.to_string(), "choices[2] repeats choices[0]");
        assert_eq!(
            err(&[vec![0], vec![1, 0], vec![0, 0, 1]]),
            choice(1, ChoiceProblem::MissingParent)
        );
        let many: Vec<Vec<i64>> = (0..MAX_TREE_NODES as i64).map(|r| vec![r]).collect();
        assert!(static_tree(&many[..MAX_TREE_NODES - 1]).is_ok());
        assert_eq!(
            err(&many),
            SamplerError::TooManyNodes {
                nodes: MAX_TREE_NODES + 1,
                limit: MAX_TREE_NODES
            }
        );
    }

    #[test]
    fn buffers_of_a_hand_made_tree() {
        //      0
        //    1   2
        //   3 4   5
        //         6
        let b = tree_buffers(&[-1, 0, 0, 1, 1, 2, 5], None).expect("valid");
        assert_eq!(b.depth, vec![0, 1, 1, 2, 2, 2, 3]);
        let rows: Vec<Vec<usize>> = b
            .ancestors
            .chunks(7)
            .map(|r| (0..7).filter(|&j| r[j]).collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec![0],
                vec![0, 1],
                vec![0, 2],
                vec![0, 1, 3],
                vec![0, 1, 4],
                vec![0, 2, 5],
                vec![0, 2, 5, 6]
            ]
        );
        assert_eq!(
            b.leaf_paths,
            vec![vec![0, 1, 3], vec![0, 1, 4], vec![0, 2, 5, 6]]
        );
        let root = tree_buffers(&[-1], None).expect("valid");
        assert_eq!(
            (root.depth, root.ancestors, root.leaf_paths),
            (vec![0], vec![true], vec![vec![0]])
        );
    }

    #[test]
    fn parent_arrays_are_validated() {
        let err = |p: &[i64]| tree_buffers(p, Some(4)).unwrap_err();
        assert!(matches!(err(&[]), SamplerError::Empty { axis: "node", .. }));
        let e = err(&[0, 0]);
        assert_eq!(
            e.to_string(),
            "parents[4, 0] is 0; node 0 is the root and its parent must be -1"
        );
        let e = err(&[-1, 0, 2]);
        assert_eq!(
            e.to_string(),
            "parents[4, 2] is 2; node 2's parent must be an earlier node, in [0, 2)"
        );
        assert!(matches!(
            err(&[-1, -1]),
            SamplerError::Parent { node: 1, .. }
        ));
        assert!(matches!(
            err(&[-1, 0, 3, 1]),
            SamplerError::Parent { node: 2, .. }
        ));
    }

    fn uniform(n: usize, vocab: usize) -> Table {
        vec![vec![1.0 / vocab as f64; vocab]; n]
    }

    fn arrays<'a>(parents: &'a [i64], tokens: &'a [i64], kinds: &'a [i64]) -> TreeArrays<'a> {
        TreeArrays {
            parents,
            tokens,
            kinds,
        }
    }

    fn check<'a>(
        a: TreeArrays<'a>,
        p: &Table,
        q: Option<&Table>,
        flaw: Flaw,
    ) -> Result<Tree, SamplerError> {
        check_tree(a, p, q, flaw, Some(1))
    }

    #[test]
    fn tree_structure_is_validated() {
        let p = uniform(3, 3);
        let q = uniform(3, 3);
        let ok = check(
            arrays(&[-1, 0, 0], &[-7, 0, 1], &[2, 0, 0]),
            &p,
            Some(&q),
            Flaw::None,
        );
        assert!(ok.is_ok(), "the root's token is never read: {ok:?}");
        let err = |parents: &[i64], tokens: &[i64], kinds: &[i64], q: Option<&Table>| {
            check(arrays(parents, tokens, kinds), &p, q, Flaw::None).unwrap_err()
        };
        let e = err(&[-1, 0, 0], &[0, 0, 1], &[3, 0, 0], Some(&q));
        assert_eq!(
            e.to_string(),
            "kinds[1, 0] is 3; expected 0 (Deterministic), 1 (IidSampled) or 2 (WithoutReplacement)"
        );
        let e = err(&[-1, 0, 0], &[0, 0, 1], &[0, 0, -1], Some(&q));
        assert!(matches!(e, SamplerError::Kind { kind: -1, .. }), "{e}");
        let e = err(&[-1, 0, 0], &[0, 3, 1], &[0, 0, 0], Some(&q));
        assert_eq!(
            e.to_string(),
            "tokens[1, 1] is 3, outside the vocabulary [0, 3)"
        );
        let e = err(&[-1, 0, 0], &[0, 0, -1], &[0, 0, 0], Some(&q));
        assert!(
            matches!(e, SamplerError::TokenOutOfRange { token: -1, .. }),
            "{e}"
        );
        let e = err(&[-1, 0, 0], &[0, 2, 2], &[2, 0, 0], Some(&q));
        assert!(
            matches!(
                e,
                SamplerError::DuplicateSibling {
                    token: 2,
                    first: 1,
                    ..
                }
            ),
            "{e}"
        );
        // Duplicates are fine for the other kinds.
        for kind in [0, 1] {
            assert!(check(
                arrays(&[-1, 0, 0], &[0, 2, 2], &[kind, 0, 0]),
                &p,
                Some(&q),
                Flaw::None
            )
            .is_ok());
        }
        let e = err(&[-1, 0, 0], &[0, 0, 1], &[1, 0, 0], None);
        assert!(matches!(e, SamplerError::MissingQ { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("q is None, but node [1, 0] has IidSampled children"),
            "{e}"
        );
        // A leaf's kind needs no q; δ-nodes need none either, except under the ratio flaw.
        assert!(check(
            arrays(&[-1, 0], &[0, 0], &[0, 2]),
            &p[..2].to_vec(),
            None,
            Flaw::None
        )
        .is_ok());
        let e = check(
            arrays(&[-1, 0], &[0, 0], &[0, 2]),
            &p[..2].to_vec(),
            None,
            Flaw::TopkWithRatio,
        );
        assert!(matches!(e, Err(SamplerError::MissingQ { .. })));
        let zero_q = vec![vec![0.5, 0.0, 0.5]; 3];
        let e = err(&[-1, 0, 0], &[0, 0, 1], &[1, 0, 0], Some(&zero_q));
        assert_eq!(
            e.to_string(),
            "tokens[1, 2] = 1 has zero probability under q[1, 0], its parent's row, so q is not the law \
             the child was drawn from"
        );
        let e = err(&[-1, 0], &[0, 0], &[0, 0], Some(&q));
        assert!(matches!(e, SamplerError::Shape { arg: "p", .. }), "{e}");
        let e = err(&[-1, 0, 0], &[0, 0], &[0, 0, 0], Some(&q));
        assert!(
            matches!(e, SamplerError::Shape { arg: "tokens", .. }),
            "{e}"
        );
        let e = err(&[-1, 0, 0], &[0, 0, 0], &[0, 0], Some(&q));
        assert!(matches!(e, SamplerError::Shape { arg: "kinds", .. }), "{e}");
        let e = check(
            arrays(&[-1, 0, 0], &[0, 0, 0], &[0, 0, 0]),
            &p,
            Some(&uniform(2, 3)),
            Flaw::None,
        )
        .unwrap_err();
        assert!(matches!(e, SamplerError::Shape { arg: "q", .. }), "{e}");
        let e = err(&[0, 0, 0], &[0, 0, 0], &[0, 0, 0], Some(&q));
        assert!(matches!(e, SamplerError::Parent { node: 0, .. }), "{e}");
    }

    #[test]
    fn rows_are_validated_when_read() {
        // Node 2's p row is unnormalised but never visited when node 1 is certainly accepted.
        let p = vec![vec![0.0, 1.0], vec![0.5, 0.5], vec![0.9, 0.9]];
        let tree = arrays(&[-1, 0, 0], &[0, 1, 0], &[0, 0, 0]);
        assert!(exact_law(tree, &p, None::<&Table>, Flaw::None).is_ok());
        let tree = arrays(&[-1, 0, 0], &[0, 0, 1], &[0, 0, 0]);
        let e = exact_law(tree, &p, None::<&Table>, Flaw::None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p[2] sums to 1.8, not 1 (tolerance 1e-4); pass normalised probabilities"
        );
        // q rows are read only at nodes whose children are sampled.
        let q = vec![vec![0.5, 0.5], vec![f64::NAN, 0.5], vec![0.5, 0.5]];
        let p = uniform(3, 2);
        assert!(exact_law(
            arrays(&[-1, 0, 1], &[0, 1, 0], &[1, 0, 0]),
            &p,
            Some(&q),
            Flaw::None
        )
        .is_ok());
        let e = exact_law(
            arrays(&[-1, 0, 1], &[0, 1, 0], &[1, 1, 0]),
            &p,
            Some(&q),
            Flaw::None,
        );
        assert!(
            matches!(e, Err(SamplerError::NonFinite { arg: "q", .. })),
            "{e:?}"
        );
        // In a batch, the bad row is named with its batch position.
        let bad_p = vec![vec![0.5, 0.5], vec![-0.5, 1.5]];
        let trees = [arrays(&[-1, 0], &[0, 1], &[0, 0]); 2];
        let e = verify_batch(
            &trees,
            &[uniform(2, 2), bad_p],
            None::<&[Table]>,
            &mut FixedCoin { u: 0.0 },
            Flaw::None,
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "p[1, 1, 0] is -0.5; probabilities must be non-negative"
        );
    }

    /// Every outcome under a spread of fixed uniforms and seeds, for cases whose outcome is certain.
    fn all_outcomes(
        a: TreeArrays<'_>,
        p: &Table,
        q: Option<&Table>,
        flaw: Flaw,
    ) -> Vec<TreeOutcome> {
        let tree = check_tree(a, p, q, flaw, None).expect("valid");
        let mut rows = Rows::lazy(p, q, None);
        let mut outs = Vec::new();
        for u in [0.0, 0.3, 0.7, U_MAX] {
            outs.push(verify(&tree, &mut rows, &mut FixedCoin { u }, flaw).expect("valid"));
        }
        for seed in 0..50 {
            outs.push(verify(&tree, &mut rows, &mut SeededCoin::new(seed), flaw).expect("valid"));
        }
        outs.sort();
        outs.dedup();
        outs
    }

    fn outcome(path: &[usize], token: usize) -> TreeOutcome {
        TreeOutcome {
            path: path.to_vec(),
            token,
            fallback: false,
        }
    }

    #[test]
    fn delta_verification_follows_the_target() {
        // The root's children carry tokens 0, 1, 2; the target puts all mass on token 1 (node 2), and node
        // 2's row all on token 2 (the bonus).
        let p = vec![
            vec![0.0, 1.0, 0.0],
            vec![1.0, 0.0, 0.0],
            vec![0.0, 0.0, 1.0],
            vec![1.0, 0.0, 0.0],
        ];
        let tree = arrays(&[-1, 0, 0, 0], &[0, 0, 1, 2], &[0, 0, 0, 0]);
        assert_eq!(
            all_outcomes(tree, &p, None, Flaw::None),
            vec![outcome(&[0, 2], 2)]
        );
        // No child matches: the correction comes from p minus the rejected children, here token 2.
        let p = vec![
            vec![0.25, 0.25, 0.5],
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0],
        ];
        let tree = arrays(&[-1, 0, 0], &[0, 0, 1], &[0, 0, 0]);
        let law = exact_law(tree, &p, None::<&Table>, Flaw::None).expect("valid");
        let expect = [
            (vec![0, 1], 0, 0.25),
            (vec![0, 2], 0, 0.25),
            (vec![0], 2, 0.5),
        ];
        assert_eq!(law.len(), 3);
        for (path, token, w) in expect {
            let got = law
                .iter()
                .find(|(o, _)| o.path == path && o.token == token)
                .expect("outcome");
            assert!((got.1 - w).abs() < 1e-15, "{path:?}: {}", got.1);
        }
    }

    #[test]
    fn rrs_forced_rejection_then_forced_acceptance() {
        // Child 1 (token 0) has p = 0: rejected for every u. Then r = norm((p − q)+) = [0, 0.7, 0.3], and
        // child 2 (token 1) has ratio 0.7 / 0.25 > 1: accepted for every u. Bonus from p[2], one-hot on 2.
        let p = vec![
            vec![0.0, 0.6, 0.4],
            vec![1.0, 0.0, 0.0],
            vec![0.0, 0.0, 1.0],
        ];
        let q = vec![
            vec![0.5, 0.25, 0.25],
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0],
        ];
        let iid = arrays(&[-1, 0, 0], &[0, 0, 1], &[1, 0, 0]);
        assert_eq!(
            all_outcomes(iid, &p, Some(&q), Flaw::None),
            vec![outcome(&[0, 2], 2)]
        );
        // Without replacement: q_2 = [0, 0.5, 0.5], ratio 1.4: accepted as well.
        let wor = arrays(&[-1, 0, 0], &[0, 0, 1], &[2, 0, 0]);
        assert_eq!(
            all_outcomes(wor, &p, Some(&q), Flaw::None),
            vec![outcome(&[0, 2], 2)]
        );
        // Without replacement, where renormalising decides: p = [0, 0.5, 0.5], q = [0.5, 0.5, 0]. After
        // rejecting token 0, r = [0, 0, 1]; child 2 (token 1) is rejected, and the correction is token 2.
        let p = vec![
            vec![0.0, 0.5, 0.5],
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0],
        ];
        let q = vec![
            vec![0.5, 0.5, 0.0],
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0],
        ];
        assert_eq!(
            all_outcomes(wor, &p, Some(&q), Flaw::None),
            vec![outcome(&[0], 2)]
        );
    }

    #[test]
    fn iid_duplicates_are_tried_and_update_the_residual() {
        // Two i.i.d. children with the same token 0; p = [0.2, 0.3, 0.5], q = [0.6, 0.4, 0].
        // First: accept w.p. 1/3; else r1 = norm([0, 0, 0.5]) = [0, 0, 1]. Second: ratio 0; r2 = r1.
        let p = vec![
            vec![0.2, 0.3, 0.5],
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0],
        ];
        let q = vec![
            vec![0.6, 0.4, 0.0],
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0],
        ];
        let tree = arrays(&[-1, 0, 0], &[0, 0, 0], &[1, 0, 0]);
        let law = exact_law(tree, &p, Some(&q), Flaw::None).expect("valid");
        assert_eq!(law.len(), 2);
        assert_eq!(law[0].0, outcome(&[0], 2));
        assert!((law[0].1 - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(law[1].0, outcome(&[0, 1], 0));
        // With q = [0.5, 0.25, 0.25]: r1 = norm([0, 0.05, 0.25]) = [0, 1/6, 5/6]; the update at the duplicate
        // gives r2 = norm([0, 0, 0.583]) = [0, 0, 1]; skipping it leaves r1 and emits token 1 too.
        let q = vec![
            vec![0.5, 0.25, 0.25],
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0],
        ];
        let tokens = |flaw| {
            let law = exact_law(tree, &p, Some(&q), flaw).expect("valid");
            law.iter()
                .filter(|(o, _)| o.path == [0])
                .map(|(o, _)| o.token)
                .collect::<Vec<_>>()
        };
        assert_eq!(tokens(Flaw::None), vec![2]);
        assert_eq!(tokens(Flaw::SkipDupUpdate), vec![1, 2]);
    }

    /// Random probability rows with small integer weights, zeros included.
    fn random_row(coin: &mut SeededCoin, vocab: usize) -> Vec<f64> {
        loop {
            let w: Vec<f64> = (0..vocab).map(|_| (coin.next_u64() % 4) as f64).collect();
            let total: f64 = w.iter().sum();
            if total > 0.0 {
                return w.iter().map(|x| x / total).collect();
            }
        }
    }

    /// A random tree with children drafted by their kind's law, for `vocab` tokens.
    #[allow(clippy::type_complexity)]
    fn random_tree(
        coin: &mut SeededCoin,
        n: usize,
        vocab: usize,
    ) -> (Vec<i64>, Vec<i64>, Vec<i64>, Table, Table) {
        let p: Table = (0..n).map(|_| random_row(coin, vocab)).collect();
        let q: Table = (0..n).map(|_| random_row(coin, vocab)).collect();
        let kinds: Vec<i64> = (0..n).map(|_| (coin.next_u64() % 3) as i64).collect();
        let mut parents = vec![-1];
        let mut tokens = vec![0];
        // What each node's next without-replacement child is drawn from.
        let mut left = q.clone();
        for i in 1..n {
            // A node whose support is exhausted cannot draw another child without replacement; node i − 1
            // has no children yet, so some parent is always possible.
            let open: Vec<usize> = (0..i)
                .filter(|&v| kinds[v] != 2 || left[v].iter().sum::<f64>() > 0.0)
                .collect();
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
        (parents, tokens, kinds, p, q)
    }

    #[test]
    fn correction_is_never_a_rejected_sibling() {
        let mut rng = SeededCoin::new(31);
        let mut coin = SeededCoin::new(32);
        for case in 0..300 {
            let (n, vocab) = (1 + case % 9, 2 + case % 4);
            let (parents, tokens, kinds, p, q) = random_tree(&mut rng, n, vocab);
            let a = arrays(&parents, &tokens, &kinds);
            let tree = check_tree(a, &p, Some(&q), Flaw::None, None).expect("valid random tree");
            let mut rows = Rows::lazy(&p, Some(&q), None);
            for _ in 0..20 {
                let o = verify(&tree, &mut rows, &mut coin, Flaw::None).expect("valid");
                assert!(!o.fallback);
                assert_eq!(o.path[0], 0);
                assert!(
                    o.path.windows(2).all(|w| tree.parent(w[1]) == Some(w[0])),
                    "{o:?}"
                );
                let stop = *o.path.last().expect("root");
                assert!(p[stop][o.token] > 0.0, "case {case}: {o:?}");
                let kids = tree.children(stop);
                assert!(
                    kids.iter().all(|&c| tree.token(c) != o.token),
                    "case {case}: emitted a rejected child: {o:?} parents={parents:?} tokens={tokens:?}"
                );
            }
            let law = exact_law(a, &p, Some(&q), Flaw::None).expect("valid");
            let total: f64 = law.iter().map(|(_, w)| w).sum();
            assert!((total - 1.0).abs() < 1e-12);
        }
    }

    /// The first emitted token of a one-node tree whose `k` children are drafted inside the enumeration by
    /// `kind`'s law: Lemma 2 / Lemma 3 say its law is p.
    fn first_token_law(
        p: &[f64],
        q: &[f64],
        kind: Kind,
        k: usize,
        flaw: Flaw,
    ) -> Vec<(usize, f64)> {
        let vocab = p.len();
        let table = |row: &[f64]| {
            let mut t = vec![row.to_vec()];
            t.extend(std::iter::repeat_n(vec![1.0 / vocab as f64; vocab], k));
            t
        };
        let (pt, qt) = (table(p), table(q));
        let code = kind as i64;
        enumerate_law(|coin| {
            let mut tokens = vec![0i64];
            let mut left = q.to_vec();
            for j in 0..k {
                let x = match kind {
                    // Top-k of q, ties by token id.
                    Kind::Deterministic => {
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
            let parents: Vec<i64> = std::iter::once(-1)
                .chain(std::iter::repeat_n(0, k))
                .collect();
            let kinds: Vec<i64> = std::iter::once(code)
                .chain(std::iter::repeat_n(0, k))
                .collect();
            let a = arrays(&parents, &tokens, &kinds);
            let tree = check_tree(a, &pt, Some(&qt), flaw, None).expect("valid");
            let mut rows = Rows::validated(&pt, Some(&qt));
            let o = verify(&tree, &mut rows, coin, flaw).expect("valid");
            match o.path[..] {
                [0, child] => tree.token(child),
                _ => o.token,
            }
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
            let q: Vec<f64> = {
                let w: Vec<f64> = random_row(&mut rng, vocab)
                    .iter()
                    .map(|x| x + 0.1)
                    .collect();
                let t: f64 = w.iter().sum();
                w.iter().map(|x| x / t).collect()
            };
            for kind in [
                Kind::Deterministic,
                Kind::IidSampled,
                Kind::WithoutReplacement,
            ] {
                let k = 1 + case % vocab.min(3);
                let law = first_token_law(&p, &q, kind, k, Flaw::None);
                let mut got = vec![0.0; vocab];
                law.iter().for_each(|&(y, w)| got[y] += w);
                for y in 0..vocab {
                    assert!(
                        (got[y] - p[y]).abs() < 1e-12,
                        "{kind:?} k={k} p={p:?} q={q:?}: {got:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn flaws_break_the_one_node_law() {
        let tv = |p: &[f64], law: &[(usize, f64)]| {
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
                assert!(tv(p, &first_token_law(p, q, kind, 2, Flaw::None)) < 1e-12);
                worst = worst.max(tv(p, &first_token_law(p, q, kind, 2, flaw)));
            }
            assert!(worst > 0.01, "{kind:?} {flaw:?}: max TV {worst}");
        }
    }

    #[test]
    fn the_chain_is_a_path_of_iid_nodes() {
        let mut rng = SeededCoin::new(3);
        for _ in 0..50 {
            let p: Table = (0..4).map(|_| random_row(&mut rng, 3)).collect();
            let q: Table = (0..3).map(|_| random_row(&mut rng, 3)).collect();
            let draft: Vec<usize> = q.iter().map(|row| rng.categorical(row)).collect();
            let tokens: Vec<i64> = std::iter::once(0)
                .chain(draft.iter().map(|&x| x as i64))
                .collect();
            let mut q_full = q.clone();
            q_full.push(vec![1.0 / 3.0; 3]);
            let a = arrays(&[-1, 0, 1, 2], &tokens, &[1, 1, 1, 1]);
            for seed in 0..5 {
                let c =
                    crate::chain::verify(&p, &q, &draft, &mut SeededCoin::new(seed), Flaw::None);
                let t = verify_batch(
                    &[a],
                    std::slice::from_ref(&p),
                    Some(&[q_full.clone()]),
                    &mut SeededCoin::new(seed),
                    Flaw::None,
                )
                .expect("valid");
                assert_eq!(
                    (c.accepted + 1, c.token, c.fallback),
                    (t[0].path.len(), t[0].token, t[0].fallback)
                );
            }
        }
    }

    #[test]
    fn batch_matches_treewise_verification_with_one_coin() {
        let mut rng = SeededCoin::new(12);
        let trees: Vec<_> = (0..30)
            .map(|i| random_tree(&mut rng, 1 + i % 7, 3))
            .collect();
        let a: Vec<TreeArrays<'_>> = trees.iter().map(|t| arrays(&t.0, &t.1, &t.2)).collect();
        let p: Vec<Table> = trees.iter().map(|t| t.3.clone()).collect();
        let q: Vec<Table> = trees.iter().map(|t| t.4.clone()).collect();
        let batched =
            verify_batch(&a, &p, Some(&q), &mut SeededCoin::new(4), Flaw::None).expect("valid");
        let mut coin = SeededCoin::new(4);
        for (b, o) in batched.iter().enumerate() {
            let one = verify_batch(&a[b..=b], &p[b..=b], Some(&q[b..=b]), &mut coin, Flaw::None)
                .expect("valid");
            assert_eq!(*o, one[0]);
        }
        let e = verify_batch(&a, &p[1..], Some(&q), &mut coin, Flaw::None);
        assert!(matches!(e, Err(SamplerError::Shape { arg: "p", .. })));
        let e = verify_batch::<Table, Table, _>(&[], &[], None, &mut coin, Flaw::None);
        assert!(matches!(e, Err(SamplerError::Empty { axis: "batch", .. })));
    }

    #[test]
    fn degenerate_residual_falls_back_and_says_so() {
        // q exceeds p everywhere p is positive by rounding: a rejection leaves no residual mass.
        let p = vec![vec![0.5, 0.5 - 1e-5], vec![1.0, 0.0]];
        let q = vec![vec![0.5, 0.5], vec![1.0, 0.0]];
        let law =
            exact_law(arrays(&[-1, 0], &[0, 1], &[1, 0]), &p, Some(&q), Flaw::None).expect("valid");
        let fallback: f64 = law.iter().filter(|(o, _)| o.fallback).map(|(_, w)| w).sum();
        assert!((fallback - 2e-5).abs() < 1e-12, "P(fallback) = {fallback}");
        assert!(law.iter().all(|(o, _)| o.fallback == (o.path.len() == 1)));
    }

    #[test]
    fn shapes_are_checked() {
        let ok = |b, par: &[usize], p: &[usize], q: Option<&[usize]>| {
            check_tree_shapes(b, par, par, par, p, q)
        };
        assert_eq!(ok(true, &[2, 5], &[2, 5, 3], Some(&[2, 5, 3])), Ok(()));
        assert_eq!(ok(false, &[5], &[5, 3], None), Ok(()));
        let e = ok(true, &[5], &[5, 3], None).unwrap_err();
        assert_eq!(e.to_string(), "parents must have 2 dimensions, got 1");
        let e = ok(false, &[5], &[5, 3], Some(&[5])).unwrap_err();
        assert!(matches!(e, SamplerError::Ndim { arg: "q", .. }), "{e}");
        let e = ok(true, &[0, 5], &[0, 5, 3], None).unwrap_err();
        assert!(
            matches!(e, SamplerError::Empty { axis: "batch", .. }),
            "{e}"
        );
        let e = ok(true, &[2, 0], &[2, 0, 3], None).unwrap_err();
        assert!(matches!(e, SamplerError::Empty { axis: "node", .. }), "{e}");
        let e = ok(true, &[2, 5], &[2, 5, 0], None).unwrap_err();
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
        for p in [[1, 5, 3], [2, 4, 3]] {
            let e = ok(true, &[2, 5], &p, None).unwrap_err();
            assert!(matches!(e, SamplerError::Shape { arg: "p", .. }), "{e}");
        }
        let e = check_tree_shapes(true, &[2, 5], &[2, 4], &[2, 5], &[2, 5, 3], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tokens has the wrong shape: (2, 4), but parents is (2, 5) and tokens needs (B, n) first"
        );
        let e = check_tree_shapes(false, &[5], &[5], &[4], &[5, 3], None).unwrap_err();
        assert!(matches!(e, SamplerError::Shape { arg: "kinds", .. }), "{e}");
        let e = ok(true, &[2, 5], &[2, 5, 3], Some(&[2, 5, 4])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "q has the wrong shape: (2, 5, 4), expected p's shape (2, 5, 3)"
        );
    }

    #[test]
    fn kinds_from_codes() {
        assert_eq!(Kind::from_code(0), Some(Kind::Deterministic));
        assert_eq!(Kind::from_code(1), Some(Kind::IidSampled));
        assert_eq!(Kind::from_code(2), Some(Kind::WithoutReplacement));
        assert_eq!(Kind::from_code(3), None);
        assert!(!Kind::Deterministic.is_sampled() && Kind::WithoutReplacement.is_sampled());
    }
}
