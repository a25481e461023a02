//! Input validation, written once and shared by every entry point.
//!
//! The lossless guarantee holds only for probability rows (finite, non-negative, summing to 1) and for drafts
//! that were actually sampled from their q (so q(x) > 0); trees must list every parent before its children.
//! Each check names the argument, the position (batch position first) and the offending value.

use crate::bail;
use crate::error::{at, tuple, Result};

/// The largest accepted |Σ row − 1| for p and q rows. Loose enough for float32 softmax over a large
/// vocabulary, tight enough to catch unnormalised inputs (masked logits, a forgotten softmax).
pub const NORM_TOLERANCE: f64 = 1e-4;

/// The probability rows of one chain or tree, row-major, one distribution over `vocab` tokens per row.
#[derive(Clone, Copy, Debug)]
pub struct Probs<'a> {
    values: &'a [f64],
    vocab: usize,
}

impl<'a> Probs<'a> {
    /// Rows of `vocab` > 0 entries each; `values.len()` must be a multiple of `vocab`.
    pub fn new(values: &'a [f64], vocab: usize) -> Self {
        assert!(vocab > 0 && values.len().is_multiple_of(vocab), "{} values do not make rows of {vocab}", values.len());
        Self { values, vocab }
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.vocab
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn row(&self, i: usize) -> &'a [f64] {
        &self.values[i * self.vocab..(i + 1) * self.vocab]
    }
}

/// Checks that row `i` of argument `arg` is a probability vector: finite, non-negative entries summing to 1
/// within [`NORM_TOLERANCE`].
pub fn check_row(arg: &str, row: &[f64], batch: Option<usize>, i: usize) -> Result<()> {
    let mut sum = 0.0;
    for (j, &value) in row.iter().enumerate() {
        if !value.is_finite() {
            bail!("{arg}{} is {value}; probabilities must be finite", at(batch, &[i, j]));
        }
        if value < 0.0 {
            bail!("{arg}{} is {value}; probabilities must be non-negative", at(batch, &[i, j]));
        }
        sum += value;
    }
    if (sum - 1.0).abs() > NORM_TOLERANCE {
        bail!(
            "{arg}{} sums to {sum}, not 1 (tolerance {NORM_TOLERANCE:e}); pass normalised probabilities",
            at(batch, &[i])
        );
    }
    Ok(())
}

/// Entry `i` of a token argument as a vocabulary index in [0, vocab).
pub fn check_token(arg: &str, token: i64, vocab: usize, batch: Option<usize>, i: usize) -> Result<usize> {
    match usize::try_from(token) {
        Ok(x) if x < vocab => Ok(x),
        _ => bail!("{arg}{} is {token}, outside the vocabulary [0, {vocab})", at(batch, &[i])),
    }
}

/// Validates one chain (p: G+1 rows, q: G rows, `draft`: G tokens) and returns its drafts as indices: every
/// row a probability vector, every x_i in [0, V) with q_i(x_i) > 0.
pub fn check_chain(p: Probs, q: Probs, draft: &[i64], batch: Option<usize>) -> Result<Vec<usize>> {
    let g = draft.len();
    for (arg, rows, want) in [("p", p.rows(), g + 1), ("q", q.rows(), g)] {
        if rows != want {
            bail!("{arg}{} has {rows} rows, expected {want} for G = {g}", at(batch, &[]));
        }
    }
    (0..=g).try_for_each(|i| check_row("p", p.row(i), batch, i))?;
    (0..g).try_for_each(|i| check_row("q", q.row(i), batch, i))?;
    draft
        .iter()
        .enumerate()
        .map(|(i, &token)| {
            let x = check_token("draft_tokens", token, p.vocab(), batch, i)?;
            if q.row(i)[x] == 0.0 {
                bail!(
                    "draft_tokens{} = {x} has zero probability under q, so q is not the law it was sampled from",
                    at(batch, &[i])
                );
            }
            Ok(x)
        })
        .collect()
}

/// Checks a parent array (node 0 the root with -1, `0 <= parents[i] < i` otherwise) and returns it with
/// `None` for the root.
pub fn check_parents(parents: &[i64], batch: Option<usize>) -> Result<Vec<Option<usize>>> {
    if parents.is_empty() {
        bail!("parents has an empty node axis");
    }
    parents
        .iter()
        .enumerate()
        .map(|(node, &parent)| match (node, usize::try_from(parent)) {
            (0, _) if parent == -1 => Ok(None),
            (0, _) => bail!("parents{} is {parent}; node 0 is the root and its parent must be -1", at(batch, &[0])),
            (_, Ok(p)) if p < node => Ok(Some(p)),
            _ => bail!(
                "parents{} is {parent}; node {node}'s parent must be an earlier node, in [0, {node})",
                at(batch, &[node])
            ),
        })
        .collect()
}

