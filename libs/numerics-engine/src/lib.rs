//! The numerics engine: dense tensors with numpy's broadcasting, the usual
//! elementwise functions, reductions along any axes, shape operations,
//! batched matmul and the decompositions on faer, small programs of
//! operations evaluated in one call, and the window statistics of the
//! platform's aggregation jobs.
//!
//! Architecture invariant: the engine knows nothing of gRPC (or of any
//! transport); `apps/numerics` adapts it to the contract. Every input
//! problem is an [`EngineError`] naming the operand and what is wrong;
//! nothing here panics on user input.

pub mod autodiff;
mod error;
pub mod linalg;
pub mod model;
pub mod ops;
pub mod program;
pub mod shape;
pub mod stats;
mod tensor;
pub mod train;
pub mod weights;

pub use error::{EngineError, ErrorKind};
pub use tensor::{DType, Data, Tensor};
