//! Compiles `proto/` with protox (pure Rust), so a fresh machine needs no
//! system `protoc`, and writes the descriptor set that gRPC reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "platform/service/v1/service_info.proto",
        "platform/ingest/v1/ingest.proto",
        "platform/jobs/v1/jobs.proto",
        "platform/numerics/v1/numerics.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let descriptors = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("platform_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Services a later issue implements answer UNIMPLEMENTED until then.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
