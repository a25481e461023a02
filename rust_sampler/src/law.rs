//! Exact output laws of the verifiers, by enumerating every coin outcome ([`enumerate_law`]): the oracle
//! that the exact-law tests compare with the formulas. An optional [`Flaw`] re-injects a known bug.

use crate::chain::{verify_chain, ChainOutcome};
use crate::check::{check_chain, Probs};
use crate::coin::enumerate_law;
use crate::error::Result;
use crate::mutants::{mutate_chains, mutate_tree, with_flaw, Flaw};
use crate::tree::{verify_tree, Rows, Tree, TreeOutcome};

/// Every outcome of verifying one chain (p: G+1 rows, q: G rows) with its probability, sorted.
pub fn chain_law(
    mut p: Vec<f64>,
    q: &[f64],
    draft: &[i64],
    vocab: usize,
    flaw: Option<Flaw>,
) -> Result<Vec<(ChainOutcome, f64)>> {
    if let Some(flaw) = flaw {
        mutate_chains(flaw, &mut p, draft.len(), vocab);
    }
    let (p, q) = (Probs::new(&p, vocab), Probs::new(q, vocab));
    let x = check_chain(p, q, draft, None)?;
    enumerate_law(|coin| Ok(with_flaw(flaw, coin, |c| verify_chain(p, q, &x, c))))
}

/// Every outcome of verifying one tree (p and q: a row per node) with its probability, sorted. Errors if
/// the tree is malformed or a row the walk reaches is.
pub fn tree_law(
    tree: [&[i64]; 3],
    mut p: Vec<f64>,
    q: Option<&[f64]>,
    vocab: usize,
    flaw: Option<Flaw>,
) -> Result<Vec<(TreeOutcome, f64)>> {
    let mut tree = Tree::new(tree, vocab, q.map(|q| Probs::new(q, vocab)), None)?;
    if let Some(flaw) = flaw {
        mutate_tree(flaw, &mut tree, &mut p, q, vocab)?;
    }
    let mut rows = Rows::new(Probs::new(&p, vocab), q.map(|q| Probs::new(q, vocab)), None);
    enumerate_law(|coin| with_flaw(flaw, coin, |c| verify_tree(&tree, &mut rows, c)))
}
