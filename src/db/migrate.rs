//! Schema migrations: the `sql/NNNN_description.sql` files embedded at build time.
//!
//! [`apply`] holds a PostgreSQL advisory lock for the whole run, so any number of ctrip
//! processes starting together apply each file exactly once. Each file runs in one transaction
//! together with its row in `ctrip.schema_migrations` (version, name, SHA-256 checksum,
//! applied_at, execution time, applied_by). Before applying anything, the history is checked:
//! an applied file whose checksum changed, an applied version without a file, or a database
//! newer than this binary stops the run with the version and what to do.

use std::borrow::Cow;
use std::time::Instant;

use postgres::Client;

use crate::audit::{self, ActorType, Event, Outcome};
use sha2::{Digest, Sha256};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// Arbitrary but fixed advisory lock key, the bytes of "ctripmig".
const LOCK_KEY: i64 = 0x6374_7269_706d_6967;

const BOOTSTRAP: &str = "
    CREATE SCHEMA IF NOT EXISTS ctrip;
    CREATE TABLE IF NOT EXISTS ctrip.schema_migrations (
        version      bigint PRIMARY KEY,
        name         text NOT NULL,
        checksum     text NOT NULL,
        applied_at   timestamptz NOT NULL DEFAULT now(),
        execution_ms integer NOT NULL,
        applied_by   text NOT NULL
    );";

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: Cow<'static, str>,
    pub sql: Cow<'static, str>,
}

impl Migration {
    /// Returns the SHA-256 of the file's text as lowercase hex.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }

    /// Returns the file name the migration came from, such as `0001_payments.sql`.
    pub fn file_name(&self) -> String {
        format!("{:04}_{}.sql", self.version, self.name)
    }
}

/// Returns the migrations built into this binary, in version order.
pub fn embedded() -> Vec<Migration> {
    embedded::EMBEDDED
        .iter()
        .map(|&(version, name, sql)| Migration {
            version,
            name: Cow::Borrowed(name),
            sql: Cow::Borrowed(sql),
        })
        .collect()
}

/// A row of `ctrip.schema_migrations`.
#[derive(Debug, Clone)]
pub struct AppliedMigration {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub applied_at: chrono::DateTime<chrono::Utc>,
    pub execution_ms: i32,
    pub applied_by: String,
}

/// A failure to apply migrations, or a history that cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "migration {version:04} ({name}) was edited after it was applied: checksum in the \
         database {applied}, in this build {built}; restore the original file and put the \
         change in a new migration"
    )]
    Edited {
        version: i64,
        name: String,
        applied: String,
        built: String,
    },
    #[error(
        "migration {version:04} ({name}) is applied in the database but missing from this \
         build: restore sql/{version:04}_{name}.sql"
    )]
    Missing { version: i64, name: String },
    #[error(
        "the database schema is at version {database:04} but this ctrip only knows up to \
         {known:04}: run a ctrip release that includes migration {database:04}"
    )]
    DatabaseNewer { database: i64, known: i64 },
    #[error("migration {version:04} ({name}) failed and was rolled back: {detail}")]
    Failed {
        version: i64,
        name: String,
        detail: String,
        source: postgres::Error,
    },
    #[error(
        "another process held the migration lock for over 60 s: check for a stuck `ctrip \
         migrate` or `ctrip serve`, then retry"
    )]
    LockTimeout,
    #[error("migration bookkeeping failed: {detail}")]
    Database {
        detail: String,
        source: postgres::Error,
    },
}

impl From<postgres::Error> for MigrateError {
    fn from(source: postgres::Error) -> Self {
        let detail = super::error_chain(&source);
        MigrateError::Database { detail, source }
    }
}

/// One migration applied by this run, with its execution time.
#[derive(Debug, Clone)]
pub struct AppliedNow {
    pub version: i64,
    pub name: String,
    pub execution_ms: i32,
}

/// Applies every pending migration under the advisory lock and returns what it applied.
///
/// Fails without applying anything when the history check fails; a failing file is rolled
/// back with its history row and stops the run.
pub fn apply(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<AppliedNow>, MigrateError> {
    lock(client)?;
    let result = apply_locked(client, migrations);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]);
    let applied = result?;
    unlocked?;
    Ok(applied)
}

fn lock(client: &mut Client) -> Result<(), MigrateError> {
    // Migrations may run longer than a request may, and IF NOT EXISTS notices are noise.
    client.batch_execute(
        "SET statement_timeout = 0; SET lock_timeout = '60s'; SET client_min_messages = warning",
    )?;
    match client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]) {
        Ok(_) => Ok(()),
        Err(err) if err.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            Err(MigrateError::LockTimeout)
        }
        Err(err) => Err(err.into()),
    }
}

