//! The `gateway` binary: the shared runtime running [`gateway::app`].

fn main() -> std::process::ExitCode {
    service_runtime::run_main(gateway::app())
}
