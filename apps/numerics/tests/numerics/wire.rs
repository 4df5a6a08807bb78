//! Tensors survive the wire in every dtype; malformed ones are rejected
//! with the operand named, never a panic.

use contracts::numerics::v1 as pb;
use numerics::wire::{decode, encode};
use numerics_engine::{Data, Tensor, program::Limits};
use proptest::prelude::*;

fn data(dtype: u8, n: usize, seed: i64) -> Data {
    match dtype % 4 {
        0 => Data::F32((0..n).map(|i| (i as f32 - seed as f32) * 0.5).collect()),
        1 => Data::F64((0..n).map(|i| (i as f64 - seed as f64) * 0.25).collect()),
        2 => Data::I32((0..n).map(|i| i as i32 - seed as i32).collect()),
        _ => Data::I64((0..n).map(|i| i as i64 * seed).collect()),
    }
}

proptest! {
    #[test]
    fn every_dtype_round_trips(dtype in 0u8..4, shape in prop::collection::vec(0usize..5, 0..4), seed in -50i64..50) {
        let n = shape.iter().product();
        let tensor = Tensor::new(shape, data(dtype, n, seed)).unwrap();
        let back = decode("t", &encode(&tensor), &Limits::default(), true).unwrap();
        prop_assert_eq!(back, tensor);
    }

    #[test]
    fn malformed_tensors_are_always_rejected(
        dtype in -1i32..7, shape in prop::collection::vec(0u64..2000, 0..10), len in 0usize..64,
    ) {
        let wire = pb::Tensor { dtype, shape: shape.clone(), data: vec![0; len] };
        let limits = Limits { max_elements: 4096, max_rank: 6, max_steps: 8 };
        match decode("operands[0]", &wire, &limits, true) {
            Ok(t) => {
                let size = if dtype == 1 || dtype == 3 { 4 } else { 8 };
                prop_assert!((1..=4).contains(&dtype));
                prop_assert_eq!(t.len() * size, len);
            }
            Err(e) => prop_assert!(e.operand.starts_with("operands[0]"), "{e}"),
        }
    }
}

#[test]
fn problems_are_named() {
    let limits = Limits::default();
    let short = pb::Tensor {
        dtype: pb::DType::F32 as i32,
        shape: vec![2, 2],
        data: vec![0; 12],
    };
    assert_eq!(
        decode("operands[1]", &short, &limits, true)
            .unwrap_err()
            .to_string(),
        "operands[1].data: 12 bytes for shape [2, 2] of f32 (needs 16)"
    );
    let missing = pb::Tensor {
        dtype: 0,
        shape: vec![],
        data: vec![],
    };
    assert_eq!(
        decode("a", &missing, &limits, true)
            .unwrap_err()
            .to_string(),
        "a.dtype: is required"
    );
    let huge = pb::Tensor {
        dtype: pb::DType::F64 as i32,
        shape: vec![1 << 20, 1 << 20],
        data: vec![],
    };
    assert!(
        decode("a", &huge, &limits, true)
            .unwrap_err()
            .to_string()
            .contains("more than the limit")
    );
    let nan = encode(&Tensor::f64(vec![2], vec![1.0, f64::NAN]).unwrap());
    assert_eq!(
        decode("a", &nan, &limits, false).unwrap_err().to_string(),
        "a.data: element 1 is NaN"
    );
}
