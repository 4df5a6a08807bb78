//! The workspace rules, checked from `cargo metadata` and the files the
//! rules name. [`check`] is pure so its verdicts are unit-tested on made-up
//! workspaces; [`load`] reads the real one.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;

/// What a crate is, which decides what it may depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Under `apps/`: one deployable service.
    App,
    /// Under `libs/`: shared code.
    Lib,
    /// Declared with `[package.metadata.platform] role = "composer"`: may
    /// depend on apps (the launcher, the cross-app tests); nothing may
    /// depend on it.
    Composer,
}

/// How a dependency is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepKind {
    /// `[dependencies]`.
    Normal,
    /// `[dev-dependencies]`.
    Dev,
    /// `[build-dependencies]`.
    Build,
}

impl fmt::Display for DepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "dependency",
            Self::Dev => "dev-dependency",
            Self::Build => "build-dependency",
        })
    }
}

/// One workspace member as the rules see it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Package name.
    pub name: String,
    /// Directory relative to the workspace root, e.g. `apps/worker`.
    pub dir: String,
    /// What the crate is.
    pub role: Role,
    /// Dependencies on other workspace members: (name, kind).
    pub internal_deps: Vec<(String, DepKind)>,
    /// `[lints] workspace = true` in its manifest.
    pub inherits_lints: bool,
    /// Crate roots (lib.rs, main.rs) that do not start with a `//!` doc.
    pub undocumented_roots: Vec<String>,
}

/// A Rust source file of a member's `src/`.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Relative to the workspace root, e.g. `apps/ingest/src/sink.rs`.
    pub path: String,
    /// Its text.
    pub text: String,
}

/// The workspace and the files the rules read.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Every member.
    pub members: Vec<Member>,
    /// Contents of `CODEOWNERS`.
    pub codeowners: String,
    /// Contents of `docs/architecture.md`.
    pub architecture: String,
    /// The Rust sources under `apps/*/src` and `libs/*/src`.
    pub sources: Vec<SourceFile>,
    /// The job kinds declared in the contracts (`contracts::JOB_KINDS`).
    pub job_kinds: Vec<ContractKind>,
    /// Every Markdown file of the repository.
    pub markdown: Vec<SourceFile>,
    /// Every file and folder of the repository (relative, `/`-separated),
    /// without `target/`, `.git/` and `data/`.
    pub paths: std::collections::BTreeSet<String>,
    /// The text of every Rust file a Markdown file links a test in
    /// (`` `path.rs::test_name` ``), by path.
    pub linked_sources: std::collections::BTreeMap<String, String>,
    /// Every SQL migration (`*/migrations/**/*.sql`).
    pub migrations: Vec<SourceFile>,
}

/// A job kind declared in the contracts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractKind {
    /// e.g. `readings.aggregate_window`.
    pub kind: String,
    /// Its arguments message, e.g. `platform.jobs.v1.AggregateWindowArgs`.
    pub message: String,
}

