//! The `platform` binary: runs the whole platform locally (`platform up`,
//! the default) or one app inside a supervised child (`platform serve NAME`).

fn main() -> std::process::ExitCode {
    launcher::main()
}
