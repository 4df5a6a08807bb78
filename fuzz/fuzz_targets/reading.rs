//! Any bytes as a `platform.ingest.v1.Reading` into ingest's validation:
//! a reading or a rejection naming the field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = contracts::ingest::v1::Reading::decode(data) {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let _ = ingest::reading::Reading::parse(raw, now, &ingest::reading::Limits::default());
    }
});