/// A broken rule, naming what breaks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An app depends on another app.
    AppDependsOnApp {
        /// The depending crate.
        from: String,
        /// The crate depended on.
        to: String,
        /// Which section the dependency is declared in.
        kind: DepKind,
    },
    /// A lib depends on an app.
    LibDependsOnApp {
        /// The depending crate.
        from: String,
        /// The crate depended on.
        to: String,
        /// Which section the dependency is declared in.
        kind: DepKind,
    },
    /// Something depends on a composer.
    DependsOnComposer {
        /// The depending crate.
        from: String,
        /// The crate depended on.
        to: String,
        /// Which section the dependency is declared in.
        kind: DepKind,
    },
    /// A member does not inherit `[workspace.lints]`.
    LintsNotInherited {
        /// The crate.
        crate_name: String,
        /// Its directory, relative to the workspace root.
        dir: String,
    },
    /// No CODEOWNERS line names the crate's directory.
    NoOwner {
        /// The crate.
        crate_name: String,
        /// Its directory, relative to the workspace root.
        dir: String,
    },
    /// No heading in docs/architecture.md names the crate's directory.
    NoArchitectureSection {
        /// The crate.
        crate_name: String,
        /// Its directory, relative to the workspace root.
        dir: String,
    },
    /// A crate root does not start with `//!`.
    NoCrateDoc {
        /// The crate.
        crate_name: String,
        /// The crate root, relative to the workspace root.
        file: String,
    },
    /// Code spells a contract's job kind as a string instead of taking it
    /// from the contracts.
    HandWrittenJobKind {
        /// The file, relative to the workspace root.
        file: String,
        /// 1-based line.
        line: usize,
        /// The kind written out.
        kind: String,
    },
    /// An app builds a gRPC status outside its error module.
    StatusOutsideErrorModule {
        /// The file, relative to the workspace root.
        file: String,
        /// 1-based line.
        line: usize,
    },
    /// A public library function or type returns `Result<_, String>`:
    /// callers cannot act on an error they can only print.
    StringError {
        /// The file, relative to the workspace root.
        file: String,
        /// 1-based line where the item starts.
        line: usize,
    },
    /// A Markdown file names a repository path that does not exist.
    MissingPath {
        /// The Markdown file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The path as written.
        path: String,
    },
    /// A Markdown file links a test that its file does not define.
    MissingTest {
        /// The Markdown file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The test's file.
        path: String,
        /// The test's name.
        test: String,
    },
    /// A job kind the worker serves is not in its README.
    UndocumentedJobKind {
        /// The kind.
        kind: String,
    },
    /// An architecture section lacks its `Owner:` line or its
    /// `**Architecture invariant:**` sentence.
    IncompleteSection {
        /// The section's directory, e.g. `apps/ingest`.
        section: String,
        /// What it lacks.
        missing: &'static str,
    },
    /// A migration removes or renames something without saying, in a
    /// `-- contract:` line, why no running release still uses it.
    DestructiveMigration {
        /// The migration, relative to the workspace root.
        path: String,
        /// The statement, as written.
        statement: String,
    },
    /// A member outside `apps/` and `libs/` that is not a composer.
    UnknownRole {
        /// The crate.
        crate_name: String,
        /// Its directory, relative to the workspace root.
        dir: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AppDependsOnApp { from, to, kind } => write!(
                f,
                "app `{from}` has a {kind} on app `{to}`: apps meet only through proto/ (call it over gRPC)"
            ),
            Self::LibDependsOnApp { from, to, kind } => {
                write!(
                    f,
                    "lib `{from}` has a {kind} on app `{to}`: libs never depend on apps"
                )
            }
            Self::DependsOnComposer { from, to, kind } => write!(
                f,
                "`{from}` has a {kind} on `{to}`, which composes apps: nothing may depend on a composer"
            ),
            Self::LintsNotInherited { crate_name, dir } => {
                write!(
                    f,
                    "`{crate_name}` ({dir}/Cargo.toml) lacks `[lints] workspace = true`"
                )
            }
            Self::NoOwner { crate_name, dir } => {
                write!(
                    f,
                    "`{crate_name}` has no owner: add a line for /{dir}/ to CODEOWNERS"
                )
            }
            Self::NoArchitectureSection { crate_name, dir } => write!(
                f,
                "`{crate_name}` has no section in docs/architecture.md: add a heading naming `{dir}`"
            ),
            Self::NoCrateDoc { crate_name, file } => {
                write!(
                    f,
                    "`{crate_name}`: {file} must start with a `//!` doc saying what the crate is for"
                )
            }
            Self::HandWrittenJobKind { file, line, kind } => write!(
                f,
                "{file}:{line} writes the job kind \"{kind}\" by hand: take it from the contracts \
                 (`<ArgsMessage as contracts::JobArgs>::KIND`, proto/platform/jobs/v1/job_kinds.proto), \
                 so a rename cannot strand queued jobs"
            ),
            Self::StatusOutsideErrorModule { file, line } => write!(
                f,
                "{file}:{line} builds a `tonic::Status`: an app maps errors to statuses only in its `src/error.rs` (add a variant there)"
            ),
            Self::StringError { file, line } => write!(
                f,
                "{file}:{line} is public library API returning `Result<_, String>`: return a `thiserror` enum with variants a caller can act on"
            ),
            Self::MissingPath { file, line, path } => write!(
                f,
                "{file}:{line} names `{path}`, which does not exist: fix the path or the text"
            ),
            Self::MissingTest {
                file,
                line,
                path,
                test,
            } => write!(
                f,
                "{file}:{line} links test `{test}` in {path}, which defines no `fn {test}`: fix the link or restore the test"
            ),
            Self::UndocumentedJobKind { kind } => write!(
                f,
                "the worker serves job kind `{kind}`, which apps/worker/README.md does not list: add a row to its job table"
            ),
            Self::IncompleteSection { section, missing } => write!(
                f,
                "docs/architecture.md section `{section}` lacks {missing}"
            ),
            Self::DestructiveMigration { path, statement } => write!(
                f,
                "`{path}` removes or renames (`{statement}`) with no `-- contract:` line: migrations expand in one release and contract in a later one, once no release still running reads what goes (the previous release runs on the new schema during a rollout); add the line naming that release"
            ),
            Self::UnknownRole { crate_name, dir } => write!(
                f,
                "`{crate_name}` ({dir}) is neither under apps/ or libs/ nor declared a composer"
            ),
        }
    }
}