fn apply_locked(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<AppliedNow>, MigrateError> {
    client.batch_execute(BOOTSTRAP)?;
    let applied = read_applied(client)?;
    check_history(&applied, migrations)?;

    let applied_by = applied_by();
    let mut done = Vec::new();
    for migration in migrations {
        if applied.iter().any(|row| row.version == migration.version) {
            continue;
        }
        done.push(apply_one(client, migration, &applied_by)?);
    }
    Ok(done)
}

fn apply_one(
    client: &mut Client,
    migration: &Migration,
    applied_by: &str,
) -> Result<AppliedNow, MigrateError> {
    let started = Instant::now();
    let failed = |source: postgres::Error| MigrateError::Failed {
        version: migration.version,
        name: migration.name.to_string(),
        detail: super::error_chain(&source),
        source,
    };

    let mut transaction = client.transaction().map_err(failed)?;
    transaction.batch_execute(&migration.sql).map_err(failed)?;
    let execution_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
    transaction
        .execute(
            "INSERT INTO ctrip.schema_migrations
                 (version, name, checksum, execution_ms, applied_by)
             VALUES ($1, $2, $3, $4, session_user || ' via ' || $5)",
            &[
                &migration.version,
                &migration.name.as_ref(),
                &migration.checksum(),
                &execution_ms,
                &applied_by,
            ],
        )
        .map_err(failed)?;
    record_applied(&mut transaction, migration, execution_ms).map_err(failed)?;
    transaction.commit().map_err(failed)?;

    log::info!(
        "migration applied version={:04} name={} execution_ms={execution_ms}",
        migration.version,
        migration.name
    );
    Ok(AppliedNow {
        version: migration.version,
        name: migration.name.to_string(),
        execution_ms,
    })
}

/// Adds the `migration.applied` audit row, once a migration has created the audit log.
fn record_applied(
    transaction: &mut postgres::Transaction<'_>,
    migration: &Migration,
    execution_ms: i32,
) -> Result<(), postgres::Error> {
    let has_audit: bool = transaction
        .query_one("SELECT to_regclass('ctrip.audit_events') IS NOT NULL", &[])?
        .get(0);
    if !has_audit {
        return Ok(());
    }
    let event = Event::new(ActorType::System, "migration.applied", Outcome::Success)
        .actor(format!("ctrip {}", env!("CARGO_PKG_VERSION")))
        .object("migration", format!("{:04}", migration.version))
        .details(serde_json::json!({
            "name": migration.name,
            "checksum": migration.checksum(),
            "execution_ms": execution_ms,
        }));
    audit::record(transaction, &event)
}

/// Describes this process for the `applied_by` column.
fn applied_by() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "ctrip {} on {} pid {}",
        env!("CARGO_PKG_VERSION"),
        host.trim(),
        std::process::id()
    )
}

/// Reads the migration history, oldest first. The table must exist.
pub fn read_applied(client: &mut Client) -> Result<Vec<AppliedMigration>, MigrateError> {
    let rows = client.query(
        "SELECT version, name, checksum, applied_at, execution_ms, applied_by
         FROM ctrip.schema_migrations ORDER BY version",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|row| AppliedMigration {
            version: row.get(0),
            name: row.get(1),
            checksum: row.get(2),
            applied_at: row.get(3),
            execution_ms: row.get(4),
            applied_by: row.get(5),
        })
        .collect())
}

/// Checks the applied history against the files of this build.
pub fn check_history(
    applied: &[AppliedMigration],
    migrations: &[Migration],
) -> Result<(), MigrateError> {
    let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(newest) = applied.iter().map(|row| row.version).max() {
        if newest > known {
            return Err(MigrateError::DatabaseNewer {
                database: newest,
                known,
            });
        }
    }
    for row in applied {
        let Some(migration) = migrations.iter().find(|m| m.version == row.version) else {
            return Err(MigrateError::Missing {
                version: row.version,
                name: row.name.clone(),
            });
        };
        let built = migration.checksum();
        if built != row.checksum {
            return Err(MigrateError::Edited {
                version: row.version,
                name: row.name.clone(),
                applied: row.checksum.clone(),
                built,
            });
        }
    }
    Ok(())
}

/// State of one migration for `ctrip migrate status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    Applied,
    Pending,
    /// Applied, but the file in this build has another checksum.
    Drifted,
    /// Applied, but this build has no such file.
    Missing,
}

/// One line of `ctrip migrate status`.
#[derive(Debug, Clone)]
pub struct StatusLine {
    pub version: i64,
    pub name: String,
    pub state: MigrationState,
    pub applied: Option<AppliedMigration>,
}

/// Compares the database's history with this build, without changing anything.
pub fn status(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<StatusLine>, MigrateError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('ctrip.schema_migrations') IS NOT NULL",
            &[],
        )?
        .get(0);
    let applied = if exists {
        read_applied(client)?
    } else {
        Vec::new()
    };

    let mut lines: Vec<StatusLine> = migrations
        .iter()
        .map(|migration| {
            let row = applied.iter().find(|row| row.version == migration.version);
            let state = match row {
                None => MigrationState::Pending,
                Some(row) if row.checksum != migration.checksum() => MigrationState::Drifted,
                Some(_) => MigrationState::Applied,
            };
            StatusLine {
                version: migration.version,
                name: migration.name.to_string(),
                state,
                applied: row.cloned(),
            }
        })
        .collect();
    for row in &applied {
        if !migrations.iter().any(|m| m.version == row.version) {
            lines.push(StatusLine {
                version: row.version,
                name: row.name.clone(),
                state: MigrationState::Missing,
                applied: Some(row.clone()),
            });
        }
    }
    lines.sort_by_key(|line| line.version);
    Ok(lines)
}

/// True when every migration of this build is applied with a matching checksum.
pub fn is_current(client: &mut Client, migrations: &[Migration]) -> Result<bool, MigrateError> {
    let lines = status(client, migrations)?;
    Ok(lines
        .iter()
        .all(|line| line.state == MigrationState::Applied))
}
