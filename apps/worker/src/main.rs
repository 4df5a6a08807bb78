//! The `worker` binary: the shared runtime running [`worker::app`].

fn main() -> std::process::ExitCode {
    service_runtime::run_main(worker::app())
}
