//! A dense, row-major tensor of one of four element types.

use crate::EngineError;

/// Element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }

    /// Lower-case name, as errors print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::I32 => "i32",
            Self::I64 => "i64",
        }
    }

    /// Whether it is a float type.
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64)
    }
}

/// The elements, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// f32 elements.
    F32(Vec<f32>),
    /// f64 elements.
    F64(Vec<f64>),
    /// i32 elements.
    I32(Vec<i32>),
    /// i64 elements.
    I64(Vec<i64>),
}

impl Data {
    /// Element count.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::I64(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::F64(_) => DType::F64,
            Self::I32(_) => DType::I32,
            Self::I64(_) => DType::I64,
        }
    }
}

/// A dense tensor; the element count always matches the shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

/// Elements of a shape, or `None` on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl Tensor {
    /// A tensor of `shape` holding `data`; the counts must agree.
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Self, EngineError> {
        let expected = element_count(&shape)
            .ok_or_else(|| EngineError::too_large("shape", format!("{shape:?} overflows")))?;
        if expected != data.len() {
            return Err(EngineError::invalid(
                "data",
                format!(
                    "shape {shape:?} needs {expected} elements, got {}",
                    data.len()
                ),
            ));
        }
        Ok(Self { shape, data })
    }

    /// An f64 tensor.
    pub fn f64(shape: Vec<usize>, values: Vec<f64>) -> Result<Self, EngineError> {
        Self::new(shape, Data::F64(values))
    }

    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Result<Self, EngineError> {
        Self::new(shape, Data::F32(values))
    }

    /// A scalar f64.
    pub fn scalar(value: f64) -> Self {
        Self {
            shape: Vec::new(),
            data: Data::F64(vec![value]),
        }
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Takes the elements out.
    pub fn into_parts(self) -> (Vec<usize>, Data) {
        (self.shape, self.data)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Element count.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements as f64 (integers converted), for comparisons and tests.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::F64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// The first NaN's position, if any (integers have none).
    pub fn first_nan(&self) -> Option<usize> {
        match &self.data {
            Data::F32(v) => v.iter().position(|x| x.is_nan()),
            Data::F64(v) => v.iter().position(|x| x.is_nan()),
            Data::I32(_) | Data::I64(_) => None,
        }
    }
}
