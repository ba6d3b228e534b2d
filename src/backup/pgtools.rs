//! Running `pg_dump` and `pg_restore` with ctrip's connection settings.
//!
//! The programs get the same TLS settings as ctrip's own sessions through libpq's variables
//! (PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY), and the migration login's password only
//! through PGPASSWORD in their environment, never in an argument. The environment is
//! otherwise cleared, so no PGSERVICE, PGSSLMODE or ~/.pgpass of the caller applies.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context};

use crate::config::Config;

const PG_ROOT: &str = "/usr/lib/postgresql";

/// Returns the directory holding `pg_dump` and `pg_restore`: `backup.pg_bin_dir` when set,
/// else the newest `/usr/lib/postgresql/VERSION/bin` that has both.
pub fn bin_dir(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &config.backup.pg_bin_dir {
        return Ok(dir.clone());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_ROOT)
        .with_context(|| {
            format!(
                "cannot list {PG_ROOT}: install the PostgreSQL client (apt-get install \
                 postgresql-client) or set backup.pg_bin_dir"
            )
        })?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("pg_dump").is_file() && bin.join("pg_restore").is_file())
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no pg_dump and pg_restore found in {PG_ROOT}/*/bin: install the PostgreSQL client \
             (apt-get install postgresql-client) or set backup.pg_bin_dir"
        ),
    }
}

/// Builds a command for `program` in `bin` that connects as the migration login to `dbname`.
pub fn command(
    config: &Config,
    bin: &Path,
    program: &str,
    dbname: &str,
) -> anyhow::Result<Command> {
    let db = &config.database;
    let login = config.migration_login();
    let password = config.migration_password()?;
    let mut command = Command::new(bin.join(program));
    command
        .env_clear()
        .env("PGHOST", &db.host)
        .env("PGPORT", db.port.to_string())
        .env("PGDATABASE", dbname)
        .env("PGUSER", &login.user)
        .env("PGPASSWORD", password.expose())
        .env("PGAPPNAME", format!("{} {program}", db.application_name))
        .env(
            "PGCONNECT_TIMEOUT",
            db.connect_timeout_ms.div_ceil(1000).max(2).to_string(),
        )
        .env("PGSSLMODE", db.sslmode.as_str())
        .env("PGSSLMINPROTOCOLVERSION", "TLSv1.2")
        .env("PGSSLROOTCERT", &db.sslrootcert)
        // An empty PGPASSFILE path would still be looked up; /dev/null contains no password.
        .env("PGPASSFILE", "/dev/null")
        .env("LC_ALL", "C");
    if let (Some(cert), Some(key)) = (&db.sslcert, &db.sslkey) {
        command.env("PGSSLCERT", cert).env("PGSSLKEY", key);
    } else {
        // Without these, libpq would offer ~/.postgresql/postgresql.crt if one exists. No
        // file can exist below /dev/null, so libpq sends no client certificate.
        command
            .env("PGSSLCERT", "/dev/null/no-client-certificate")
            .env("PGSSLKEY", "/dev/null/no-client-key");
    }
    Ok(command)
}

/// Returns the first line of `program --version`, such as `pg_dump (PostgreSQL) 15.10`.
pub fn version(bin: &Path, program: &str) -> anyhow::Result<String> {
    let output = Command::new(bin.join(program))
        .arg("--version")
        .env_clear()
        .output()
        .with_context(|| format!("cannot run {}", bin.join(program).display()))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or(program)
        .trim()
        .to_owned())
}

/// Collects the last 8 KiB of a child's stderr in a thread, for the error message.
pub struct StderrTail {
    text: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

const TAIL_BYTES: usize = 8 * 1024;

impl StderrTail {
    pub fn start(child: &mut Child) -> StderrTail {
        let text = Arc::new(Mutex::new(Vec::new()));
        let thread = child.stderr.take().map(|mut stderr| {
            let text = text.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(read) = stderr.read(&mut buffer) {
                    if read == 0 {
                        break;
                    }
                    let mut kept = text.lock().unwrap_or_else(|p| p.into_inner());
                    kept.extend_from_slice(&buffer[..read]);
                    if kept.len() > TAIL_BYTES {
                        let cut = kept.len() - TAIL_BYTES;
                        kept.drain(..cut);
                    }
                }
            })
        });
        StderrTail { text, thread }
    }

    /// Waits for the stream to close and returns its text as one line.
    pub fn finish(mut self) -> String {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let kept = self.text.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&kept)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    }
}
