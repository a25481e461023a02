//! specref's verifier core: lossless speculative sampling (Leviathan et al. 2023, arXiv 2211.17192; Chen et
//! al. 2023, arXiv 2302.01318) and tree verification (Miao et al. 2024; Li et al. 2024), in pure Rust.
//!
//! Modules, each importing only those above it: [`error`], [`coin`] (randomness and the exact-law
//! enumerator), [`check`] (input validation), [`chain`] and [`tree`] (the verifiers), [`mutants`] (known bugs
//! re-injected for tests), [`law`] (exact laws). With the `python` feature, the module below builds the
//! `specref._sampler` extension: glue only. Drafting trees and laying them out (depths, the ancestor mask)
//! is the Python side's (`specref/tree.py`); verifying them is this crate's.

pub mod chain;
pub mod check;
pub mod coin;
pub mod error;
pub mod law;
pub mod mutants;
#[cfg(test)]
mod testing;
pub mod tree;

/// Rust core of specref: lossless speculative-decoding verifiers. Probability rows must sum to 1 within
/// NORM_TOLERANCE.
#[cfg(feature = "python")]
#[pyo3::pymodule(name = "_sampler")]
mod python {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use numpy::ndarray::{ArrayD, IxDyn};
    use numpy::{
        Element, IntoPyArray, PyArray1, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
    };
    use pyo3::exceptions::{PyRuntimeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::PyTuple;

    use crate::check::{chain_shapes, tree_shapes};
    use crate::error::{Error, Result};
    use crate::mutants::{mutate_chains, mutate_trees, with_flaw, Flaw};
    use crate::{bail, chain, coin, law, tree};

    #[pymodule_export]
    const NORM_TOLERANCE: f64 = crate::check::NORM_TOLERANCE;

    impl From<Error> for PyErr {
        fn from(e: Error) -> Self {
            PyValueError::new_err(e.0)
        }
    }

    /// An array argument copied out of NumPy in C order: (values, shape).
    type Array<T> = (Vec<T>, Vec<usize>);

    /// What was passed instead of an accepted array, for error messages.
    fn describe(obj: &Bound<'_, PyAny>) -> String {
        match obj.cast::<PyUntypedArray>() {
            Ok(a) => format!("dtype {}", a.dtype()),
            Err(_) => obj.get_type().name().map_or_else(|_| "another type".into(), |n| n.to_string()),
        }
    }

    /// The one conversion helper: `obj` as an array of `T` (None if it is not one), any strides; then its
    /// number of dimensions must be one of `ndims`. Copying widens float32 to f64 once and frees the verifier
    /// from strides and alignment; it costs microseconds against a model forward.
    fn read<T: Element + Copy, U>(
        arg: &str,
        obj: &Bound<'_, PyAny>,
        ndims: &[usize],
        f: fn(T) -> U,
    ) -> Option<Result<Array<U>>> {
        let a = obj.extract::<PyReadonlyArrayDyn<'_, T>>().ok()?;
        Some(if !a.is_aligned() {
            Err(Error(format!("{arg} is not aligned in memory for its dtype; pass numpy.ascontiguousarray({arg})")))
        } else if !ndims.contains(&a.ndim()) {
            let want: Vec<String> = ndims.iter().map(usize::to_string).collect();
            Err(Error(format!("{arg} must have {} dimensions, got {}", want.join(" or "), a.ndim())))
        } else {
            let values = match a.as_slice() {
                // C order is the usual case, and 10x faster to copy; `as_slice` also takes Fortran order.
                Ok(c_order) if a.is_c_contiguous() => c_order.iter().map(|&x| f(x)).collect(),
                _ => a.as_array().iter().map(|&x| f(x)).collect(),
            };
            Ok((values, a.shape().to_vec()))
        })
    }

    fn probs(arg: &str, obj: &Bound<'_, PyAny>, ndim: usize) -> Result<Array<f64>> {
        let got = read::<f64, f64>(arg, obj, &[ndim], |x| x).or_else(|| read::<f32, f64>(arg, obj, &[ndim], f64::from));
        got.unwrap_or_else(|| bail!("{arg} must be a numpy.ndarray of dtype float32 or float64, got {}", describe(obj)))
    }

    fn ints(arg: &str, obj: &Bound<'_, PyAny>, ndims: &[usize]) -> Result<Array<i64>> {
        let got = read::<i64, i64>(arg, obj, ndims, |x| x);
        got.unwrap_or_else(|| bail!("{arg} must be a numpy.ndarray of dtype int64, got {}", describe(obj)))
    }

    fn ndarray<'py, T: Element>(
        py: Python<'py>,
        shape: &[usize],
        values: Vec<T>,
    ) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
        let a = ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// Runs `work` without the GIL; a panic becomes RuntimeError instead of crossing into Python.
    fn guarded<T: Send>(py: Python<'_>, work: impl FnOnce() -> Result<T> + Send) -> PyResult<T> {
        match py.detach(|| catch_unwind(AssertUnwindSafe(work))) {
            Ok(done) => Ok(done?),
            Err(panic) => {
                let message = (panic.downcast_ref::<&str>().copied())
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("unknown panic");
                Err(PyRuntimeError::new_err(format!("specref._sampler panicked (a bug; please report): {message}")))
            }
        }
    }