/// Every rule the workspace breaks; empty when it keeps them all.
pub fn check(workspace: &Workspace) -> Vec<Violation> {
    let mut violations = Vec::new();
    let role_of = |name: &str| {
        workspace
            .members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.role)
    };
    for member in &workspace.members {
        for (dep, kind) in &member.internal_deps {
            let (from, to, kind) = (member.name.clone(), dep.clone(), *kind);
            match (member.role, role_of(dep)) {
                (Role::App, Some(Role::App)) => {
                    violations.push(Violation::AppDependsOnApp { from, to, kind })
                }
                (Role::Lib, Some(Role::App)) => {
                    violations.push(Violation::LibDependsOnApp { from, to, kind })
                }
                (_, Some(Role::Composer)) => {
                    violations.push(Violation::DependsOnComposer { from, to, kind })
                }
                _ => {}
            }
        }
        let (crate_name, dir) = (member.name.clone(), member.dir.clone());
        if !member.inherits_lints {
            violations.push(Violation::LintsNotInherited {
                crate_name: crate_name.clone(),
                dir: dir.clone(),
            });
        }
        if !has_owner(&workspace.codeowners, &dir) {
            violations.push(Violation::NoOwner {
                crate_name: crate_name.clone(),
                dir: dir.clone(),
            });
        }
        if !has_section(&workspace.architecture, &dir) {
            violations.push(Violation::NoArchitectureSection {
                crate_name: crate_name.clone(),
                dir: dir.clone(),
            });
        }
        for file in &member.undocumented_roots {
            violations.push(Violation::NoCrateDoc {
                crate_name: crate_name.clone(),
                file: file.clone(),
            });
        }
    }
    violations.extend(hand_written_job_kinds(workspace));
    violations.extend(string_errors(workspace));
    violations.extend(statuses_outside_error_modules(workspace));
    violations.extend(missing_paths(workspace));
    violations.extend(missing_tests(workspace));
    violations.extend(undocumented_job_kinds(workspace));
    violations.extend(destructive_migrations(workspace));
    for dir in std::iter::once("proto").chain(workspace.members.iter().map(|m| m.dir.as_str())) {
        let Some(section) = section(&workspace.architecture, dir) else {
            continue; // NoArchitectureSection already says so.
        };
        for (needle, missing) in [
            ("Owner:", "an `Owner:` line"),
            (
                "**Architecture invariant:**",
                "an `**Architecture invariant:**` sentence saying what it deliberately does not know",
            ),
        ] {
            if !section.contains(needle) {
                violations.push(Violation::IncompleteSection {
                    section: dir.to_owned(),
                    missing,
                });
            }
        }
    }
    violations
}

