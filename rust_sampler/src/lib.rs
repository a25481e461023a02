//! specref's verifier core: lossless speculative sampling (Leviathan et al. 2023, arXiv 2211.17192; Chen et
//! al. 2023, arXiv 2302.01318) and tree verification (Miao et al. 2024; Li et al. 2024), in pure Rust.
//!
//! Modules, each importing only those above it:
//! [`error`] the one error type; [`coin`] the randomness interface and the exact-law enumerator;
//! [`check`] input validation, written once; [`chain`] the chain (SpS) verifier; [`tree`] the tree verifier;
//! [`layout`] static trees and tree buffers; [`mutants`] known bugs re-injected for tests; [`law`] exact laws.
//! With the `python` feature this file also builds the `specref._sampler` extension: glue only.

pub mod error;

pub mod coin;

pub mod check;

pub mod chain;
pub mod layout;
pub mod tree;

pub mod mutants;

pub mod law;

#[cfg(test)]
mod testing;

#[cfg(feature = "python")]
mod python {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use numpy::ndarray::{ArrayD, IxDyn};
    use numpy::{
        Element, IntoPyArray, PyArray1, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
    };
    use pyo3::exceptions::{PyRuntimeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBool, PyInt, PyList, PyTuple};

    use crate::bail;
    use crate::check::{chain_shapes, tree_shapes, NORM_TOLERANCE};
    use crate::coin;
    use crate::error::{Error, Result};
    use crate::mutants::{mutate_chains, mutate_trees, with_flaw, Flaw};
    use crate::{chain, law, layout, tree};

    impl From<Error> for PyErr {
        fn from(e: Error) -> Self {
            PyValueError::new_err(e.0)
        }
    }

    /// An array argument copied out of NumPy in C order, with its shape.
    struct Array<T> {
        values: Vec<T>,
        shape: Vec<usize>,
    }

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
            Ok(Array { values, shape: a.shape().to_vec() })
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

    fn parse_flaw(flaw: Option<&str>) -> Result<Option<Flaw>> {
        flaw.map(str::parse).transpose()
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
        fn new(seed: &Bound<'_, PyAny>) -> PyResult<Self> {
            match seed.extract::<u64>() {
                Ok(seed) => Ok(Self(coin::SeededCoin::new(seed))),
                Err(_) if seed.is_instance_of::<PyInt>() => {
                    Err(PyValueError::new_err(format!("seed must be in [0, 2**64), got {seed}")))
                }
                Err(e) => Err(e),
            }
        }

        /// The next uniform in [0, 1), a multiple of 2**-53 (the one the next decision would use).
        fn uniform(&mut self) -> f64 {
            self.0.uniform()
        }
    }

