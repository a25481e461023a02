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
    TokenOutOfRange {
        arg: &'static str,
        at: Index,
        token: i64,
        vocab: usize,
    },
    /// A draft token has q = 0, so q cannot be the law it was sampled from.
    ZeroDraftProbability { at: Index, token: usize },
    /// A tree node's child was sampled (kind 1 or 2) but has q = 0 in its parent's row.
    ZeroChildProbability {
        at: Index,
        token: usize,
        q_at: Index,
    },
    /// A parent array entry breaks the layout: node 0 is the root (-1), node i's parent is in [0, i).
    Parent { at: Index, node: usize, parent: i64 },
    /// A tree node's kind is not 0, 1 or 2.
    Kind { at: Index, kind: i64 },
    /// Two children drawn without replacement from one node carry the same token.
    DuplicateSibling {
        at: Index,
        token: usize,
        first: usize,
    },
    /// q is None but some node's children need the law they were drawn from.
    MissingQ { reason: String },
    /// A static-tree choices list is malformed.
    Choice { path: usize, problem: ChoiceProblem },
    /// A static tree would have more nodes than allowed.
    TooManyNodes { nodes: usize, limit: usize },
    /// The choices argument is not a list of lists of ints (raised by the Python glue).
    NotChoices(String),
    /// The name of a test-only flaw is not recognised.
    UnknownFlaw(String),
    /// [`crate::coin::enumerate_law`] exceeded its run budget.
    TooManyRuns { limit: usize },
    /// [`crate::coin::enumerate_law`] saw a run make different choices on replay.
    Nondeterministic,
}

/// What is wrong with one path of a static-tree choices list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChoiceProblem {
    /// The path lists no rank (the root is implicit, not a path).
    Empty,
    /// A rank is negative.
    NegativeRank { position: usize, rank: i64 },
    /// The same path appeared earlier, at index `first`.
    Duplicate { first: usize },
    /// The path without its last rank (its parent) is not in the list.
    MissingParent,
}

impl fmt::Display for ChoiceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "is empty; every path needs at least one rank"),
            Self::NegativeRank { position, rank } => {
                write!(
                    f,
                    "has rank {rank} at position {position}; ranks must be >= 0"
                )
            }
            Self::Duplicate { first } => write!(f, "repeats choices[{first}]"),
            Self::MissingParent => write!(
                f,
                "has no parent: the path without its last rank is not in the list"
            ),
        }
    }
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
            Self::TokenOutOfRange {
                arg,
                at,
                token,
                vocab,
            } => write!(f, "{arg}{at} is {token}, outside the vocabulary [0, {vocab})"),
            Self::ZeroDraftProbability { at, token } => write!(
                f,
                "draft_tokens{at} = {token} has zero probability under q, so q is not the law it was \
                 sampled from"
            ),
            Self::ZeroChildProbability { at, token, q_at } => write!(
                f,
                "tokens{at} = {token} has zero probability under q{q_at}, its parent's row, so q is not \
                 the law the child was drawn from"
            ),
            Self::Parent { at, node: 0, parent } => write!(
                f,
                "parents{at} is {parent}; node 0 is the root and its parent must be -1"
            ),
            Self::Parent { at, node, parent } => write!(
                f,
                "parents{at} is {parent}; node {node}'s parent must be an earlier node, in [0, {node})"
            ),
            Self::Kind { at, kind } => write!(
                f,
                "kinds{at} is {kind}; expected 0 (Deterministic), 1 (IidSampled) or 2 \
                 (WithoutReplacement)"
            ),
            Self::DuplicateSibling { at, token, first } => write!(
                f,
                "tokens{at} = {token} repeats the token of its sibling node {first}; children drawn \
                 without replacement (kind 2) must be distinct"
            ),
            Self::MissingQ { reason } => write!(f, "q is None, but {reason}"),
            Self::Choice { path, problem } => write!(f, "choices[{path}] {problem}"),
            Self::TooManyNodes { nodes, limit } => write!(
                f,
                "choices make a tree of {nodes} nodes (root included); at most {limit} are allowed"
            ),
            Self::NotChoices(detail) => {
                write!(f, "choices must be a list of lists of ints: {detail}")
            }
            Self::UnknownFlaw(name) => write!(
                f,
                "unknown flaw {name:?}; expected None or one of {}",
                crate::chain::FLAW_NAMES
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
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