/// The text of the `### \`dir\`` section, up to the next heading.
fn section(architecture: &str, dir: &str) -> Option<String> {
    let heading = format!("### `{dir}`");
    let mut lines = architecture.lines().skip_while(|l| l.trim() != heading);
    lines.next()?;
    Some(
        lines
            .take_while(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// `Status::` (tonic's, not `ServingStatus::` and the like) in an app's
/// sources other than its `src/error.rs`; comments are not code.
fn statuses_outside_error_modules(workspace: &Workspace) -> Vec<Violation> {
    let mut found = Vec::new();
    for file in workspace
        .sources
        .iter()
        .filter(|f| f.path.starts_with("apps/") && !f.path.ends_with("/src/error.rs"))
    {
        for (number, line) in file.text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let built = code.match_indices("Status::").any(|(at, _)| {
                !code[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if built {
                found.push(Violation::StatusOutsideErrorModule {
                    file: file.path.clone(),
                    line: number + 1,
                });
            }
        }
    }
    found
}

/// Public items of libraries (`pub fn`, `pub async fn`, `pub type`, from
/// the keyword to the body or `;`) whose signature holds `Result<..., String>`.
fn string_errors(workspace: &Workspace) -> Vec<Violation> {
    let mut found = Vec::new();
    for file in workspace
        .sources
        .iter()
        .filter(|f| f.path.starts_with("libs/"))
    {
        let lines: Vec<&str> = file.text.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let item = line.trim_start();
            if !["pub fn ", "pub async fn ", "pub type "]
                .iter()
                .any(|p| item.starts_with(p))
            {
                continue;
            }
            let mut signature = String::new();
            for next in &lines[start..] {
                let end = next.find(['{', ';']);
                signature.push_str(end.map_or(next, |end| &next[..end]));
                if end.is_some() {
                    break;
                }
            }
            let compact: String = signature.split_whitespace().collect();
            if compact.contains("Result<") && compact.contains(",String>") {
                found.push(Violation::StringError {
                    file: file.path.clone(),
                    line: start + 1,
                });
            }
        }
    }
    found
}

/// Top-level folders whose paths a document may name from the root.
const ROOT_FOLDERS: [&str; 7] = [
    "apps/", "libs/", "proto/", "deploy/", "docs/", "tests/", ".ci/",
];
/// Folders an app's or lib's README may name relative to itself.
const CRATE_FOLDERS: [&str; 6] = [
    "src/",
    "tests/",
    "migrations/",
    "model/",
    "bench/",
    "benches/",
];

/// Backticked repository paths in Markdown that do not exist. A path is a
/// backticked token starting with a top-level folder (or, in a crate's
/// README, with one of the crate's folders); patterns (`*`, `<x>`, `{a,b}`)
/// and `:line` suffixes are not checked.
fn missing_paths(workspace: &Workspace) -> Vec<Violation> {
    let mut found = Vec::new();
    for file in &workspace.markdown {
        let folder = file.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        let in_crate = folder.starts_with("apps/") || folder.starts_with("libs/");
        for (number, line) in file.text.lines().enumerate() {
            for token in line.split('`').skip(1).step_by(2) {
                if token.contains(char::is_whitespace)
                    || token.contains(['*', '<', '>', '{', '}', '$', '|'])
                {
                    continue;
                }
                let path = token
                    .split(':')
                    .next()
                    .unwrap_or(token)
                    .trim_end_matches('/');
                let full = if ROOT_FOLDERS.iter().any(|f| token.starts_with(f)) {
                    path.to_owned()
                } else if in_crate && CRATE_FOLDERS.iter().any(|f| token.starts_with(f)) {
                    format!("{folder}/{path}")
                } else {
                    continue;
                };
                if !workspace.paths.contains(&full) {
                    found.push(Violation::MissingPath {
                        file: file.path.clone(),
                        line: number + 1,
                        path: token.to_owned(),
                    });
                }
            }
        }
    }
    found
}

/// `` `path.rs::test_name` `` tokens of every Markdown file: (file, line,
/// path, test).
fn test_links(markdown: &[SourceFile]) -> Vec<(String, usize, String, String)> {
    let mut links = Vec::new();
    for file in markdown {
        for (number, line) in file.text.lines().enumerate() {
            for token in line.split('`').skip(1).step_by(2) {
                if let Some((path, test)) = token.split_once(".rs::")
                    && !token.contains(char::is_whitespace)
                {
                    links.push((
                        file.path.clone(),
                        number + 1,
                        format!("{path}.rs"),
                        test.to_owned(),
                    ));
                }
            }
        }
    }
    links
}

/// Linked tests (see [`test_links`]) their file does not define; a missing
/// file is already a `MissingPath`.
fn missing_tests(workspace: &Workspace) -> Vec<Violation> {
    test_links(&workspace.markdown)
        .into_iter()
        .filter(|(_, _, path, test)| {
            workspace
                .linked_sources
                .get(path)
                .is_some_and(|text| !text.contains(&format!("fn {test}(")))
        })
        .map(|(file, line, path, test)| Violation::MissingTest {
            file,
            line,
            path,
            test,
        })
        .collect()
}

/// Kinds the worker serves (`const KIND` in `apps/worker/src/kinds/`,
/// either a string or a contract's `Args::KIND`) missing from its README.
fn undocumented_job_kinds(workspace: &Workspace) -> Vec<Violation> {
    let readme = workspace
        .markdown
        .iter()
        .find(|f| f.path == "apps/worker/README.md")
        .map_or("", |f| f.text.as_str());
    let mut kinds = Vec::new();
    for file in workspace
        .sources
        .iter()
        .filter(|f| f.path.starts_with("apps/worker/src/kinds/"))
    {
        for line in file.text.lines() {
            let Some((_, value)) = line.split_once("KIND: &") else {
                continue;
            };
            let Some((_, value)) = value.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_end_matches(';');
            if let Some(literal) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                kinds.push(literal.to_owned());
            } else if let Some(message) = value.strip_suffix("::KIND") {
                let message = message.rsplit("::").next().unwrap_or(message);
                kinds.extend(
                    workspace
                        .job_kinds
                        .iter()
                        .filter(|k| k.message.rsplit('.').next() == Some(message))
                        .map(|k| k.kind.clone()),
                );
            }
        }
    }
    kinds.sort();
    kinds.dedup();
    kinds
        .into_iter()
        .filter(|kind| !readme.contains(&format!("`{kind}`")))
        .map(|kind| Violation::UndocumentedJobKind { kind })
        .collect()
}

/// Every string literal that is a contract's job kind, outside the
/// contracts themselves (apps and libs read kinds from `JobArgs::KIND`).
fn hand_written_job_kinds(workspace: &Workspace) -> Vec<Violation> {
    let mut found = Vec::new();
    for file in &workspace.sources {
        if file.path.starts_with("libs/contracts/") {
            continue;
        }
        for (number, line) in file.text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for kind in &workspace.job_kinds {
                if line.contains(&format!("\"{}\"", kind.kind)) {
                    found.push(Violation::HandWrittenJobKind {
                        file: file.path.clone(),
                        line: number + 1,
                        kind: kind.kind.clone(),
                    });
                }
            }
        }
    }
    found
}

/// The `.rs` files below `dir`, in a stable order.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::path);
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// A CODEOWNERS line whose pattern is exactly the crate's directory.
fn has_owner(codeowners: &str, dir: &str) -> bool {
    codeowners
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .any(|line| {
            let mut words = line.split_whitespace();
            let pattern = words.next().unwrap_or_default();
            let owned = words.next().is_some();
            owned && pattern.trim_matches('/') == dir
        })
}

/// A markdown heading that names the crate's directory in backticks.
fn has_section(architecture: &str, dir: &str) -> bool {
    let needle = format!("`{dir}`");
    architecture
        .lines()
        .any(|l| l.trim_start().starts_with('#') && l.contains(&needle))
}

/// Why the real workspace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `cargo metadata` failed to run or exited non-zero.
    #[error("cargo metadata: {0}")]
    Metadata(String),
    /// A file the rules read is missing or unreadable.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A manifest or the metadata did not parse.
    #[error("{what}: {message}")]
    Parse {
        /// What was being parsed.
        what: String,
        /// The parser's message.
        message: String,
    },
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    workspace_members: Vec<String>,
    workspace_root: PathBuf,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    manifest_path: PathBuf,
    dependencies: Vec<Dependency>,
    targets: Vec<Target>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Dependency {
    kind: Option<String>,
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Target {
    kind: Vec<String>,
    src_path: PathBuf,
}

/// Every file and folder below `dir`, relative to `root`, skipping build
/// output, git's folder and the quick start's data.
fn repository_paths(
    root: &Path,
    dir: &Path,
    out: &mut std::collections::BTreeSet<String>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        // Build output anywhere (`fuzz/target` too), git, the quick start's
        // data, fuzz corpora.
        if [
            "target",
            ".git",
            "data",
            "node_modules",
            "fuzz/corpus",
            "fuzz/artifacts",
        ]
        .contains(&relative.as_str())
            || entry.file_name() == "target"
        {
            continue;
        }
        let is_dir = entry.file_type()?.is_dir();
        out.insert(relative);
        if is_dir {
            repository_paths(root, &path, out)?;
        }
    }
    Ok(())
}

/// Migrations written before releases were rolling upgrades, kept as they
/// were applied (sqlx checks each one's checksum, so they cannot gain the
/// `-- contract:` line now).
const MIGRATIONS_BEFORE_EXPAND_CONTRACT: [&str; 2] = [
    "apps/ingest/migrations/postgres/200002_tenant_keys.sql",
    "apps/ingest/migrations/sqlite/200002_tenant_keys.sql",
];

/// Statements that remove or rename what a running release may read:
/// each needs a `-- contract:` line in its migration.
fn destructive_migrations(workspace: &Workspace) -> Vec<Violation> {
    const DESTRUCTIVE: [&str; 5] = [
        "DROP ",
        "RENAME ",
        "SET NOT NULL",
        "TRUNCATE ",
        "ALTER COLUMN",
    ];
    let mut violations = Vec::new();
    for migration in &workspace.migrations {
        if MIGRATIONS_BEFORE_EXPAND_CONTRACT.contains(&migration.path.as_str())
            || migration
                .text
                .lines()
                .any(|l| l.trim_start().starts_with("-- contract:"))
        {
            continue;
        }
        for line in migration.text.lines() {
            let code = line.split("--").next().unwrap_or_default();
            let upper = code.to_ascii_uppercase();
            if DESTRUCTIVE.iter().any(|word| upper.contains(word)) {
                violations.push(Violation::DestructiveMigration {
                    path: migration.path.clone(),
                    statement: code.trim().to_owned(),
                });
            }
        }
    }
    violations
}

/// Every path of the repository, its Markdown files, the text of the
/// Rust files those link tests in, and its SQL migrations.
type RepositoryFiles = (
    std::collections::BTreeSet<String>,
    Vec<SourceFile>,
    std::collections::BTreeMap<String, String>,
    Vec<SourceFile>,
);

fn repository_files(root: &Path) -> Result<RepositoryFiles, LoadError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|source| LoadError::Read { path, source })
    };
    let mut paths = std::collections::BTreeSet::new();
    repository_paths(root, root, &mut paths).map_err(|source| LoadError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    let markdown: Vec<SourceFile> = paths
        .iter()
        .filter(|p| p.ends_with(".md"))
        .map(|p| {
            Ok(SourceFile {
                path: p.clone(),
                text: read(root.join(p))?,
            })
        })
        .collect::<Result<_, LoadError>>()?;
    let mut linked_sources = std::collections::BTreeMap::new();
    for (_, _, path, _) in test_links(&markdown) {
        if paths.contains(&path) && !linked_sources.contains_key(&path) {
            let text = read(root.join(&path))?;
            linked_sources.insert(path, text);
        }
    }
    let migrations: Vec<SourceFile> = paths
        .iter()
        .filter(|p| p.ends_with(".sql") && p.contains("/migrations/"))
        .map(|p| {
            Ok(SourceFile {
                path: p.clone(),
                text: read(root.join(p))?,
            })
        })
        .collect::<Result<_, LoadError>>()?;
    Ok((paths, markdown, linked_sources, migrations))
}

