//! One error type for every operation: which operand, what is wrong.

/// What kind of problem an [`EngineError`] is, for callers that map it to
/// a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input cannot work (shape, dtype, value, attribute).
    Invalid,
    /// The input is well-formed but too large for the configured limits.
    TooLarge,
    /// An iterative method did not converge.
    NotConverged,
}

/// A rejected input or a failed computation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operand}: {problem}")]
pub struct EngineError {
    /// The operand or attribute at fault, e.g. `operands[1]` or `attributes.axes`.
    pub operand: String,
    /// What is wrong with it.
    pub problem: String,
    /// Invalid input, too large, or not converged.
    pub kind: ErrorKind,
}

impl EngineError {
    /// An invalid input.
    pub fn invalid(operand: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            operand: operand.into(),
            problem: problem.into(),
            kind: ErrorKind::Invalid,
        }
    }

    /// An input over a limit.
    pub fn too_large(operand: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            operand: operand.into(),
            problem: problem.into(),
            kind: ErrorKind::TooLarge,
        }
    }

    /// The same error about a differently named operand (programs rename
    /// `operands[0]` to the step's input name).
    pub fn renamed(mut self, operand: impl Into<String>) -> Self {
        self.operand = operand.into();
        self
    }
}
