//! The one error type of the verifier core: a message naming the argument, the position and the problem.
//!
//! Speculative sampling is lossless only when p and q are probability rows and every drafted token was
//! sampled from its q, so q(x) > 0 (Leviathan et al. 2023, arXiv 2211.17192). Inputs that break these
//! premises are refused before any randomness is drawn; the Python glue raises every [`Error`] as
//! `ValueError`.

use std::fmt;

/// Why inputs were refused, or why an exact computation gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Returns early with an [`Error`] whose message is formatted like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error(format!($($arg)*)))
    };
}

/// A position in an argument as NumPy prints an index, the batch position (if any) first: `[1, 0, 2]`.
pub fn at(batch: Option<usize>, index: &[usize]) -> String {
    let all: Vec<String> = batch.iter().chain(index).map(usize::to_string).collect();
    if all.is_empty() {
        String::new()
    } else {
        format!("[{}]", all.join(", "))
    }
}

/// A shape as Python prints it: `(2, 3)`, `(3,)`.
pub fn tuple(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("{shape:?}").replace('[', "(").replace(']', ")"),
    }
}