/// Refuses `got` unless it is `batch` followed by `want`; `axes` names the axes after B ("G+1, V").
fn expect(arg: &str, got: &[usize], batch: &[usize], want: &[usize], axes: &str) -> Result<()> {
    let want = [batch, want].concat();
    if got != want {
        let b = if batch.is_empty() { "" } else { "B, " };
        bail!("{arg} has the wrong shape: {}, expected ({b}{axes}) = {}", tuple(got), tuple(&want));
    }
    Ok(())
}

/// Refuses an empty axis that every computation needs.
fn nonempty(arg: &str, axes: &[(&str, usize)]) -> Result<()> {
    match axes.iter().find(|(_, len)| *len == 0) {
        Some((axis, _)) => bail!("{arg} has an empty {axis} axis"),
        None => Ok(()),
    }
}

/// Shapes of a chain: p (B, G+1, V), q (B, G, V), draft_tokens (B, G), without B unless `batched`; the
/// number of dimensions was checked already. B and V must be positive, G may be 0. Returns (B, G, V).
pub fn chain_shapes(batched: bool, p: &[usize], q: &[usize], draft: &[usize]) -> Result<(usize, usize, usize)> {
    let (batch, g, v) = (&p[..usize::from(batched)], draft[draft.len() - 1], p[p.len() - 1]);
    let b = batch.iter().product();
    nonempty("p", &[("batch", b), ("vocabulary", v)])?;
    expect("draft_tokens", draft, batch, &[g], "G")?;
    expect("p", p, batch, &[g + 1, v], "G+1, V")?;
    expect("q", q, batch, &[g, v], "G, V")?;
    Ok((b, g, v))
}