    /// Reproducible randomness: xoshiro256++ seeded from a u64 through splitmix64.
    #[pyclass(name = "SeededCoin", module = "specref._sampler")]
    struct SeededCoin(coin::SeededCoin);

    #[pymethods]
    impl SeededCoin {
        #[new]
        fn new(seed: u64) -> Self {
            Self(coin::SeededCoin::new(seed))
        }

        /// The next uniform in [0, 1), a multiple of 2**-53 (the one the next decision would use).
        fn uniform(&mut self) -> f64 {
            self.0.uniform()
        }
    }

    type Column<'py, T> = Bound<'py, PyArray1<T>>;
    type Chains = (Vec<f64>, Vec<f64>, Vec<i64>, (usize, usize, usize));
    type Trees = ([Vec<i64>; 3], Vec<f64>, Option<Vec<f64>>, (usize, usize, usize));

    /// The chain arguments, read and shape-checked, with (B, G, V); `batched`: with a leading batch axis.
    fn read_chains(p: &Bound<'_, PyAny>, q: &Bound<'_, PyAny>, d: &Bound<'_, PyAny>, batched: bool) -> Result<Chains> {
        let dims = usize::from(batched);
        let (p, q) = (probs("p", p, 2 + dims)?, probs("q", q, 2 + dims)?);
        let d = ints("draft_tokens", d, &[1 + dims])?;
        let size = chain_shapes(batched, &p.1, &q.1, &d.1)?;
        Ok((p.0, q.0, d.0, size))
    }

    /// The tree arguments, read and shape-checked, with (B, n, V); `batched`: with a leading batch axis.
    fn read_trees(
        [parents, tokens, kinds]: [&Bound<'_, PyAny>; 3],
        p: &Bound<'_, PyAny>,
        q: Option<&Bound<'_, PyAny>>,
        batched: bool,
    ) -> Result<Trees> {
        let dims = usize::from(batched);
        let (par, tok) = (ints("parents", parents, &[1 + dims])?, ints("tokens", tokens, &[1 + dims])?);
        let kin = ints("kinds", kinds, &[1 + dims])?;
        let (p, q) = (probs("p", p, 2 + dims)?, q.map(|q| probs("q", q, 2 + dims)).transpose()?);
        let size = tree_shapes(batched, [&par.1, &tok.1, &kin.1], &p.1, q.as_ref().map(|q| &q.1[..]))?;
        Ok(([par.0, tok.0, kin.0], p.0, q.map(|q| q.0), size))
    }

    /// Verifies a batch of drafted chains (see `_sampler.pyi`).
    #[pyfunction]
    #[pyo3(signature = (p, q, draft_tokens, coin, *, flaw = None))]
    fn verify_chain<'py>(
        py: Python<'py>,
        p: &Bound<'py, PyAny>,
        q: &Bound<'py, PyAny>,
        draft_tokens: &Bound<'py, PyAny>,
        mut coin: PyRefMut<'py, SeededCoin>,
        flaw: Option<&str>,
    ) -> PyResult<(Column<'py, i64>, Column<'py, i64>, Column<'py, bool>)> {
        let flaw = flaw.map(Flaw::parse).transpose()?;
        let (mut p, q, d, (b, g, v)) = read_chains(p, q, draft_tokens, true)?;
        let rng = &mut coin.0;
        let outs = guarded(py, || {
            flaw.inspect(|&flaw| mutate_chains(flaw, &mut p, g, v));
            with_flaw(flaw, rng, |c| chain::verify_batch(&p, &q, &d, (b, g, v), c))
        })?;
        let column = |f: fn(&chain::ChainOutcome) -> i64| PyArray1::from_vec(py, outs.iter().map(f).collect());
        let fallback = PyArray1::from_vec(py, outs.iter().map(|o| o.fallback).collect());
        Ok((column(|o| o.accepted as i64), column(|o| o.token as i64), fallback))
    }

