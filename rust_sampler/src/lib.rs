//! specref's verifier core: lossless speculative sampling (Leviathan et al. 2023, arXiv 2211.17192;
//! Chen et al. 2023, arXiv 2302.01318) in pure Rust.
//!
//! [`coin`] holds the randomness interface and the exact-law enumerator, [`chain`] the chain (SpS)
//! verifier and its input validation, [`tree`] tree layouts and the tree verifier (whose node procedure
//! the chain verifier runs too), [`error`] the errors. With the `python` feature this file also builds
//! the `specref._sampler` extension module: glue only, no sampling logic.

pub mod chain;
pub mod coin;
pub mod error;
pub mod tree;

#[cfg(feature = "python")]
mod python {
    use std::any::Any;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use numpy::ndarray::{Array2, ArrayD, ArrayView, Axis, Dimension, Ix1, Ix2, Ix3, IxDyn};
    use numpy::prelude::*;
    use numpy::{Element, PyArray1, PyArray2, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray};
    use pyo3::exceptions::{PyRuntimeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBool, PyInt, PyList, PyTuple};

    use crate::chain::{self, Flaw, ProbTable};
    use crate::coin;
    use crate::error::SamplerError;
    use crate::tree::{self, TreeArrays};

    impl From<SamplerError> for PyErr {
        fn from(e: SamplerError) -> Self {
            PyValueError::new_err(e.to_string())
        }
    }

    /// A probability array borrowed from NumPy, float32 or float64.
    enum BorrowedProbs<'py> {
        F32(PyReadonlyArrayDyn<'py, f32>),
        F64(PyReadonlyArrayDyn<'py, f64>),
    }

    /// A strided view of a probability array; entries widen to f64 when read.
    enum Probs<'a, D> {
        F32(ArrayView<'a, f32, D>),
        F64(ArrayView<'a, f64, D>),
    }

    impl BorrowedProbs<'_> {
        fn view(&self) -> Probs<'_, IxDyn> {
            match self {
                Self::F32(a) => Probs::F32(a.as_array()),
                Self::F64(a) => Probs::F64(a.as_array()),
            }
        }
    }

    impl<'a> Probs<'a, IxDyn> {
        fn shape(&self) -> &[usize] {
            match self {
                Self::F32(a) => a.shape(),
                Self::F64(a) => a.shape(),
            }
        }

        fn into_dim<D: Dimension>(self, arg: &'static str) -> Result<Probs<'a, D>, SamplerError> {
            match self {
                Self::F32(a) => fixed_dim(arg, a).map(Probs::F32),
                Self::F64(a) => fixed_dim(arg, a).map(Probs::F64),
            }
        }
    }

