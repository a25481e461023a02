//! Helpers shared by the unit tests: toy probability tables, laws and distances.

use std::collections::BTreeMap;

use crate::coin::{inverse_cdf, Coin, SeededCoin};

pub type Table = Vec<Vec<f64>>;

/// The largest uniform a 53-bit generator can return.
pub const U_MAX: f64 = 1.0 - f64::EPSILON / 2.0;

/// Rows concatenated, as the verifiers read them.
pub fn flat(rows: &[Vec<f64>]) -> Vec<f64> {
    rows.concat()
}

/// A random probability row with small integer weights, zeros included.
pub fn random_row(coin: &mut SeededCoin, vocab: usize) -> Vec<f64> {
    loop {
        let w: Vec<f64> = (0..vocab).map(|_| (coin.next_u64() % 4) as f64).collect();
        let total: f64 = w.iter().sum();
        if total > 0.0 {
            return w.iter().map(|x| x / total).collect();
        }
    }
}

pub fn random_rows(coin: &mut SeededCoin, rows: usize, vocab: usize) -> Table {
    (0..rows).map(|_| random_row(coin, vocab)).collect()
}

/// The law of independent draws from each row in turn: p_0 ⊗ … ⊗ p_last.
pub fn product_law(p: &Table) -> Vec<(Vec<usize>, f64)> {
    let mut law = vec![(Vec::new(), 1.0)];
    for row in p {
        law = law
            .into_iter()
            .flat_map(|(seq, w)| {
                row.iter().enumerate().filter(|(_, &r)| r > 0.0).map(move |(y, &r)| {
                    let mut longer: Vec<usize> = seq.clone();
                    longer.push(y);
                    (longer, w * r)
                })
            })
            .collect();
    }
    law.sort_by(|a, b| a.0.cmp(&b.0));
    law
}

/// Total variation distance between two laws.
pub fn tv<K: Ord>(a: &[(K, f64)], b: &[(K, f64)]) -> f64 {
    let mut all: BTreeMap<&K, (f64, f64)> = BTreeMap::new();
    a.iter().for_each(|(k, w)| all.entry(k).or_default().0 += w);
    b.iter().for_each(|(k, w)| all.entry(k).or_default().1 += w);
    all.values().map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
}

/// Every value `run` gives under a spread of fixed uniforms and seeds, sorted and deduplicated: for cases
/// whose outcome is certain.
pub fn all_values<T: Ord>(mut run: impl FnMut(&mut dyn Coin) -> T) -> Vec<T> {
    let mut outs: Vec<T> = [0.0, 0.3, 0.7, U_MAX].iter().map(|&u| run(&mut FixedCoin { u })).collect();
    outs.extend((0..50).map(|s| run(&mut SeededCoin::new(s))));
    outs.sort();
    outs.dedup();
    outs
}

/// The exact law of one tree's verification, from nested-vector tables.
pub fn tree_law(
    flaw: Option<crate::mutants::Flaw>,
    tree: [&[i64]; 3],
    p: &Table,
    q: Option<&Table>,
) -> crate::error::Result<Vec<(crate::tree::TreeOutcome, f64)>> {
    crate::law::tree_law(tree, flat(p), q.map(|q| flat(q)).as_deref(), p[0].len(), flaw)
}

/// Test coin whose every uniform equals `u`, with the same rules as [`SeededCoin`]; it reaches boundaries
/// (u = 0, u just below 1) that a PRNG hits with probability 2^-53.
#[derive(Clone, Copy, Debug)]
pub struct FixedCoin {
    pub u: f64,
}

impl Coin for FixedCoin {
    fn accept(&mut self, p: f64, q: f64) -> bool {
        self.u * q < p
    }

    fn categorical(&mut self, w: &[f64]) -> usize {
        inverse_cdf(w, self.u)
    }
}