    type Column<'py, T> = Bound<'py, PyArray1<T>>;

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
        let flaw = parse_flaw(flaw)?;
        let (mut p, q, d) = (probs("p", p, 3)?, probs("q", q, 3)?, ints("draft_tokens", draft_tokens, &[2])?);
        let (b, g, v) = chain_shapes(true, &p.shape, &q.shape, &d.shape)?;
        let rng = &mut coin.0;
        let outs = guarded(py, || {
            if let Some(flaw) = flaw {
                mutate_chains(flaw, &mut p.values, g, v);
            }
            with_flaw(flaw, rng, |c| chain::verify_batch(&p.values, &q.values, &d.values, (b, g, v), c))
        })?;
        let column = |f: fn(&chain::ChainOutcome) -> i64| PyArray1::from_vec(py, outs.iter().map(f).collect());
        Ok((
            column(|o| o.accepted as i64),
            column(|o| o.token as i64),
            PyArray1::from_vec(py, outs.iter().map(|o| o.fallback).collect()),
        ))
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
        let flaw = parse_flaw(flaw)?;
        let (p, q, d) = (probs("p", p, 2)?, probs("q", q, 2)?, ints("draft_tokens", draft_tokens, &[1])?);
        let (_, _, v) = chain_shapes(false, &p.shape, &q.shape, &d.shape)?;
        let law = guarded(py, || law::chain_law(p.values, &q.values, &d.values, v, flaw))?;
        Ok(law.into_iter().map(|(o, w)| (o.accepted, o.token, o.fallback, w)).collect())
    }

    /// A list or tuple's items; None for anything else.
    fn items<'py>(obj: &Bound<'py, PyAny>) -> Option<Vec<Bound<'py, PyAny>>> {
        match obj.cast::<PyList>() {
            Ok(list) => Some(list.iter().collect()),
            Err(_) => obj.cast::<PyTuple>().ok().map(|t| t.iter().collect()),
        }
    }

    /// A choices list: lists (or tuples) of ints (not bools; NumPy integer scalars count as ints).
    fn parse_choices(choices: &Bound<'_, PyAny>) -> Result<Vec<Vec<i64>>> {
        let bad = |what: String| Error(format!("choices must be a list of lists of ints: {what}"));
        let outer = items(choices).ok_or_else(|| bad(format!("got {}", describe(choices))))?;
        let path = |(i, path): (usize, &Bound<'_, PyAny>)| {
            let ranks = items(path).ok_or_else(|| bad(format!("choices[{i}] is {}", describe(path))))?;
            let rank = |(j, rank): (usize, &Bound<'_, PyAny>)| match rank.extract::<i64>() {
                Ok(r) if !rank.is_instance_of::<PyBool>() => Ok(r),
                _ if rank.is_instance_of::<PyInt>() && !rank.is_instance_of::<PyBool>() => {
                    Err(bad(format!("choices[{i}][{j}] = {rank} does not fit in int64")))
                }
                _ => Err(bad(format!("choices[{i}][{j}] is {}, not an int", describe(rank)))),
            };
            ranks.iter().enumerate().map(rank).collect::<Result<Vec<i64>>>()
        };
        outer.iter().enumerate().map(path).collect()
    }

    /// Lays out a static tree from its choices (see `_sampler.pyi`).
    #[pyfunction]
    fn static_tree<'py>(
        py: Python<'py>,
        choices: &Bound<'py, PyAny>,
    ) -> PyResult<(Column<'py, i64>, Column<'py, i64>)> {
        let choices = parse_choices(choices)?;
        let (parents, ranks) = guarded(py, || layout::static_tree(&choices))?;
        Ok((PyArray1::from_vec(py, parents), PyArray1::from_vec(py, ranks)))
    }

    type Buffers<'py> = (Bound<'py, PyArrayDyn<i64>>, Bound<'py, PyArrayDyn<bool>>, Bound<'py, PyArrayDyn<i64>>);

    /// Depths, ancestor masks and root-to-leaf paths of one tree or a batch (see `_sampler.pyi`).
    #[pyfunction]
    fn tree_buffers<'py>(py: Python<'py>, parents: &Bound<'py, PyAny>) -> PyResult<Buffers<'py>> {
        let a = ints("parents", parents, &[1, 2])?;
        let (batched, n) = (a.shape.len() == 2, a.shape[a.shape.len() - 1]);
        let rows = if batched { a.shape[0] } else { 1 };
        if rows == 0 {
            Err(Error("parents has an empty batch axis".into()))?;
        }
        let (depth, mask, retrieve, leaves, width) = guarded(py, || layout::batch_buffers(&a.values, rows, batched))?;
        let lead = &a.shape[..a.shape.len() - 1];
        let shaped = |tail: &[usize]| [lead, tail].concat();
        Ok((
            ndarray(py, &shaped(&[n]), depth)?,
            ndarray(py, &shaped(&[n, n]), mask)?,
            ndarray(py, &shaped(&[leaves, width]), retrieve)?,
        ))
    }

    /// The tree arguments, read and shape-checked: parents, tokens, kinds, p, q and (B, n, V).
    struct TreeArgs {
        ints: [Vec<i64>; 3],
        p: Vec<f64>,
        q: Option<Vec<f64>>,
        size: (usize, usize, usize),
    }

    /// Reads the tree arguments; `batched`: with a leading batch axis.
    fn read_trees(
        [parents, tokens, kinds]: [&Bound<'_, PyAny>; 3],
        p: &Bound<'_, PyAny>,
        q: Option<&Bound<'_, PyAny>>,
        batched: bool,
    ) -> Result<TreeArgs> {
        let dims = usize::from(batched);
        let (par, tok) = (ints("parents", parents, &[1 + dims])?, ints("tokens", tokens, &[1 + dims])?);
        let kin = ints("kinds", kinds, &[1 + dims])?;
        let (p, q) = (probs("p", p, 2 + dims)?, q.map(|q| probs("q", q, 2 + dims)).transpose()?);
        let size =
            tree_shapes(batched, [&par.shape, &tok.shape, &kin.shape], &p.shape, q.as_ref().map(|q| &q.shape[..]))?;
        Ok(TreeArgs { ints: [par.values, tok.values, kin.values], p: p.values, q: q.map(|q| q.values), size })
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
        let flaw = parse_flaw(flaw)?;
        let TreeArgs { ints: [par, tok, kin], mut p, q, size: (b, n, v) } =
            read_trees([parents, tokens, kinds], p, q, true)?;
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
        Ok((
            ndarray(py, &[outs.len(), n], path)?,
            column(|o| o.path.len() as i64),
            column(|o| o.token as i64),
            PyArray1::from_vec(py, outs.iter().map(|o| o.fallback).collect()),
        ))
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
        let flaw = parse_flaw(flaw)?;
        let TreeArgs { ints: [par, tok, kin], p, q, size: (_, _, v) } =
            read_trees([parents, tokens, kinds], p, q, false)?;
        let law = guarded(py, || law::tree_law([&par, &tok, &kin], p, q.as_deref(), v, flaw))?;
        law.into_iter().map(|(o, w)| Ok((PyTuple::new(py, o.path)?, o.token, o.fallback, w))).collect()
    }

    /// Rust core of specref: lossless speculative-decoding verifiers. Probability rows must sum to 1 within
    /// NORM_TOLERANCE.
    #[pymodule]
    #[pyo3(name = "_sampler")]
    fn sampler_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<SeededCoin>()?;
        m.add_function(wrap_pyfunction!(verify_chain, m)?)?;
        m.add_function(wrap_pyfunction!(chain_law, m)?)?;
        m.add_function(wrap_pyfunction!(static_tree, m)?)?;
        m.add_function(wrap_pyfunction!(tree_buffers, m)?)?;
        m.add_function(wrap_pyfunction!(verify_tree, m)?)?;
        m.add_function(wrap_pyfunction!(tree_law, m)?)?;
        m.add("NORM_TOLERANCE", NORM_TOLERANCE)?;
        Ok(())
    }
}
