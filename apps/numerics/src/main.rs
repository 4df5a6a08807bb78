//! The `numerics` binary: the shared runtime running [`numerics::app`].

fn main() -> std::process::ExitCode {
    service_runtime::run_main(numerics::app())
}