    impl Probs<'_, Ix3> {
        /// The (G+1, V) or (G, V) table of sequence `b`.
        fn sequence(&self, b: usize) -> Probs<'_, Ix2> {
            match self {
                Self::F32(a) => Probs::F32(a.index_axis(Axis(0), b)),
                Self::F64(a) => Probs::F64(a.index_axis(Axis(0), b)),
            }
        }
    }

    impl ProbTable for Probs<'_, Ix2> {
        fn rows(&self) -> usize {
            match self {
                Self::F32(a) => a.nrows(),
                Self::F64(a) => a.nrows(),
            }
        }

        fn row_len(&self, _: usize) -> usize {
            match self {
                Self::F32(a) => a.ncols(),
                Self::F64(a) => a.ncols(),
            }
        }

        fn prob(&self, i: usize, j: usize) -> f64 {
            match self {
                Self::F32(a) => a[[i, j]].into(),
                Self::F64(a) => a[[i, j]],
            }
        }
    }

    /// Converts a view whose ndim [`chain::check_shapes`] already verified.
    fn fixed_dim<'a, T, D: Dimension>(
        arg: &'static str,
        a: ArrayView<'a, T, IxDyn>,
    ) -> Result<ArrayView<'a, T, D>, SamplerError> {
        let got = a.ndim();
        a.into_dimensionality().map_err(|_| SamplerError::Ndim {
            arg,
            expected: D::NDIM.unwrap_or(got),
            got,
        })
    }

    /// Describes what was passed instead of an accepted array, for error messages.
    fn describe(obj: &Bound<'_, PyAny>) -> String {
        match obj.cast::<PyUntypedArray>() {
            Ok(a) => format!("dtype {}", a.dtype()),
            Err(_) => obj
                .get_type()
                .name()
                .map_or_else(|_| "another type".to_owned(), |n| format!("{n}")),
        }
    }

    /// Borrows `obj` in place as an array of `T`: None if it is not one, an error if it cannot be read
    /// in place.
    fn borrow_as<'py, T: Element>(
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
    ) -> Option<Result<PyReadonlyArrayDyn<'py, T>, SamplerError>> {
        let a = obj.extract::<PyReadonlyArrayDyn<'py, T>>().ok()?;
        // ndarray views need aligned elements; NumPy can hand out unaligned buffers (frombuffer).
        Some(if a.is_aligned() {
            Ok(a)
        } else {
            Err(SamplerError::Unaligned { arg })
        })
    }

    fn borrow_probs<'py>(
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
    ) -> Result<BorrowedProbs<'py>, SamplerError> {
        if let Some(a) = borrow_as::<f64>(arg, obj) {
            return a.map(BorrowedProbs::F64);
        }
        if let Some(a) = borrow_as::<f32>(arg, obj) {
            return a.map(BorrowedProbs::F32);
        }
        Err(SamplerError::Dtype {
            arg,
            accepted: "float32 or float64",
            got: describe(obj),
        })
    }

    fn borrow_ints<'py>(
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
    ) -> Result<PyReadonlyArrayDyn<'py, i64>, SamplerError> {
        borrow_as::<i64>(arg, obj).unwrap_or_else(|| {
            Err(SamplerError::Dtype {
                arg,
                accepted: "int64",
                got: describe(obj),
            })
        })
    }

    /// Borrows p, q and the draft tokens in place and checks their shapes (`batched`: a leading batch
    /// axis).
    #[allow(clippy::type_complexity)]
    fn borrow_inputs<'py>(
        p: &Bound<'py, PyAny>,
        q: &Bound<'py, PyAny>,
        draft_tokens: &Bound<'py, PyAny>,
        batched: bool,
    ) -> Result<
        (
            BorrowedProbs<'py>,
            BorrowedProbs<'py>,
            PyReadonlyArrayDyn<'py, i64>,
        ),
        SamplerError,
    > {
        let (p, q, draft) = (
            borrow_probs("p", p)?,
            borrow_probs("q", q)?,
            borrow_ints("draft_tokens", draft_tokens)?,
        );
        chain::check_shapes(
            batched,
            p.view().shape(),
            q.view().shape(),
            draft.as_array().shape(),
        )?;
        Ok((p, q, draft))
    }

    fn parse_flaw(flaw: Option<&str>) -> Result<Flaw, SamplerError> {
        flaw.map_or(Ok(Flaw::None), str::parse)
    }

    /// Runs `work` without the GIL; a panic becomes RuntimeError instead of crossing into Python.
    fn guarded<T: Send>(
        py: Python<'_>,
        work: impl FnOnce() -> Result<T, SamplerError> + Send,
    ) -> PyResult<T> {
        let result = py.detach(|| catch_unwind(AssertUnwindSafe(work)));
        match result {
            Ok(done) => Ok(done?),
            Err(panic) => Err(PyRuntimeError::new_err(format!(
                "specref._sampler panicked (a bug; please report): {}",
                panic_message(panic.as_ref())
            ))),
        }
    }

    fn panic_message(panic: &(dyn Any + Send)) -> &str {
        panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("unknown panic")
    }

    /// Reproducible randomness for verify_chain: xoshiro256++ seeded from a u64 through splitmix64.
    #[pyclass(name = "SeededCoin", module = "specref._sampler")]
    struct SeededCoin(coin::SeededCoin);

    #[pymethods]
    impl SeededCoin {
        /// A coin whose stream is fixed by seed, an int in [0, 2**64).
        #[new]
        fn new(seed: &Bound<'_, PyAny>) -> PyResult<Self> {
            match seed.extract::<u64>() {
                Ok(seed) => Ok(Self(coin::SeededCoin::new(seed))),
                Err(_) if seed.is_instance_of::<PyInt>() => Err(PyValueError::new_err(format!(
                    "seed must be in [0, 2**64), got {seed}"
                ))),
                Err(e) => Err(e),
            }
        }

        /// The next uniform in [0, 1), a multiple of 2**-53 (the one used by the next decision).
        fn uniform(&mut self) -> f64 {
            self.0.uniform()
        }
    }

    type Outcomes<'py> = (
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<bool>>,
    );

    /// Verifies a batch of drafted chains with modified rejection sampling.
    ///
    /// p: (B, G+1, V), q: (B, G, V), float32 or float64; draft_tokens: (B, G) int64. Rows are verified
    /// in order with the one coin. Returns (accepted, next_token, fallback) arrays of shape (B,).
    /// Raises ValueError for malformed input before drawing anything. Arrays are read in place with
    /// the GIL released, like NumPy's own loops: do not write to them from another thread meanwhile.
    #[pyfunction]
    #[pyo3(signature = (p, q, draft_tokens, coin, *, flaw = None))]
    fn verify_chain<'py>(
        py: Python<'py>,
        p: &Bound<'py, PyAny>,
        q: &Bound<'py, PyAny>,
        draft_tokens: &Bound<'py, PyAny>,
        mut coin: PyRefMut<'py, SeededCoin>,
        flaw: Option<&str>,
    ) -> PyResult<Outcomes<'py>> {
        let flaw = parse_flaw(flaw)?;
        let (p, q, draft) = borrow_inputs(p, q, draft_tokens, true)?;
        let (p, q, draft) = (p.view(), q.view(), draft.as_array());
        let (p, q) = (p.into_dim::<Ix3>("p")?, q.into_dim::<Ix3>("q")?);
        let draft = fixed_dim::<_, Ix2>("draft_tokens", draft)?;
        let rng = &mut coin.0;
        let outcomes = guarded(py, || {
            let batch = draft.nrows();
            let ps: Vec<_> = (0..batch).map(|b| p.sequence(b)).collect();
            let qs: Vec<_> = (0..batch).map(|b| q.sequence(b)).collect();
            let ds: Vec<Vec<i64>> = draft.outer_iter().map(|row| row.to_vec()).collect();
            chain::verify_batch(&ps, &qs, &ds, rng, flaw)
        })?;
        let column = |f: fn(&chain::Outcome) -> i64| outcomes.iter().map(f).collect::<Vec<_>>();
        Ok((
            PyArray1::from_vec(py, column(|o| o.accepted as i64)),
            PyArray1::from_vec(py, column(|o| o.token as i64)),
            PyArray1::from_vec(py, outcomes.iter().map(|o| o.fallback).collect()),
        ))
    }

    /// The exact output law of verify_chain on one chain, by enumerating every coin outcome.
    ///
    /// p: (G+1, V), q: (G, V), draft_tokens: (G,). Returns sorted
    /// (accepted, token, fallback, probability) tuples whose probabilities sum to 1.
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
        let (p, q, draft) = borrow_inputs(p, q, draft_tokens, false)?;
        let (p, q, draft) = (p.view(), q.view(), draft.as_array());
        let (p, q) = (p.into_dim::<Ix2>("p")?, q.into_dim::<Ix2>("q")?);
        let draft = fixed_dim::<_, Ix1>("draft_tokens", draft)?.to_vec();
        let law = guarded(py, || chain::exact_law(&p, &q, &draft, flaw))?;
        Ok(law
            .into_iter()
            .map(|(o, w)| (o.accepted, o.token, o.fallback, w))
            .collect())
    }

    /// The items of a list or tuple; None for anything else.
    fn items<'py>(obj: &Bound<'py, PyAny>) -> Option<Vec<Bound<'py, PyAny>>> {
        if let Ok(list) = obj.cast::<PyList>() {
            return Some(list.iter().collect());
        }
        obj.cast::<PyTuple>().ok().map(|t| t.iter().collect())
    }

    /// Reads a choices list: a list (or tuple) of lists (or tuples) of ints (not bools; NumPy integer
    /// scalars count as ints).
    fn parse_choices(choices: &Bound<'_, PyAny>) -> Result<Vec<Vec<i64>>, SamplerError> {
        let outer = items(choices)
            .ok_or_else(|| SamplerError::NotChoices(format!("got {}", describe(choices))))?;
        outer
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let ranks = items(path).ok_or_else(|| {
                    SamplerError::NotChoices(format!("choices[{i}] is {}", describe(path)))
                })?;
                ranks
                    .iter()
                    .enumerate()
                    .map(|(j, rank)| {
                        // Python ints and integer scalars (anything with __index__), not bools.
                        let boolean = rank.is_instance_of::<PyBool>();
                        let int = rank.is_instance_of::<PyInt>() && !boolean;
                        match rank.extract::<i64>() {
                            Ok(r) if !boolean => Ok(r),
                            _ => Err(SamplerError::NotChoices(if int {
                                format!("choices[{i}][{j}] = {rank} does not fit in int64")
                            } else {
                                format!("choices[{i}][{j}] is {}, not an int", describe(rank))
                            })),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Lays out an EAGLE/Medusa static tree from its choices (paths of child ranks from the root).
    ///
    /// Returns (parents, ranks), both (n,) int64, node 0 the root with -1 in both, nodes sorted by (path
    /// length, lexicographic path). Raises ValueError for a malformed list or more than 4096 nodes.
    #[pyfunction]
    fn static_tree<'py>(py: Python<'py>, choices: &Bound<'py, PyAny>) -> PyResult<Layout<'py>> {
        let paths = parse_choices(choices)?;
        let (parents, ranks) = guarded(py, || tree::static_tree(&paths))?;
        Ok((
            PyArray1::from_vec(py, parents),
            PyArray1::from_vec(py, ranks),
        ))
    }

    type Layout<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

    type Buffers<'py> = (
        Bound<'py, PyArrayDyn<i64>>,
        Bound<'py, PyArrayDyn<bool>>,
        Bound<'py, PyArrayDyn<i64>>,
    );

    /// Depths, ancestor masks and root-to-leaf node paths of one tree (parents (n,)) or a batch
    /// (parents (B, n)).
    ///
    /// Returns depth int64 (.., n), mask bool (.., n, n) (row i: i and its ancestors, root included),
    /// retrieve int64 (.., leaves, max_depth + 1): one row per leaf in increasing leaf index, node indices
    /// from the root, padded with -1; in a batch, leaves and max_depth are those of the largest tree.
    #[pyfunction]
    fn tree_buffers<'py>(py: Python<'py>, parents: &Bound<'py, PyAny>) -> PyResult<Buffers<'py>> {
        let parents = borrow_ints("parents", parents)?;
        let view = parents.as_array();
        let batched = match view.ndim() {
            1 => false,
            2 => true,
            got => {
                return Err(SamplerError::Shape {
                    arg: "parents",
                    detail: format!("expected (n,) or (B, n), got {got} dimensions"),
                }
                .into())
            }
        };
        let rows: Vec<Vec<i64>> = if batched {
            view.outer_iter()
                .map(|r| r.iter().copied().collect())
                .collect()
        } else {
            vec![view.iter().copied().collect()]
        };
        if rows.is_empty() {
            return Err(SamplerError::Empty {
                arg: "parents",
                axis: "batch",
            }
            .into());
        }
        let built = guarded(py, || {
            rows.iter()
                .enumerate()
                .map(|(b, r)| tree::tree_buffers(r, batched.then_some(b)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let (b, n) = (built.len(), rows[0].len());
        let leaves = built.iter().map(|t| t.leaf_paths.len()).max().unwrap_or(0);
        let width = 1 + built
            .iter()
            .flat_map(|t| t.depth.iter().copied())
            .max()
            .unwrap_or(0);
        let mut retrieve = vec![-1i64; b * leaves * width];
        for (t, block) in built.iter().zip(retrieve.chunks_mut(leaves * width)) {
            for (path, row) in t.leaf_paths.iter().zip(block.chunks_mut(width)) {
                row.iter_mut()
                    .zip(path)
                    .for_each(|(slot, &i)| *slot = i as i64);
            }
        }
        let depth = built
            .iter()
            .flat_map(|t| t.depth.iter().map(|&d| d as i64))
            .collect();
        let mask = built
            .iter()
            .flat_map(|t| t.ancestors.iter().copied())
            .collect();
        let lead: &[usize] = if batched { &[b] } else { &[] };
        let shaped = |tail: &[usize]| IxDyn(&[lead, tail].concat());
        let out_of_shape = |e: numpy::ndarray::ShapeError| PyRuntimeError::new_err(e.to_string());
        Ok((
            ArrayD::from_shape_vec(shaped(&[n]), depth)
                .map_err(out_of_shape)?
                .into_pyarray(py),
            ArrayD::from_shape_vec(shaped(&[n, n]), mask)
                .map_err(out_of_shape)?
                .into_pyarray(py),
            ArrayD::from_shape_vec(shaped(&[leaves, width]), retrieve)
                .map_err(out_of_shape)?
                .into_pyarray(py),
        ))
    }

    /// parents, tokens and kinds borrowed as int64 arrays.
    struct TreeInts<'py>([PyReadonlyArrayDyn<'py, i64>; 3]);

    impl TreeInts<'_> {
        /// Each argument's rows as vectors (one row if unbatched), in the order parents, tokens, kinds.
        fn rows(&self, batched: bool) -> [Vec<Vec<i64>>; 3] {
            self.0.each_ref().map(|a| {
                let a = a.as_array();
                if batched {
                    a.outer_iter()
                        .map(|r| r.iter().copied().collect())
                        .collect()
                } else {
                    vec![a.iter().copied().collect()]
                }
            })
        }
    }

    /// Borrows the tree arguments in place and checks their shapes (`batched`: a leading batch axis).
    fn borrow_tree<'py>(
        [parents, tokens, kinds]: [&Bound<'py, PyAny>; 3],
        p: &Bound<'py, PyAny>,
        q: Option<&Bound<'py, PyAny>>,
        batched: bool,
    ) -> Result<
        (
            TreeInts<'py>,
            BorrowedProbs<'py>,
            Option<BorrowedProbs<'py>>,
        ),
        SamplerError,
    > {
        let ints = TreeInts([
            borrow_ints("parents", parents)?,
            borrow_ints("tokens", tokens)?,
            borrow_ints("kinds", kinds)?,
        ]);
        let p = borrow_probs("p", p)?;
        let q = q.map(|q| borrow_probs("q", q)).transpose()?;
        let [ps, ts, ks] = ints.0.each_ref().map(|a| a.shape().to_vec());
        let q_shape = q.as_ref().map(|q| q.view().shape().to_vec());
        tree::check_tree_shapes(batched, &ps, &ts, &ks, p.view().shape(), q_shape.as_deref())?;
        Ok((ints, p, q))
    }

    fn tree_arrays<'a>(rows: &'a [Vec<Vec<i64>>; 3], b: usize) -> TreeArrays<'a> {
        TreeArrays {
            parents: &rows[0][b],
            tokens: &rows[1][b],
            kinds: &rows[2][b],
        }
    }

    type TreeOutcomes<'py> = (
        Bound<'py, PyArray2<i64>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<bool>>,
    );

    /// Verifies a batch of draft trees, each walked from its root by the rule of each node's kind.
    ///
    /// parents, tokens, kinds: (B, n) int64; p: (B, n, V), q: (B, n, V) or None, float32 or float64.
    /// Returns (path (B, n) padded with -1, path_len (B,), next_token (B,), fallback (B,)).
    #[pyfunction]
    #[pyo3(signature = (parents, tokens, kinds, p, q, coin, *, flaw = None))]
    #[allow(clippy::too_many_arguments)]
    fn verify_tree<'py>(
        py: Python<'py>,
        parents: &Bound<'py, PyAny>,
        tokens: &Bound<'py, PyAny>,
        kinds: &Bound<'py, PyAny>,
        p: &Bound<'py, PyAny>,
        q: Option<&Bound<'py, PyAny>>,
        mut coin: PyRefMut<'py, SeededCoin>,
        flaw: Option<&str>,
    ) -> PyResult<TreeOutcomes<'py>> {
        let flaw = parse_flaw(flaw)?;
        let (ints, p, q) = borrow_tree([parents, tokens, kinds], p, q, true)?;
        let rows = ints.rows(true);
        let p = p.view().into_dim::<Ix3>("p")?;
        let q = q
            .as_ref()
            .map(|q| q.view().into_dim::<Ix3>("q"))
            .transpose()?;
        let rng = &mut coin.0;
        let (batch, n) = (rows[0].len(), rows[0][0].len());
        let outcomes = guarded(py, || {
            let ps: Vec<_> = (0..batch).map(|b| p.sequence(b)).collect();
            let qs: Option<Vec<_>> = q
                .as_ref()
                .map(|q| (0..batch).map(|b| q.sequence(b)).collect());
            let trees: Vec<_> = (0..batch).map(|b| tree_arrays(&rows, b)).collect();
            tree::verify_batch(&trees, &ps, qs.as_deref(), rng, flaw)
        })?;
        let mut path = Array2::from_elem((batch, n), -1i64);
        for (mut row, o) in path.outer_iter_mut().zip(&outcomes) {
            row.iter_mut()
                .zip(&o.path)
                .for_each(|(slot, &i)| *slot = i as i64);
        }
        Ok((
            path.into_pyarray(py),
            PyArray1::from_vec(py, outcomes.iter().map(|o| o.path.len() as i64).collect()),
            PyArray1::from_vec(py, outcomes.iter().map(|o| o.token as i64).collect()),
            PyArray1::from_vec(py, outcomes.iter().map(|o| o.fallback).collect()),
        ))
    }

    /// The exact output law of verify_tree on one tree, by enumerating every coin outcome.
    ///
    /// parents, tokens, kinds: (n,); p: (n, V); q: (n, V) or None. Returns sorted (path, next_token,
    /// fallback, probability) tuples, path a tuple of node indices from the root.
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
        let (ints, p, q) = borrow_tree([parents, tokens, kinds], p, q, false)?;
        let rows = ints.rows(false);
        let p = p.view().into_dim::<Ix2>("p")?;
        let q = q
            .as_ref()
            .map(|q| q.view().into_dim::<Ix2>("q"))
            .transpose()?;
        let law = guarded(py, || {
            tree::exact_law(tree_arrays(&rows, 0), &p, q.as_ref(), flaw)
        })?;
        law.into_iter()
            .map(|(o, w)| Ok((PyTuple::new(py, o.path)?, o.token, o.fallback, w)))
            .collect()
    }

    /// Rust core of specref: lossless speculative-decoding verifiers (Leviathan et al. 2023; Chen et
    /// al. 2023). Probability rows must sum to 1 within NORM_TOLERANCE.
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
        m.add("NORM_TOLERANCE", chain::NORM_TOLERANCE)?;
        Ok(())
    }
}
