//! Reverse-mode automatic differentiation on a tape, over the handful of
//! matrix operations the anomaly model is made of. Each operation records
//! its inputs; `backward` walks the tape once in reverse, accumulating each
//! node's gradient into its inputs (the chain rule, node by node).

/// A row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` values.
    pub values: Vec<f32>,
}

impl Matrix {
    /// A matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            values: vec![0.0; rows * cols],
        }
    }
}

/// A value on the tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var(usize);

#[derive(Debug, Clone)]
enum Recorded {
    Leaf,
    MatMul(Var, Var),
    AddRow(Var, Var),
    Relu(Var),
    /// Mean binary cross-entropy of logits against fixed targets.
    BceWithLogits(Var, Vec<f32>),
}

/// The tape: values, their gradients, and how each was made.
#[derive(Debug, Default)]
pub struct Tape {
    values: Vec<Matrix>,
    grads: Vec<Matrix>,
    ops: Vec<Recorded>,
}

fn matmul(a: &Matrix, b: &Matrix, transpose_a: bool, transpose_b: bool) -> Matrix {
    let (m, k) = if transpose_a {
        (a.cols, a.rows)
    } else {
        (a.rows, a.cols)
    };
    let n = if transpose_b { b.rows } else { b.cols };
    let mut out = Matrix::zeros(m, n);
    for i in 0..m {
        for p in 0..k {
            let left = if transpose_a {
                a.values[p * a.cols + i]
            } else {
                a.values[i * a.cols + p]
            };
            if left == 0.0 {
                continue;
            }
            for j in 0..n {
                let right = if transpose_b {
                    b.values[j * b.cols + p]
                } else {
                    b.values[p * b.cols + j]
                };
                out.values[i * n + j] += left * right;
            }
        }
    }
    out
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Tape {
    fn push(&mut self, value: Matrix, op: Recorded) -> Var {
        self.grads.push(Matrix::zeros(value.rows, value.cols));
        self.values.push(value);
        self.ops.push(op);
        Var(self.values.len() - 1)
    }

    /// A parameter or an input.
    pub fn leaf(&mut self, value: Matrix) -> Var {
        self.push(value, Recorded::Leaf)
    }

    /// `a @ b`.
    pub fn matmul(&mut self, a: Var, b: Var) -> Var {
        let value = matmul(&self.values[a.0], &self.values[b.0], false, false);
        self.push(value, Recorded::MatMul(a, b))
    }

    /// `a + bias` with the 1-row `bias` added to every row.
    pub fn add_row(&mut self, a: Var, bias: Var) -> Var {
        let mut value = self.values[a.0].clone();
        let b = &self.values[bias.0].values;
        for row in value.values.chunks_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        self.push(value, Recorded::AddRow(a, bias))
    }

    /// `max(a, 0)`.
    pub fn relu(&mut self, a: Var) -> Var {
        let mut value = self.values[a.0].clone();
        value.values.iter_mut().for_each(|x| *x = x.max(0.0));
        self.push(value, Recorded::Relu(a))
    }

    /// Mean binary cross-entropy of `logits` (n x 1) against `targets`,
    /// computed stably from the logits.
    pub fn bce_with_logits(&mut self, logits: Var, targets: Vec<f32>) -> Var {
        let z = &self.values[logits.0].values;
        let n = z.len().max(1) as f32;
        let loss: f32 = z
            .iter()
            .zip(&targets)
            .map(|(&z, &y)| z.max(0.0) - z * y + (-z.abs()).exp().ln_1p())
            .sum::<f32>()
            / n;
        self.push(
            Matrix {
                rows: 1,
                cols: 1,
                values: vec![loss],
            },
            Recorded::BceWithLogits(logits, targets),
        )
    }

    /// A value.
    pub fn value(&self, v: Var) -> &Matrix {
        &self.values[v.0]
    }

    /// A gradient, after [`Tape::backward`].
    pub fn grad(&self, v: Var) -> &Matrix {
        &self.grads[v.0]
    }

    /// Gradients of the scalar `loss` with respect to every value.
    pub fn backward(&mut self, loss: Var) {
        self.grads[loss.0].values.iter_mut().for_each(|g| *g = 1.0);
        for node in (0..=loss.0).rev() {
            let upstream = self.grads[node].clone();
            match self.ops[node].clone() {
                Recorded::Leaf => {}
                Recorded::MatMul(a, b) => {
                    let da = matmul(&upstream, &self.values[b.0], false, true);
                    let db = matmul(&self.values[a.0], &upstream, true, false);
                    add_into(&mut self.grads[a.0], &da);
                    add_into(&mut self.grads[b.0], &db);
                }
                Recorded::AddRow(a, bias) => {
                    add_into(&mut self.grads[a.0], &upstream);
                    let width = self.values[bias.0].values.len();
                    for row in upstream.values.chunks(width) {
                        self.grads[bias.0]
                            .values
                            .iter_mut()
                            .zip(row)
                            .for_each(|(g, u)| *g += u);
                    }
                }
                Recorded::Relu(a) => {
                    let input = &self.values[a.0].values;
                    let grad = &mut self.grads[a.0].values;
                    for ((g, &x), &u) in grad.iter_mut().zip(input).zip(&upstream.values) {
                        if x > 0.0 {
                            *g += u;
                        }
                    }
                }
                Recorded::BceWithLogits(logits, targets) => {
                    let scale = upstream.values[0] / targets.len().max(1) as f32;
                    let z = self.values[logits.0].values.clone();
                    let grad = &mut self.grads[logits.0].values;
                    for ((g, &z), &y) in grad.iter_mut().zip(&z).zip(&targets) {
                        *g += (sigmoid(z) - y) * scale;
                    }
                }
            }
        }
    }
}

fn add_into(into: &mut Matrix, from: &Matrix) {
    into.values
        .iter_mut()
        .zip(&from.values)
        .for_each(|(a, b)| *a += b);
}
