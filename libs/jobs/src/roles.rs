//! Least privilege on PostgreSQL: each app runs as a role of its own that
//! holds only what its contract needs, created and granted by a separate
//! migrator credential (the one that runs migrations and owns the tables).
//! A role's name starts with its database's name (`<database>_ingest`), so
//! databases sharing a server, and parallel tests, never share a role.
//!
//! In the jobs schema a role either enqueues (EXECUTE on `jobs.enqueue`
//! and `jobs.unique_holders`, the SECURITY DEFINER functions of migration
//! 100002, and nothing else) or runs jobs (every table). SQLite, the
//! single-user quick start, has no roles.

use sqlx::{Executor as _, PgPool};

use crate::JobsError;

/// What an app's role may do in the jobs schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobsAccess {
    /// Nothing.
    None,
    /// Enqueue through `jobs.enqueue` only: no table, no other job's data.
    Enqueue,
    /// Claim, complete and manage jobs: every table of the schema.
    Run,
}

/// The role of `app` in `database`: `<database>_<app>`, or, when that
/// would pass PostgreSQL's 63-byte limit (and be cut short into a clash),
/// a shortened database name with a hash of the full one.
pub fn app_role(database: &str, app: &str) -> String {
    let name = format!("{database}_{app}");
    if name.len() <= 63 {
        return name;
    }
    let digest: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(database.as_bytes())[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let keep = 63 - app.len() - digest.len() - 2;
    let cut = (0..=keep.min(database.len()))
        .rev()
        .find(|&i| database.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}_{digest}_{app}", &database[..cut])
}

/// Creates (if missing) the role of `app` in the database `migrator` is
/// connected to, grants it use of its own `schema` (rows of every table,
/// sequences, functions) and `jobs` access, and makes `login` (the user
/// the app connects as) a member. Idempotent: run after every migration,
/// so tables added later are granted too. Returns the role's name.
pub async fn provision_app_role(
    migrator: &PgPool,
    app: &str,
    schema: Option<&str>,
    jobs: JobsAccess,
    login: &str,
) -> Result<String, JobsError> {
    let mut tx = migrator.begin().await?;
    // Two instances starting at once must not both create the role.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('platform.roles', 0))")
        .execute(&mut *tx)
        .await?;
    let (database, me): (String, String) =
        sqlx::query_as("SELECT current_database()::text, current_user::text")
            .fetch_one(&mut *tx)
            .await?;
    let role = app_role(&database, app);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&role)
            .fetch_one(&mut *tx)
            .await?;
    let quoted = quote(&role);
    let mut statements = Vec::new();
    if !exists {
        statements.push(format!("CREATE ROLE {quoted} NOLOGIN"));
    }
    statements.push(format!(
        "GRANT CONNECT ON DATABASE {} TO {quoted}",
        quote(&database)
    ));
    // The app reads which migrations ran, to wait for its schema when a
    // migrations Job applies it (`postgres::wait_for_migrations`).
    statements.push(format!(
        "GRANT SELECT ON public._sqlx_migrations TO {quoted}"
    ));
    if let Some(schema) = schema {
        let schema = quote(schema);
        statements.extend([
            format!("GRANT USAGE ON SCHEMA {schema} TO {quoted}"),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {quoted}"
            ),
            format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {quoted}"),
            format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {quoted}"),
        ]);
    }
    match jobs {
        JobsAccess::None => {}
        JobsAccess::Enqueue => statements.extend([
            format!("GRANT USAGE ON SCHEMA jobs TO {quoted}"),
            format!(
                "GRANT EXECUTE ON FUNCTION jobs.enqueue(text[], text[], text[], text[], text[], smallint[], \
                 integer[], timestamptz[], bytea[], integer[]), jobs.unique_holders(bytea[]) TO {quoted}"
            ),
        ]),
        JobsAccess::Run => statements.extend([
            format!("GRANT USAGE ON SCHEMA jobs TO {quoted}"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA jobs TO {quoted}"),
            format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA jobs TO {quoted}"),
            format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobs TO {quoted}"),
        ]),
    }
    if login != role && login != me {
        statements.push(format!("GRANT {quoted} TO {}", quote(login)));
    }
    for statement in statements {
        tx.execute(statement.as_str()).await?;
    }
    tx.commit().await?;
    Ok(role)
}

/// The user a PostgreSQL URL logs in as.
pub fn login_of(url: &str) -> Result<String, JobsError> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    Ok(options.get_username().to_owned())
}

/// A double-quoted SQL identifier.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_carry_the_database_and_stay_within_the_limit() {
        assert_eq!(app_role("platform", "ingest"), "platform_ingest");
        let long = "d".repeat(80);
        let (a, b) = (app_role(&long, "ingest"), app_role(&long, "worker"));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert_ne!(app_role(&format!("{long}x"), "ingest"), a);
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
    }
}
