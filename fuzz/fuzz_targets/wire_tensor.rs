//! Any bytes as a `platform.numerics.v1.Tensor` into the wire decoder: it
//! answers a tensor or an error naming the problem, never a panic, and
//! never allocates past the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(wire) = contracts::numerics::v1::Tensor::decode(data) {
        let limits = numerics_engine::program::Limits::default();
        let _ = numerics::wire::decode("input", &wire, &limits, false);
        let _ = numerics::wire::decode("input", &wire, &limits, true);
    }
});