/// One workspace member as the rules see it, from its metadata and files.
fn member_of(
    package: &Package,
    root: &Path,
    member_dirs: &[(String, PathBuf)],
) -> Result<Member, LoadError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|source| LoadError::Read { path, source })
    };
    let dir_abs = package
        .manifest_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dir = dir_abs
        .strip_prefix(root)
        .unwrap_or(&dir_abs)
        .to_string_lossy()
        .replace('\\', "/");
    let manifest: toml::Table =
        read(package.manifest_path.clone())?
            .parse()
            .map_err(|e: toml::de::Error| LoadError::Parse {
                what: dir.clone(),
                message: e.to_string(),
            })?;
    let inherits_lints = manifest
        .get("lints")
        .and_then(|l| l.get("workspace"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    let declared_composer = package
        .metadata
        .as_ref()
        .and_then(|m| m.pointer("/platform/role"))
        .and_then(serde_json::Value::as_str)
        == Some("composer");
    let role = if declared_composer {
        Role::Composer
    } else if dir.starts_with("apps/") {
        Role::App
    } else if dir.starts_with("libs/") {
        Role::Lib
    } else {
        return Err(LoadError::Parse {
            what: dir.clone(),
            message: Violation::UnknownRole {
                crate_name: package.name.clone(),
                dir: dir.clone(),
            }
            .to_string(),
        });
    };
    let internal_deps = package
        .dependencies
        .iter()
        .filter_map(|d| {
            let path = d.path.as_ref()?;
            let (name, _) = member_dirs.iter().find(|(_, dir)| dir == path)?;
            let kind = match d.kind.as_deref() {
                Some("dev") => DepKind::Dev,
                Some("build") => DepKind::Build,
                _ => DepKind::Normal,
            };
            Some((name.clone(), kind))
        })
        .collect();
    let mut undocumented_roots = Vec::new();
    for target in &package.targets {
        if !target
            .kind
            .iter()
            .any(|k| k == "lib" || k == "bin" || k == "proc-macro")
        {
            continue;
        }
        let text = read(target.src_path.clone())?;
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        if !first.starts_with("//!") {
            let file = target
                .src_path
                .strip_prefix(root)
                .unwrap_or(&target.src_path);
            undocumented_roots.push(file.to_string_lossy().into_owned());
        }
    }
    Ok(Member {
        name: package.name.clone(),
        dir,
        role,
        internal_deps,
        inherits_lints,
        undocumented_roots,
    })
}

/// Reads the workspace that contains `manifest_dir` (any member's
/// directory); `job_kinds` are the contracts' (`contracts::JOB_KINDS`:
/// kind and arguments message).
pub fn load(manifest_dir: &Path, job_kinds: &[(&str, &str)]) -> Result<Workspace, LoadError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(manifest_dir)
        .output()
        .map_err(|e| LoadError::Metadata(e.to_string()))?;
    if !output.status.success() {
        return Err(LoadError::Metadata(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    let metadata: Metadata =
        serde_json::from_slice(&output.stdout).map_err(|e| LoadError::Parse {
            what: "cargo metadata".into(),
            message: e.to_string(),
        })?;
    let root = metadata.workspace_root.clone();
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|source| LoadError::Read { path, source })
    };
    let members: Vec<&Package> = metadata
        .packages
        .iter()
        .filter(|p| metadata.workspace_members.contains(&p.id))
        .collect();
    let member_dirs: Vec<(String, PathBuf)> = members
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.manifest_path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            )
        })
        .collect();

    let result = members
        .iter()
        .map(|package| member_of(package, &root, &member_dirs))
        .collect::<Result<Vec<_>, _>>()?;
    let mut paths = Vec::new();
    for member in &result {
        let src = root.join(&member.dir).join("src");
        if member.role != Role::Composer && src.is_dir() {
            rust_files(&src, &mut paths).map_err(|source| LoadError::Read {
                path: src.clone(),
                source,
            })?;
        }
    }
    let sources = paths
        .into_iter()
        .map(|path| {
            Ok(SourceFile {
                path: path
                    .strip_prefix(&root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/"),
                text: read(path)?,
            })
        })
        .collect::<Result<_, LoadError>>()?;
    let (paths, markdown, linked_sources, migrations) = repository_files(&root)?;
    Ok(Workspace {
        members: result,
        codeowners: read(root.join("CODEOWNERS"))?,
        architecture: read(root.join("docs/architecture.md"))?,
        sources,
        job_kinds: job_kinds
            .iter()
            .map(|(kind, message)| ContractKind {
                kind: (*kind).to_owned(),
                message: (*message).to_owned(),
            })
            .collect(),
        markdown,
        paths,
        linked_sources,
        migrations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, dir: &str, role: Role, deps: &[(&str, DepKind)]) -> Member {
        Member {
            name: name.into(),
            dir: dir.into(),
            role,
            internal_deps: deps.iter().map(|(n, k)| ((*n).into(), *k)).collect(),
            inherits_lints: true,
            undocumented_roots: Vec::new(),
        }
    }

    fn workspace(members: Vec<Member>) -> Workspace {
        let codeowners = members
            .iter()
            .map(|m| format!("/{}/ @team\n", m.dir))
            .collect();
        let architecture = members
            .iter()
            .map(|m| {
                format!(
                    "### `{}`\n\nOwner: @team. Text.\n\n**Architecture invariant:** it knows nothing else.\n",
                    m.dir
                )
            })
            .collect();
        Workspace {
            members,
            codeowners,
            architecture,
            sources: Vec::new(),
            job_kinds: vec![ContractKind {
                kind: "readings.aggregate_window".into(),
                message: "platform.jobs.v1.AggregateWindowArgs".into(),
            }],
            markdown: Vec::new(),
            linked_sources: std::collections::BTreeMap::new(),
            paths: Default::default(),
            migrations: Vec::new(),
        }
    }

    fn platform(worker_deps: &[(&str, DepKind)]) -> Workspace {
        workspace(vec![
            member(
                "ingest",
                "apps/ingest",
                Role::App,
                &[("contracts", DepKind::Normal)],
            ),
            member("worker", "apps/worker", Role::App, worker_deps),
            member("contracts", "libs/contracts", Role::Lib, &[]),
            member(
                "launcher",
                "apps/launcher",
                Role::Composer,
                &[("ingest", DepKind::Normal)],
            ),
        ])
    }

    #[test]
    fn a_clean_workspace_passes() {
        assert_eq!(check(&platform(&[("contracts", DepKind::Normal)])), []);
    }

    #[test]
    fn an_app_depending_on_an_app_is_named_with_its_edge() {
        let violations = check(&platform(&[("ingest", DepKind::Normal)]));
        assert_eq!(
            violations,
            [Violation::AppDependsOnApp {
                from: "worker".into(),
                to: "ingest".into(),
                kind: DepKind::Normal
            }]
        );
        assert_eq!(
            violations[0].to_string(),
            "app `worker` has a dependency on app `ingest`: apps meet only through proto/ (call it over gRPC)"
        );
    }

    #[test]
    fn dev_and_build_edges_between_apps_count_too() {
        let violations = check(&platform(&[("ingest", DepKind::Dev)]));
        assert!(matches!(
            violations.as_slice(),
            [Violation::AppDependsOnApp {
                kind: DepKind::Dev,
                ..
            }]
        ));
    }

    #[test]
    fn a_lib_depending_on_an_app_is_named() {
        let mut ws = platform(&[]);
        ws.members[2]
            .internal_deps
            .push(("worker".into(), DepKind::Normal));
        let text: Vec<String> = check(&ws).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            ["lib `contracts` has a dependency on app `worker`: libs never depend on apps"]
        );
    }

    #[test]
    fn nothing_may_depend_on_a_composer() {
        let violations = check(&platform(&[("launcher", DepKind::Normal)]));
        assert!(
            matches!(violations.as_slice(), [Violation::DependsOnComposer { from, .. }] if from == "worker")
        );
    }

    #[test]
    fn missing_owner_section_lints_and_docs_are_each_reported() {
        let mut ws = platform(&[]);
        ws.codeowners = ws.codeowners.replace("/apps/worker/ @team\n", "");
        ws.architecture = ws.architecture.replace("### `apps/worker`", "### worker");
        ws.members[0].inherits_lints = false;
        ws.members[2]
            .undocumented_roots
            .push("libs/contracts/src/lib.rs".into());
        let violations = check(&ws);
        assert_eq!(
            violations,
            [
                Violation::LintsNotInherited {
                    crate_name: "ingest".into(),
                    dir: "apps/ingest".into()
                },
                Violation::NoOwner {
                    crate_name: "worker".into(),
                    dir: "apps/worker".into()
                },
                Violation::NoArchitectureSection {
                    crate_name: "worker".into(),
                    dir: "apps/worker".into()
                },
                Violation::NoCrateDoc {
                    crate_name: "contracts".into(),
                    file: "libs/contracts/src/lib.rs".into()
                },
            ]
        );
    }

    #[test]
    fn a_job_kind_written_by_hand_is_named_with_its_place() {
        let mut ws = platform(&[]);
        ws.sources = vec![
            SourceFile {
                path: "apps/ingest/src/sink.rs".into(),
                text: "// enqueues \"readings.aggregate_window\" jobs\nlet job = NewJob::new(\"readings.aggregate_window\", args);\n".into(),
            },
            SourceFile {
                path: "libs/contracts/src/lib.rs".into(),
                text: "const KIND: &str = \"readings.aggregate_window\";\n".into(),
            },
            SourceFile {
                path: "apps/worker/src/kinds/aggregate.rs".into(),
                text: "const KIND: &str = AggregateWindowArgs::KIND; // not \"readings.aggregate_windows\"\n".into(),
            },
        ];
        let violations = check(&ws);
        assert_eq!(
            violations,
            [Violation::HandWrittenJobKind {
                file: "apps/ingest/src/sink.rs".into(),
                line: 2,
                kind: "readings.aggregate_window".into()
            }]
        );
        assert!(
            violations[0]
                .to_string()
                .starts_with("apps/ingest/src/sink.rs:2 writes the job kind \"readings.aggregate_window\" by hand"),
            "{}",
            violations[0]
        );
    }

    #[test]
    fn a_markdown_path_that_does_not_exist_is_named() {
        let mut ws = platform(&[]);
        ws.paths = [
            "apps",
            "apps/ingest",
            "apps/ingest/src",
            "apps/ingest/src/sink.rs",
            "docs",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        ws.markdown = vec![
            SourceFile {
                path: "README.md".into(),
                text: "See `apps/ingest/src/sink.rs:40`, `apps/ingest/`, `apps/*/src` and `cargo test -p x`.\nGone: `apps/worker/src/window_stats.rs`.\n".into(),
            },
            SourceFile {
                path: "apps/ingest/README.md".into(),
                text: "Code in `src/sink.rs` and `src/missing.rs`.\n".into(),
            },
        ];
        let text: Vec<String> = check(&ws).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "README.md:2 names `apps/worker/src/window_stats.rs`, which does not exist: fix the path or the text",
                "apps/ingest/README.md:1 names `src/missing.rs`, which does not exist: fix the path or the text",
            ]
        );
    }

    #[test]
    fn a_linked_test_that_its_file_does_not_define_is_named() {
        let mut ws = platform(&[]);
        ws.markdown = vec![SourceFile {
            path: "docs/security.md".into(),
            text: "| SSRF | `libs/security/tests/outbound.rs::refused` |\n| gone | `libs/security/tests/outbound.rs::renamed_away` |\n".into(),
        }];
        ws.linked_sources = [(
            "libs/security/tests/outbound.rs".to_owned(),
            "#[test]\nfn refused() {}\n".to_owned(),
        )]
        .into_iter()
        .collect();
        let text: Vec<String> = missing_tests(&ws).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "docs/security.md:2 links test `renamed_away` in libs/security/tests/outbound.rs, which defines no `fn renamed_away`: fix the link or restore the test"
            ]
        );
    }

    #[test]
    fn a_registered_job_kind_missing_from_the_worker_readme_is_named() {
        let mut ws = platform(&[]);
        ws.sources = vec![SourceFile {
            path: "apps/worker/src/kinds/aggregate.rs".into(),
            text: "    const KIND: &'static str = AggregateWindowArgs::KIND;\n    const KIND: &'static str = \"noop\";\npub const KIND: &str = \"readings.prune\";\n".into(),
        }];
        ws.markdown = vec![SourceFile {
            path: "apps/worker/README.md".into(),
            text: "| `noop` | {} | nothing |\n".into(),
        }];
        assert_eq!(
            check(&ws),
            [
                Violation::UndocumentedJobKind {
                    kind: "readings.aggregate_window".into()
                },
                Violation::UndocumentedJobKind {
                    kind: "readings.prune".into()
                },
            ]
        );
    }

    #[test]
    fn an_architecture_section_without_owner_or_invariant_is_named() {
        let mut ws = platform(&[]);
        ws.architecture = ws
            .architecture
            .replacen("Owner: @team. Text.", "Text.", 1)
            .replace(
                "### `apps/worker`\n\nOwner: @team. Text.\n\n**Architecture invariant:** it knows nothing else.",
                "### `apps/worker`\n\nOwner: @team. Text.",
            );
        let text: Vec<String> = check(&ws).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "docs/architecture.md section `apps/ingest` lacks an `Owner:` line",
                "docs/architecture.md section `apps/worker` lacks an `**Architecture invariant:**` sentence saying what it deliberately does not know",
            ]
        );
    }

    #[test]
    fn a_public_library_function_returning_a_string_error_is_named() {
        let mut ws = platform(&[]);
        ws.sources = vec![
            SourceFile {
                path: "libs/jobs/src/worker.rs".into(),
                text: "pub fn validate(\n    args: &Value,\n) -> Result<(), String> {\n    todo!()\n}\nfn private() -> Result<(), String> {}\npub(crate) fn inner() -> Result<(), String> {}\npub fn fine() -> Result<(), ArgsError> {}\n".into(),
            },
            SourceFile {
                path: "apps/worker/src/cli.rs".into(),
                text: "pub fn run() -> Result<(), String> {}\n".into(),
            },
        ];
        assert_eq!(
            check(&ws),
            [Violation::StringError {
                file: "libs/jobs/src/worker.rs".into(),
                line: 1
            }]
        );
    }

    #[test]
    fn a_status_built_outside_an_apps_error_module_is_named() {
        let mut ws = platform(&[]);
        ws.sources = vec![
            SourceFile {
                path: "apps/ingest/src/api.rs".into(),
                text: "// Status::internal in a comment\nlet s = ServingStatus::Serving;\nreturn Err(tonic::Status::internal(\"x\"));\n".into(),
            },
            SourceFile {
                path: "apps/ingest/src/error.rs".into(),
                text: "Status::internal(\"x\")\n".into(),
            },
        ];
        assert_eq!(
            check(&ws),
            [Violation::StatusOutsideErrorModule {
                file: "apps/ingest/src/api.rs".into(),
                line: 3
            }]
        );
    }

    #[test]
    fn an_owner_line_must_name_an_owner() {
        assert!(has_owner("/apps/worker/ @jobs-team", "apps/worker"));
        assert!(has_owner("apps/worker @jobs-team", "apps/worker"));
        assert!(!has_owner("/apps/worker/", "apps/worker"));
        assert!(!has_owner("# /apps/worker/ @x", "apps/worker"));
        assert!(!has_owner("/apps/worker-extra/ @x", "apps/worker"));
    }

    #[test]
    fn a_migration_that_removes_must_say_why_no_release_reads_it() {
        let mut ws = platform(&[]);
        ws.migrations = vec![
            SourceFile {
                path: "apps/ingest/migrations/postgres/200009_slim.sql".into(),
                text: "ALTER TABLE ingest.reading ADD COLUMN unit text;\nALTER TABLE ingest.reading DROP COLUMN attributes;\n".into(),
            },
            SourceFile {
                path: "apps/ingest/migrations/postgres/200010_contract.sql".into(),
                text: "-- contract: 0.3.0 stopped reading `legacy`; 0.4.0 removes it.\nDROP TABLE ingest.legacy;\n".into(),
            },
        ];
        let messages: Vec<String> = check(&ws)
            .iter()
            .map(ToString::to_string)
            .filter(|m| m.contains("migrations"))
            .collect();
        assert_eq!(
            messages,
            [
                "`apps/ingest/migrations/postgres/200009_slim.sql` removes or renames (`ALTER TABLE ingest.reading DROP COLUMN attributes;`) with no `-- contract:` line: migrations expand in one release and contract in a later one, once no release still running reads what goes (the previous release runs on the new schema during a rollout); add the line naming that release"
            ]
        );
    }
}
