//! Prints its build stamp, a SHA-256 computed by ring's assembly and the
//! bundled SQLite's version: the C code must be linked in, not just built,
//! for the reproducibility check to cover it.

fn main() {
    let digest = ring::digest::digest(&ring::digest::SHA256, b"release canary");
    // SAFETY: sqlite3_libversion takes no arguments and returns a pointer
    // to a static NUL-terminated string that lives as long as the process.
    let sqlite = unsafe { std::ffi::CStr::from_ptr(libsqlite3_sys::sqlite3_libversion()) };
    println!(
        "release-canary (revision {}, built {}) sha256 {:02x?} sqlite {}",
        env!("PLATFORM_GIT_REVISION"),
        env!("PLATFORM_BUILD_TIME"),
        digest.as_ref(),
        sqlite.to_string_lossy()
    );
}
