//! `ctrip backup restore FILE --into DBNAME`.
//!
//! The whole file is authenticated first, writing nothing. Only then does a second pass
//! decrypt it chunk by chunk into the standard input of `pg_restore --single-transaction`,
//! so no plaintext file exists at any time, and a chunk that fails in the second pass (the
//! file changed in between) kills pg_restore, whose transaction then rolls back. Afterwards
//! the manifest of the restored database is compared with the one in the header.
//!
//! The target database must exist and belong to the migration role (`ctrip_owner`), as a
//! new ctrip database does. pg_restore connects as the migration login, switches to that
//! role and restores with `--no-owner`, so every object belongs to it; grants to
//! `ctrip_app` and `ctrip_readonly` are restored and need those roles in the target cluster.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use postgres::{Client, IsolationLevel};

use super::format::Header;
use super::key::Kek;
use super::pgtools::{self, StderrTail};
use super::stream::StreamTotals;
use super::{manifest, verify, BackupError};
use crate::config::Config;

/// A finished restore and how the restored database compares with the backup.
#[derive(Debug, Clone)]
pub struct Restored {
    pub header: Header,
    pub totals: StreamTotals,
    /// Differences between the backup's manifest and the restored database; empty when equal.
    pub differences: Vec<String>,
    pub elapsed: Duration,
}

/// Returns true for a database name that needs no quoting and no escaping anywhere.
pub fn is_plain_database_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Restores `path` into the existing database `target` through `client`, a migration-login
/// session on that database. Refuses a database with objects in it unless `force`, in which
/// case pg_restore drops the objects of the backup before recreating them.
pub fn restore(
    config: &Config,
    client: &mut Client,
    kek: &Kek,
    path: &Path,
    target: &str,
    force: bool,
) -> anyhow::Result<Restored> {
    let started = Instant::now();
    if !is_plain_database_name(target) {
        bail!(
            "--into {target:?} is not a plain database name: use 1 to 63 lowercase letters, \
             digits and underscores, not starting with a digit"
        );
    }
    let verified = verify::verify_file(path, kek)?;
    check_target(config, client, target, force)?;

    let bin = pgtools::bin_dir(config)?;
    let mut command = pgtools::command(config, &bin, "pg_restore", target)?;
    command
        .arg(format!("--dbname={target}"))
        .arg("--no-owner")
        .arg("--single-transaction")
        .arg("--exit-on-error")
        .arg("--no-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(role) = &config.migration_login().role {
        command.arg(format!("--role={role}"));
    }
    if force {
        command.arg("--clean").arg("--if-exists");
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", bin.join("pg_restore").display()))?;
    let stderr = StderrTail::start(&mut child);
    let mut stdin = child.stdin.take().expect("stdin is piped");

    let mut opened = verify::open(path, kek)?;
    let mut reader = opened.chunks();
    let mut fed: Result<(), BackupError> = Ok(());
    loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => {
                // A write fails when pg_restore stopped early; its exit status says why.
                if stdin.write_all(chunk).is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(err) => {
                fed = Err(err);
                break;
            }
        }
    }
    let totals = reader.totals();
    if let Err(err) = fed {
        let _ = child.kill();
        let _ = child.wait();
        return Err(anyhow::Error::new(err).context(
            "the backup changed after it was verified; pg_restore was stopped and its \
             transaction rolled back",
        ));
    }
    drop(stdin);
    let status = child.wait().context("cannot wait for pg_restore")?;
    let messages = stderr.finish();
    if !status.success() {
        bail!("pg_restore failed ({status}), nothing was restored: {messages}");
    }

    let mut transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let restored = manifest::compute(&mut transaction)?;
    transaction.commit()?;
    let differences = manifest::differences(&verified.header.body.manifest, &restored);
    Ok(Restored {
        header: verified.header,
        totals,
        differences,
        elapsed: started.elapsed(),
    })
}

/// Checks that `target` belongs to the migration role and, unless `force`, holds no objects.
fn check_target(
    config: &Config,
    client: &mut Client,
    target: &str,
    force: bool,
) -> anyhow::Result<()> {
    let login = config.migration_login();
    let role = login.role.as_deref().unwrap_or(&login.user);
    let owner: String = client
        .query_one(
            "SELECT pg_catalog.pg_get_userbyid(datdba)::text FROM pg_catalog.pg_database
             WHERE datname = current_database()",
            &[],
        )?
        .get(0);
    if owner != role {
        bail!(
            "database {target} is owned by {owner}, not {role}: as a superuser run ALTER \
             DATABASE {target} OWNER TO {role}"
        );
    }
    if force {
        return Ok(());
    }
    let objects: Vec<String> = client
        .query(
            "SELECT n.nspname || '.' || c.relname
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
             UNION ALL
             SELECT 'schema ' || nspname FROM pg_catalog.pg_namespace
             WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
               AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%'
             ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !objects.is_empty() {
        let shown: Vec<&str> = objects.iter().take(3).map(String::as_str).collect();
        bail!(
            "database {target} is not empty ({} objects, such as {}): restore into a new \
             database, or pass --force to drop and replace the backup's objects in it",
            objects.len(),
            shown.join(", ")
        );
    }
    Ok(())
}
