//! Tree layouts: static trees from "choices" lists, and what a target forward over a tree needs.
//!
//! EAGLE-1 (Li et al. 2024, arXiv 2401.15077) and Medusa (Cai et al. 2024, arXiv 2401.10774) describe a
//! static tree as a list of paths of child ranks from the root: `[0, 1]` is the second-ranked child of the
//! root's top child. One target forward scores every node of a tree when node i sees itself and its
//! ancestors only (the ancestor mask), at position offset depth(i).

use std::collections::HashMap;

use crate::bail;
use crate::check::check_parents;
use crate::error::Result;

/// The most nodes (root included) that [`static_tree`] builds.
pub const MAX_TREE_NODES: usize = 4096;

/// Lays out a static tree from its choices.
///
/// Returns (parents, ranks) with node 0 the root (parent and rank -1) and nodes sorted by (path length,
/// lexicographic path), so that every parent precedes its children and siblings come in rank order.
pub fn static_tree(choices: &[Vec<i64>]) -> Result<(Vec<i64>, Vec<i64>)> {
    let nodes = choices.len() + 1;
    if nodes > MAX_TREE_NODES {
        bail!("choices make a tree of {nodes} nodes (root included); at most {MAX_TREE_NODES} are allowed");
    }
    let mut first_seen: HashMap<&[i64], usize> = HashMap::with_capacity(choices.len());
    for (i, path) in choices.iter().enumerate() {
        if path.is_empty() {
            bail!("choices[{i}] is empty; every path needs at least one rank");
        }
        if let Some((position, rank)) = path.iter().enumerate().find(|(_, &r)| r < 0) {
            bail!("choices[{i}] has rank {rank} at position {position}; ranks must be >= 0");
        }
        if let Some(first) = first_seen.insert(path.as_slice(), i) {
            bail!("choices[{i}] repeats choices[{first}]");
        }
    }
    if let Some(i) = choices.iter().position(|path| path.len() > 1 && !first_seen.contains_key(&path[..path.len() - 1]))
    {
        bail!("choices[{i}] has no parent: the path without its last rank is not in the list");
    }
    let mut sorted: Vec<&[i64]> = choices.iter().map(Vec::as_slice).collect();
    sorted.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
    let node_of: HashMap<&[i64], i64> = sorted.iter().zip(1..).map(|(&p, i)| (p, i)).collect();
    let parent = |path: &[i64]| if path.len() == 1 { 0 } else { node_of[&path[..path.len() - 1]] };
    let parents = std::iter::once(-1).chain(sorted.iter().map(|path| parent(path))).collect();
    let ranks = std::iter::once(-1).chain(sorted.iter().map(|path| path[path.len() - 1])).collect();
    Ok((parents, ranks))
}

/// What a target forward over one tree needs, derived from its parent array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeBuffers {
    /// Depth of every node, root 0 (the position offset of its token).
    pub depth: Vec<usize>,
    /// n × n row-major: entry (i, j) is set iff j is i or an ancestor of i (the root included).
    pub ancestors: Vec<bool>,
    /// For every leaf (node without children), in increasing index: node indices from the root to it.
    pub leaf_paths: Vec<Vec<usize>>,
}

/// Depths, the ancestor mask and root-to-leaf paths of the tree with parent array `parents`.
pub fn tree_buffers(parents: &[i64], batch: Option<usize>) -> Result<TreeBuffers> {
    let parents = check_parents(parents, batch)?;
    let n = parents.len();
    let (mut depth, mut ancestors, mut is_leaf) = (vec![0; n], vec![false; n * n], vec![true; n]);
    for (i, parent) in parents.iter().enumerate() {
        if let Some(p) = *parent {
            depth[i] = depth[p] + 1;
            is_leaf[p] = false;
            // p < i, so row p is complete: row i is row p plus i itself.
            ancestors.copy_within(p * n..p * n + p + 1, i * n);
        }
        ancestors[i * n + i] = true;
    }
    let leaf_paths = (0..n)
        .filter(|&i| is_leaf[i])
        .map(|leaf| {
            let mut path: Vec<usize> = std::iter::successors(Some(leaf), |&i| parents[i]).collect();
            path.reverse();
            path
        })
        .collect();
    Ok(TreeBuffers { depth, ancestors, leaf_paths })
}