/// Shapes of a tree: parents, tokens and kinds (B, n), p (B, n, V) and q (B, n, V) if given, without B
/// unless `batched`; the number of dimensions was checked already. B, n and V must be positive. Returns
/// (B, n, V).
pub fn tree_shapes(
    batched: bool,
    [parents, tokens, kinds]: [&[usize]; 3],
    p: &[usize],
    q: Option<&[usize]>,
) -> Result<(usize, usize, usize)> {
    let (batch, n, v) = (&parents[..usize::from(batched)], parents[parents.len() - 1], p[p.len() - 1]);
    let b = batch.iter().product();
    nonempty("parents", &[("batch", b), ("node", n)])?;
    nonempty("p", &[("vocabulary", v)])?;
    expect("tokens", tokens, batch, &[n], "n")?;
    expect("kinds", kinds, batch, &[n], "n")?;
    expect("p", p, batch, &[n, v], "n, V")?;
    q.map_or(Ok(()), |q| expect("q", q, batch, &[n, v], "n, V"))?;
    Ok((b, n, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[&[f64]]) -> Vec<f64> {
        rows.concat()
    }

    #[test]
    fn chains_are_validated_row_by_row() {
        let p = table(&[&[0.5, 0.5], &[0.5, 0.5]]);
        let q = table(&[&[0.5, 0.5]]);
        let err = |p: &[f64], q: &[f64], d: &[i64]| {
            check_chain(Probs::new(p, 2), Probs::new(q, 2), d, Some(3)).unwrap_err().0
        };
        assert_eq!(check_chain(Probs::new(&p, 2), Probs::new(&q, 2), &[1], None), Ok(vec![1]));
        assert_eq!(err(&p, &q, &[]), "p[3] has 2 rows, expected 1 for G = 0");
        assert_eq!(err(&p, &[], &[0]), "q[3] has 0 rows, expected 1 for G = 1");
        assert_eq!(err(&[0.5, f64::NAN, 0.5, 0.5], &q, &[0]), "p[3, 0, 1] is NaN; probabilities must be finite");
        assert!(err(&p, &[f64::INFINITY, 0.0], &[0]).starts_with("q[3, 0, 0] is inf"));
        assert!(err(&[0.5, 0.5, 1.5, -0.5], &q, &[0]).contains("must be non-negative"));
        assert!(err(&p, &[0.5, 0.6], &[0]).starts_with("q[3, 0] sums to 1.1"));
        // Within the tolerance passes, beyond it fails.
        assert!(check_chain(Probs::new(&p, 2), Probs::new(&[0.5, 0.5 + 0.9e-4], 2), &[0], None).is_ok());
        assert!(err(&p, &[0.5, 0.5 + 1.1e-4], &[0]).contains("not 1 (tolerance 1e-4)"));
        assert_eq!(err(&p, &q, &[2]), "draft_tokens[3, 0] is 2, outside the vocabulary [0, 2)");
        assert!(err(&p, &q, &[-1]).contains("is -1, outside"));
        let e = err(&p, &[1.0, 0.0], &[1]);
        assert!(e.starts_with("draft_tokens[3, 0] = 1 has zero probability under q"), "{e}");
    }

    #[test]
    fn parent_arrays_are_validated() {
        let err = |p: &[i64]| check_parents(p, Some(4)).unwrap_err().0;
        assert_eq!(err(&[]), "parents has an empty node axis");
        assert_eq!(err(&[0, 0]), "parents[4, 0] is 0; node 0 is the root and its parent must be -1");
        assert_eq!(err(&[-1, 0, 2]), "parents[4, 2] is 2; node 2's parent must be an earlier node, in [0, 2)");
        assert!(err(&[-1, -1]).starts_with("parents[4, 1] is -1"));
        assert!(err(&[-1, 0, 3, 1]).starts_with("parents[4, 2] is 3"));
        assert_eq!(check_parents(&[-1, 0, 0, 1], None), Ok(vec![None, Some(0), Some(0), Some(1)]));
    }

    #[test]
    fn chain_shapes_are_checked() {
        assert_eq!(chain_shapes(true, &[2, 4, 5], &[2, 3, 5], &[2, 3]), Ok((2, 3, 5)));
        assert_eq!(chain_shapes(true, &[2, 1, 5], &[2, 0, 5], &[2, 0]), Ok((2, 0, 5)));
        assert_eq!(chain_shapes(false, &[4, 5], &[3, 5], &[3]), Ok((1, 3, 5)));
        let err = |b, p: &[usize], q: &[usize], d: &[usize]| chain_shapes(b, p, q, d).unwrap_err().0;
        assert_eq!(err(true, &[0, 4, 5], &[0, 3, 5], &[0, 3]), "p has an empty batch axis");
        assert_eq!(err(true, &[2, 4, 0], &[2, 3, 0], &[2, 3]), "p has an empty vocabulary axis");
        assert_eq!(
            err(true, &[2, 4, 5], &[2, 3, 5], &[1, 3]),
            "draft_tokens has the wrong shape: (1, 3), expected (B, G) = (2, 3)"
        );
        assert_eq!(
            err(true, &[2, 3, 5], &[2, 3, 5], &[2, 3]),
            "p has the wrong shape: (2, 3, 5), expected (B, G+1, V) = (2, 4, 5)"
        );
        for q in [[1, 3, 5], [2, 2, 5], [2, 3, 4]] {
            assert!(err(true, &[2, 4, 5], &q, &[2, 3]).starts_with("q has the wrong shape"));
        }
        // q keeps p's vocabulary even when it has no rows.
        assert!(err(false, &[1, 5], &[0, 4], &[0]).starts_with("q has the wrong shape: (0, 4), expected (G, V)"));
    }

    #[test]
    fn tree_shapes_are_checked() {
        let ok = |b, par: &[usize], p: &[usize], q: Option<&[usize]>| tree_shapes(b, [par, par, par], p, q);
        assert_eq!(ok(true, &[2, 5], &[2, 5, 3], Some(&[2, 5, 3])), Ok((2, 5, 3)));
        assert_eq!(ok(false, &[5], &[5, 3], None), Ok((1, 5, 3)));
        let err = |b, par: &[usize], p: &[usize], q: Option<&[usize]>| ok(b, par, p, q).unwrap_err().0;
        assert_eq!(err(true, &[0, 5], &[0, 5, 3], None), "parents has an empty batch axis");
        assert_eq!(err(true, &[2, 0], &[2, 0, 3], None), "parents has an empty node axis");
        assert_eq!(err(true, &[2, 5], &[2, 5, 0], None), "p has an empty vocabulary axis");
        for p in [[1, 5, 3], [2, 4, 3]] {
            assert!(err(true, &[2, 5], &p, None).starts_with("p has the wrong shape"));
        }
        let e = tree_shapes(true, [&[2, 5], &[2, 4], &[2, 5]], &[2, 5, 3], None).unwrap_err().0;
        assert_eq!(e, "tokens has the wrong shape: (2, 4), expected (B, n) = (2, 5)");
        let e = tree_shapes(false, [&[5], &[5], &[4]], &[5, 3], None).unwrap_err().0;
        assert_eq!(e, "kinds has the wrong shape: (4,), expected (n) = (5,)");
        assert_eq!(
            err(true, &[2, 5], &[2, 5, 3], Some(&[2, 5, 4])),
            "q has the wrong shape: (2, 5, 4), expected (B, n, V) = (2, 5, 3)"
        );
    }
}
