//! Errors of the verifier core.
//!
//! The lossless guarantee of speculative sampling (Leviathan et al. 2023, arXiv 2211.17192; Chen et al.
//! 2023, arXiv 2302.01318) holds only when p and q are probability distributions and every draft token
//! was actually sampled from its q row, so q(x) > 0. Inputs that break these premises are refused before
//! any randomness is drawn, with a message naming the argument, the position and the offending value.
//! The Python glue raises all of these as `ValueError`.

use std::fmt;

/// An index into an argument, printed like a NumPy index (`[1, 2, 5]`), or as nothing when empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index(pub Vec<usize>);

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        let parts: Vec<String> = self.0.iter().map(usize::to_string).collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

/// Why inputs were refused or an exact computation gave up.
#[derive(Clone, Debug, PartialEq)]
pub enum SamplerError {
    /// An array argument has the wrong number of dimensions.
    Ndim {
        arg: &'static str,
        expected: usize,
        got: usize,
    },
    /// An array argument has an element type the verifier does not accept.
    Dtype {
        arg: &'static str,
        accepted: &'static str,
        got: String,
    },
    /// An array argument's memory is not aligned for its dtype, so it cannot be read in place.
    Unaligned { arg: &'static str },
    /// An axis that must be non-empty (batch or vocabulary) has length 0.
    Empty {
        arg: &'static str,
        axis: &'static str,
    },
    /// Array shapes disagree with each other.
    Shape { arg: &'static str, detail: String },
    /// A probability is NaN or infinite.
    NonFinite {
        arg: &'static str,
        at: Index,
        value: f64,
    },
    /// A probability is negative.
    Negative {
        arg: &'static str,
        at: Index,
        value: f64,
    },
    /// A probability row does not sum to 1 within the tolerance.
    NotNormalized {
        arg: &'static str,
        at: Index,
        sum: f64,
        tolerance: f64,
    },
    /// A draft token is not a vocabulary index.
    TokenOutOfRange { at: Index, token: i64, vocab: usize },
    /// A draft token has q = 0, so q cannot be the law it was sampled from.
    ZeroDraftProbability { at: Index, token: usize },
    /// The name of a test-only flaw is not recognised.
    UnknownFlaw(String),
    /// [`crate::coin::enumerate_law`] exceeded its run budget.
    TooManyRuns { limit: usize },
    /// [`crate::coin::enumerate_law`] saw a run make different choices on replay.
    Nondeterministic,
}

impl fmt::Display for SamplerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ndim { arg, expected, got } => {
                write!(f, "{arg} must have {expected} dimensions, got {got}")
            }
            Self::Dtype { arg, accepted, got } => {
                write!(f, "{arg} must be a numpy.ndarray of dtype {accepted}, got {got}")
            }
            Self::Unaligned { arg } => write!(
                f,
                "{arg} is not aligned in memory for its dtype; pass numpy.ascontiguousarray({arg})"
            ),
            Self::Empty { arg, axis } => write!(f, "{arg} has an empty {axis} axis"),
            Self::Shape { arg, detail } => write!(f, "{arg} has the wrong shape: {detail}"),
            Self::NonFinite { arg, at, value } => {
                write!(f, "{arg}{at} is {value}; probabilities must be finite")
            }
            Self::Negative { arg, at, value } => {
                write!(f, "{arg}{at} is {value}; probabilities must be non-negative")
            }
            Self::NotNormalized {
                arg,
                at,
                sum,
                tolerance,
            } => write!(
                f,
                "{arg}{at} sums to {sum}, not 1 (tolerance {tolerance:e}); pass normalised probabilities"
            ),
            Self::TokenOutOfRange { at, token, vocab } => write!(
                f,
                "draft_tokens{at} is {token}, outside the vocabulary [0, {vocab})"
            ),
            Self::ZeroDraftProbability { at, token } => write!(
                f,
                "draft_tokens{at} = {token} has zero probability under q, so q is not the law it was \
                 sampled from"
            ),
            Self::UnknownFlaw(name) => write!(
                f,
                "unknown flaw {name:?}; expected None, \"non_strict\" or \"bonus_row_off\""
            ),
            Self::TooManyRuns { limit } => write!(
                f,
                "exact enumeration needs more than {limit} runs; use a smaller vocabulary or fewer drafts"
            ),
            Self::Nondeterministic => write!(
                f,
                "exact enumeration failed: the run made different choices when replayed"
            ),
        }
    }
}

impl std::error::Error for SamplerError {}
