//! One operation on its operands, and programs of several operations on
//! named inputs evaluated in one call (the role of Nx's `defn`: a client
//! pays one round trip for a whole computation).

use std::collections::HashMap;

use crate::{
    EngineError, Tensor,
    ops::{self, Binary, Reduce, Unary},
    shape::{self, Range},
};

/// An operation and its attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Elementwise binary, broadcasting.
    Binary(Binary),
    /// Elementwise unary.
    Unary(Unary),
    /// Batched matmul.
    Matmul,
    /// Permute axes (empty = reverse).
    Transpose(Vec<i64>),
    /// New shape (one -1 allowed).
    Reshape(Vec<i64>),
    /// Ranges of leading axes.
    Slice(Vec<Range>),
    /// Join along an axis.
    Concat(i64),
    /// Reduce over axes (empty = all).
    Reduce {
        /// Which reduction.
        op: Reduce,
        /// Axes to reduce.
        axes: Vec<i64>,
        /// Keep reduced axes as size 1.
        keep_dims: bool,
    },
}

/// Bounds on what one call may compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most elements in any operand or result.
    pub max_elements: usize,
    /// Most dimensions.
    pub max_rank: usize,
    /// Most steps in a program.
    pub max_steps: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_elements: 16 * 1024 * 1024,
            max_rank: 8,
            max_steps: 64,
        }
    }
}

impl Limits {
    /// Rejects `tensor` (named `name`) if it breaks a bound.
    pub fn check(&self, name: &str, tensor: &Tensor) -> Result<(), EngineError> {
        if tensor.shape().len() > self.max_rank {
            return Err(EngineError::too_large(
                name,
                format!(
                    "rank {} is above the limit of {}",
                    tensor.shape().len(),
                    self.max_rank
                ),
            ));
        }
        if tensor.len() > self.max_elements {
            return Err(EngineError::too_large(
                name,
                format!(
                    "{} elements are above the limit of {}",
                    tensor.len(),
                    self.max_elements
                ),
            ));
        }
        Ok(())
    }
}

fn arity(op: &Op) -> Option<usize> {
    match op {
        Op::Binary(_) | Op::Matmul => Some(2),
        Op::Concat(_) => None,
        _ => Some(1),
    }
}

/// Applies `op` to `operands`; the result is checked against `limits`.
pub fn apply(op: &Op, operands: &[&Tensor], limits: &Limits) -> Result<Tensor, EngineError> {
    if let Some(n) = arity(op)
        && operands.len() != n
    {
        return Err(EngineError::invalid(
            "operands",
            format!("{op:?} takes {n} operands, got {}", operands.len()),
        ));
    }
    // Guard the result size before computing it: broadcasting and matmul
    // can produce far more elements than their operands.
    if let Op::Binary(_) = op {
        let out = shape::broadcast_shapes(operands[0].shape(), operands[1].shape())
            .map_err(|p| EngineError::invalid("operands", p.to_string()))?;
        let n = out
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        if n > limits.max_elements {
            return Err(EngineError::too_large(
                "result",
                format!(
                    "{n} elements are above the limit of {}",
                    limits.max_elements
                ),
            ));
        }
    }
    let result = match op {
        Op::Binary(b) => ops::binary(*b, operands[0], operands[1]),
        Op::Unary(u) => ops::unary(*u, operands[0]),
        Op::Matmul => ops::matmul(operands[0], operands[1]),
        Op::Transpose(perm) => shape::transpose(operands[0], perm),
        Op::Reshape(dims) => shape::reshape(operands[0], dims),
        Op::Slice(ranges) => shape::slice(operands[0], ranges),
        Op::Concat(axis) => shape::concat(operands, *axis),
        Op::Reduce {
            op,
            axes,
            keep_dims,
        } => ops::reduce(*op, operands[0], axes, *keep_dims),
    }?;
    limits.check("result", &result)?;
    Ok(result)
}

/// One step: `output = op(inputs...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Name of the result, usable by later steps.
    pub output: String,
    /// The operation.
    pub op: Op,
    /// Names of request inputs or earlier outputs.
    pub inputs: Vec<String>,
}

/// Runs `steps` over `inputs`, returning the named `outputs` (empty: the
/// last step's). Errors name the step and the input.
pub fn evaluate(
    inputs: HashMap<String, Tensor>,
    steps: &[Step],
    outputs: &[String],
    limits: &Limits,
) -> Result<HashMap<String, Tensor>, EngineError> {
    if steps.is_empty() {
        return Err(EngineError::invalid(
            "steps",
            "a program needs at least one step",
        ));
    }
    if steps.len() > limits.max_steps {
        return Err(EngineError::too_large(
            "steps",
            format!(
                "{} steps are above the limit of {}",
                steps.len(),
                limits.max_steps
            ),
        ));
    }
    let mut values = inputs;
    for (i, step) in steps.iter().enumerate() {
        if step.output.is_empty() {
            return Err(EngineError::invalid(
                format!("steps[{i}].output"),
                "is required",
            ));
        }
        if values.contains_key(&step.output) {
            return Err(EngineError::invalid(
                format!("steps[{i}].output"),
                format!("{:?} is already defined", step.output),
            ));
        }
        let mut operands = Vec::with_capacity(step.inputs.len());
        for (j, name) in step.inputs.iter().enumerate() {
            operands.push(values.get(name).ok_or_else(|| {
                EngineError::invalid(
                    format!("steps[{i}].inputs[{j}]"),
                    format!("{name:?} is not defined"),
                )
            })?);
        }
        let result = apply(&step.op, &operands, limits).map_err(|e| {
            let operand = format!("steps[{i}] ({}): {}", step.output, e.operand);
            e.renamed(operand)
        })?;
        values.insert(step.output.clone(), result);
    }
    let wanted: Vec<String> = if outputs.is_empty() {
        steps
            .last()
            .map(|s| vec![s.output.clone()])
            .unwrap_or_default()
    } else {
        outputs.to_vec()
    };
    let mut out = HashMap::with_capacity(wanted.len());
    for (i, name) in wanted.iter().enumerate() {
        let value = values.remove(name).ok_or_else(|| {
            EngineError::invalid(format!("outputs[{i}]"), format!("{name:?} is not defined"))
        })?;
        out.insert(name.clone(), value);
    }
    Ok(out)
}
