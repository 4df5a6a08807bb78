//! Cross-app tests (in `tests/`) and the tidy checks that keep the
//! workspace's rules true under plain `cargo test`: apps meet only through
//! `proto/`, libs never depend on apps, and every crate inherits the
//! workspace lints, has an owner, a section in `docs/architecture.md` and a
//! `//!` doc at its root.
//!
//! Architecture invariant: this crate's library holds only the checker; it
//! depends on no app or lib, so it can judge all of them.

pub mod tidy;
