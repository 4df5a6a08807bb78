//! The workspace's rules, checked on the real workspace under `cargo test`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is the test failure report"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, start to finish"
)]

use platform_tests::tidy;

#[test]
fn workspace_keeps_its_rules() {
    let kinds: Vec<(&str, &str)> = contracts::JOB_KINDS
        .iter()
        .map(|(kind, _, message)| (*kind, *message))
        .collect();
    assert!(!kinds.is_empty(), "the contracts declare job kinds");
    let workspace =
        tidy::load(env!("CARGO_MANIFEST_DIR").as_ref(), &kinds).expect("read the workspace");
    assert!(
        workspace.members.len() >= 8,
        "found only {} members",
        workspace.members.len()
    );
    let violations = tidy::check(&workspace);
    let report: Vec<String> = violations.iter().map(|v| format!("  - {v}")).collect();
    assert!(
        violations.is_empty(),
        "workspace rules broken:\n{}",
        report.join("\n")
    );
}