/// The buffers of `rows` trees (parents row-major, `rows` × n) as flat arrays: depth (rows, n), mask (rows, n,
/// n) and retrieve (rows, leaves, width) padded with -1, where leaves and width (= max depth + 1) are those
/// of the largest tree. Returns (depth, mask, retrieve, leaves, width); `batched` labels error positions.
#[allow(clippy::type_complexity)]
pub fn batch_buffers(
    parents: &[i64],
    rows: usize,
    batched: bool,
) -> Result<(Vec<i64>, Vec<bool>, Vec<i64>, usize, usize)> {
    let n = parents.len() / rows;
    let built = (0..rows)
        .map(|b| tree_buffers(&parents[b * n..(b + 1) * n], batched.then_some(b)))
        .collect::<Result<Vec<_>>>()?;
    let leaves = built.iter().map(|t| t.leaf_paths.len()).max().unwrap_or(0);
    let width = 1 + built.iter().flat_map(|t| t.depth.iter().copied()).max().unwrap_or(0);
    let mut retrieve = vec![-1i64; rows * leaves * width];
    for (t, block) in built.iter().zip(retrieve.chunks_mut(leaves * width)) {
        for (path, row) in t.leaf_paths.iter().zip(block.chunks_mut(width)) {
            row.iter_mut().zip(path).for_each(|(slot, &i)| *slot = i as i64);
        }
    }
    let depth = built.iter().flat_map(|t| t.depth.iter().map(|&d| d as i64)).collect();
    let mask = built.iter().flat_map(|t| t.ancestors.iter().copied()).collect();
    Ok((depth, mask, retrieve, leaves, width))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for node in 0..n {
            let kids = (0..n).filter(|&c| parents[c] == node as i64);
            let kid_ranks: Vec<i64> = kids.map(|c| ranks[c]).collect();
            assert!(kid_ranks.windows(2).all(|w| w[0] < w[1]), "siblings in rank order");
        }
        let depth = tree_buffers(&parents, None).expect("valid").depth;
        let max = depth.iter().copied().max().unwrap_or(0);
        (1..=max).map(|d| depth.iter().filter(|&&x| x == d).count()).collect()
    }

    #[test]
    fn static_tree_lays_out_the_eagle_defaults_and_a_chain() {
        let defaults = mc_sim_7b_63();
        assert_eq!(defaults.len(), 63);
        assert_eq!(check_layout(&defaults), vec![10, 28, 22, 3]);
        assert_eq!(check_layout(&default_25()), vec![4, 8, 8, 3, 2]);
        let chain: Vec<Vec<i64>> = (1..=4).map(|len| vec![0; len]).collect();
        assert_eq!(static_tree(&chain), Ok((vec![-1, 0, 1, 2, 3], vec![-1, 0, 0, 0, 0])));
        assert_eq!(static_tree(&[]), Ok((vec![-1], vec![-1])));
        // Gaps in ranks are allowed; siblings still come in rank order.
        let gappy = vec![vec![3], vec![1], vec![3, 5], vec![3, 0]];
        assert_eq!(static_tree(&gappy), Ok((vec![-1, 0, 0, 2, 2], vec![-1, 1, 3, 0, 5])));
    }

    #[test]
    fn static_tree_refuses_malformed_choices() {
        let err = |c: &[Vec<i64>]| static_tree(c).unwrap_err().0;
        assert_eq!(err(&[vec![0], vec![]]), "choices[1] is empty; every path needs at least one rank");
        assert_eq!(err(&[vec![0], vec![0, -2]]), "choices[1] has rank -2 at position 1; ranks must be >= 0");
        assert_eq!(err(&[vec![0], vec![1], vec![0]]), "choices[2] repeats choices[0]");
        assert_eq!(
            err(&[vec![0], vec![1, 0], vec![0, 0, 1]]),
            "choices[1] has no parent: the path without its last rank is not in the list"
        );
        let many: Vec<Vec<i64>> = (0..MAX_TREE_NODES as i64).map(|r| vec![r]).collect();
        assert!(static_tree(&many[..MAX_TREE_NODES - 1]).is_ok());
        assert_eq!(err(&many), "choices make a tree of 4097 nodes (root included); at most 4096 are allowed");
    }

    #[test]
    fn buffers_of_a_hand_made_tree() {
        //      0
        //    1   2
        //   3 4   5
        //         6
        let b = tree_buffers(&[-1, 0, 0, 1, 1, 2, 5], None).expect("valid");
        assert_eq!(b.depth, vec![0, 1, 1, 2, 2, 2, 3]);
        let rows: Vec<Vec<usize>> = b.ancestors.chunks(7).map(|r| (0..7).filter(|&j| r[j]).collect()).collect();
        assert_eq!(
            rows,
            vec![vec![0], vec![0, 1], vec![0, 2], vec![0, 1, 3], vec![0, 1, 4], vec![0, 2, 5], vec![0, 2, 5, 6]]
        );
        assert_eq!(b.leaf_paths, vec![vec![0, 1, 3], vec![0, 1, 4], vec![0, 2, 5, 6]]);
        let root = tree_buffers(&[-1], None).expect("valid");
        assert_eq!((root.depth, root.ancestors, root.leaf_paths), (vec![0], vec![true], vec![vec![0]]));
    }

    #[test]
    fn a_batch_is_padded_to_its_largest_tree() {
        let (depth, mask, retrieve, leaves, width) = batch_buffers(&[-1, 0, 0, -1, 0, 1], 2, true).expect("valid");
        assert_eq!((leaves, width), (2, 3));
        assert_eq!(depth, [0, 1, 1, 0, 1, 2]);
        assert_eq!(mask.len(), 18);
        assert_eq!(retrieve, [0, 1, -1, 0, 2, -1, 0, 1, 2, -1, -1, -1]);
        let e = batch_buffers(&[-1, 0, -1, 3], 2, true).unwrap_err();
        assert!(e.0.starts_with("parents[1, 1] is 3"), "{e}");
    }
}