    /// The exact output law of verify_chain on one chain (see `_sampler.pyi`).
    #[pyfunction]
    #[pyo3(signature = (p, q, draft_tokens, *, flaw = None))]
    fn chain_law(
        py: Python<'_>,
        p: &Bound<'_, PyAny>,
        q: &Bound<'_, PyAny>,
        draft_tokens: &Bound<'_, PyAny>,
        flaw: Option<&str>,
    ) -> PyResult<Vec<(usize, usize, bool, f64)>> {
        let flaw = flaw.map(Flaw::parse).transpose()?;
        let (p, q, d, (_, _, v)) = read_chains(p, q, draft_tokens, false)?;
        let law = guarded(py, || law::chain_law(p, &q, &d, v, flaw))?;
        Ok(law.into_iter().map(|(o, w)| (o.accepted, o.token, o.fallback, w)).collect())
    }

    /// Verifies a batch of draft trees (see `_sampler.pyi`).
    #[pyfunction]
    #[pyo3(signature = (parents, tokens, kinds, p, q, coin, *, flaw = None))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn verify_tree<'py>(
        py: Python<'py>,
        parents: &Bound<'py, PyAny>,
        tokens: &Bound<'py, PyAny>,
        kinds: &Bound<'py, PyAny>,
        p: &Bound<'py, PyAny>,
        q: Option<&Bound<'py, PyAny>>,
        mut coin: PyRefMut<'py, SeededCoin>,
        flaw: Option<&str>,
    ) -> PyResult<(Bound<'py, PyArrayDyn<i64>>, Column<'py, i64>, Column<'py, i64>, Column<'py, bool>)> {
        let flaw = flaw.map(Flaw::parse).transpose()?;
        let ([par, tok, kin], mut p, q, (b, n, v)) = read_trees([parents, tokens, kinds], p, q, true)?;
        let rng = &mut coin.0;
        let outs = guarded(py, || {
            let mut trees = tree::batch([&par, &tok, &kin], q.as_deref(), (b, n, v))?;
            if let Some(flaw) = flaw {
                mutate_trees(flaw, &mut trees, &mut p, q.as_deref(), v)?;
            }
            with_flaw(flaw, rng, |c| tree::verify_batch(&trees, &p, q.as_deref(), (n, v), c))
        })?;
        let mut path = vec![-1i64; outs.len() * n];
        for (row, o) in path.chunks_mut(n).zip(&outs) {
            row.iter_mut().zip(&o.path).for_each(|(slot, &i)| *slot = i as i64);
        }
        let column = |f: fn(&tree::TreeOutcome) -> i64| PyArray1::from_vec(py, outs.iter().map(f).collect());
        let fallback = PyArray1::from_vec(py, outs.iter().map(|o| o.fallback).collect());
        Ok((ndarray(py, &[b, n], path)?, column(|o| o.path.len() as i64), column(|o| o.token as i64), fallback))
    }

    /// The exact output law of verify_tree on one tree (see `_sampler.pyi`).
    #[pyfunction]
    #[pyo3(signature = (parents, tokens, kinds, p, q, *, flaw = None))]
    #[allow(clippy::type_complexity)]
    fn tree_law<'py>(
        py: Python<'py>,
        parents: &Bound<'py, PyAny>,
        tokens: &Bound<'py, PyAny>,
        kinds: &Bound<'py, PyAny>,
        p: &Bound<'py, PyAny>,
        q: Option<&Bound<'py, PyAny>>,
        flaw: Option<&str>,
    ) -> PyResult<Vec<(Bound<'py, PyTuple>, usize, bool, f64)>> {
        let flaw = flaw.map(Flaw::parse).transpose()?;
        let ([par, tok, kin], p, q, (_, _, v)) = read_trees([parents, tokens, kinds], p, q, false)?;
        let law = guarded(py, || law::tree_law([&par, &tok, &kin], p, q.as_deref(), v, flaw))?;
        law.into_iter().map(|(o, w)| Ok((PyTuple::new(py, o.path)?, o.token, o.fallback, w))).collect()
    }
}
