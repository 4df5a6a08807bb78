//! Any environment into every app's configuration: a configuration or
//! problems naming their variables, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `NAME=value` lines; every app reads its own prefix.
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        // `<NAME>_FILE` reads a file: the harness stays off the disk.
        .filter(|(k, _)| !k.ends_with("_FILE"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let reader = |prefix: &str| service_runtime::EnvReader::from_vars(prefix, vars.clone());
    let mut env = reader("WORKER_");
    let _ = worker::Config::from_env(&mut env);
    let _ = env.finish();
    let mut env = reader("INGEST_");
    let _ = ingest::Config::from_env(&mut env);
    let _ = env.finish();
    let mut env = reader("NUMERICS_");
    let _ = numerics::Config::from_env(&mut env);
    let _ = env.finish();
});
