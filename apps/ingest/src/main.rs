//! The `ingest` binary: the shared runtime running [`ingest::app`].

fn main() -> std::process::ExitCode {
    service_runtime::run_main(ingest::app())
}
