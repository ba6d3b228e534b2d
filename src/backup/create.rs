//! `ctrip backup create`: one consistent, encrypted dump.
//!
//! The migration login opens a REPEATABLE READ, READ ONLY transaction, exports its snapshot
//! and computes the manifest in it, while `pg_dump --snapshot` dumps that same snapshot, so
//! the manifest describes exactly the dumped rows. The dump streams through [`ChunkWriter`]
//! into a spool file, then into `.NAME.partial` in the target directory, with at most one
//! chunk in memory. The file is fsynced and renamed to NAME only after pg_dump succeeded and
//! the end record is written, so an interrupted backup never leaves a file with a backup's
//! name.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{SubsecRound, Utc};
use postgres::{Client, IsolationLevel};
use uuid::Uuid;

use super::format::{self, HeaderBody, FORMAT_VERSION, SUFFIX};
use super::key::{self, Kek};
use super::manifest;
use super::pgtools::{self, StderrTail};
use super::stream::{ChunkReader, ChunkWriter, StreamTotals, CHUNK_SIZE};
use crate::config::Config;

/// A finished backup.
#[derive(Debug, Clone)]
pub struct Created {
    pub path: PathBuf,
    pub body: HeaderBody,
    pub key_id: String,
    pub totals: StreamTotals,
    pub file_len: u64,
    pub elapsed: Duration,
}

/// A temporary file of the backup, deleted when dropped unless `keep` is set.
struct PartialFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates a backup of the configured database in `out_dir`, encrypted for `kek`.
pub fn create(
    config: &Config,
    client: &mut Client,
    kek: &Kek,
    out_dir: &Path,
) -> anyhow::Result<Created> {
    let started = Instant::now();
    let bin = pgtools::bin_dir(config)?;
    let pg_dump_version = pgtools::version(&bin, "pg_dump")?;
    fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create the backup directory {}", out_dir.display()))?;

    let mut snapshot = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    // pg_dump runs while this transaction waits, so it may idle longer than sessions may.
    snapshot.batch_execute(
        "SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0",
    )?;
    let row = snapshot.query_one(
        "SELECT pg_export_snapshot(), current_database()::text,
                (SELECT system_identifier::text FROM pg_control_system()),
                current_setting('server_version'),
                (SELECT coalesce(max(version), 0) FROM ctrip.schema_migrations)",
        &[],
    )?;
    let snapshot_id: String = row.get(0);
    let database: String = row.get(1);
    let backup_id = Uuid::now_v7();
    let created_at = Utc::now().trunc_subsecs(3);
    let name = format!(
        "ctrip-{}-{}{SUFFIX}",
        created_at.format("%Y%m%dT%H%M%SZ"),
        &backup_id.simple().to_string()[24..]
    );

    // pg_dump runs while the manifest is computed. The manifest must be in the header, ahead
    // of the chunks, so the dump first goes to a spool file sealed under a throw-away key,
    // and is re-sealed under the backup's data key once the header is known.
    let spool = PartialFile {
        path: out_dir.join(format!(".{name}.spool")),
        keep: false,
    };
    let spool_key = key::random_data_key();
    let spool_writer = ChunkWriter::new(
        BufWriter::with_capacity(256 * 1024, create_private(&spool.path, true)?),
        &spool_key,
        [0; 32],
    );
    let dump = PgDump::start(config, &bin, &database, &snapshot_id, spool_writer)?;
    let manifest = match manifest::compute(&mut snapshot) {
        Ok(manifest) => manifest,
        Err(err) => {
            dump.kill();
            return Err(err.context("cannot compute the manifest"));
        }
    };
    let (spool_file, _) = dump.finish()?;

    let body = HeaderBody {
        format_version: FORMAT_VERSION,
        backup_id,
        created_at,
        database,
        system_identifier: row.get(2),
        server_version: row.get(3),
        schema_version: row.get(4),
        payload: format!("{pg_dump_version}, custom format"),
        chunk_size: CHUNK_SIZE as u32,
        manifest,
    };
    let prefix = format::encode_prefix(&body);
    let digest = format::digest_of(&prefix);
    let data_key = key::random_data_key();
    let header = format::finish_header(&prefix, &kek.wrap(&data_key, &digest));

    let final_path = out_dir.join(&name);
    let mut partial = PartialFile {
        path: out_dir.join(format!(".{name}.partial")),
        keep: false,
    };
    let mut output = BufWriter::with_capacity(256 * 1024, create_private(&partial.path, false)?);
    output.write_all(&header)?;
    let writer = ChunkWriter::new(output, &data_key, digest);
    let (output, totals) = reseal(spool_file, &spool_key, writer)?;
    drop(spool);

    let file = output
        .into_inner()
        .map_err(|err| err.into_error())
        .context("cannot write the backup")?;
    file.sync_all().context("cannot fsync the backup")?;
    let file_len = file.metadata()?.len();
    drop(file);
    fs::rename(&partial.path, &final_path)
        .with_context(|| format!("cannot rename the backup to {}", final_path.display()))?;
    partial.keep = true;
    File::open(out_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot fsync the directory {}", out_dir.display()))?;
    snapshot.commit()?;

    Ok(Created {
        path: final_path,
        body,
        key_id: kek.id_hex(),
        totals,
        file_len,
        elapsed: started.elapsed(),
    })
}

/// Creates `path` with mode 0600, failing when it exists.
fn create_private(path: &Path, readable: bool) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(readable)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Decrypts the spool chunk by chunk into `writer`, then writes the end record.
fn reseal(
    mut spool: File,
    spool_key: &[u8; 32],
    mut writer: ChunkWriter<BufWriter<File>>,
) -> anyhow::Result<(BufWriter<File>, StreamTotals)> {
    spool.seek(SeekFrom::Start(0))?;
    let spool_len = spool.metadata()?.len();
    let input = BufReader::with_capacity(256 * 1024, spool);
    let mut reader = ChunkReader::new(input, spool_key, [0; 32], Some(spool_len));
    while let Some(chunk) = reader
        .next_chunk()
        .context("cannot read the spool file back")?
    {
        writer.write_all(chunk).context("cannot write the backup")?;
    }
    writer.finish().context("cannot write the backup")
}

/// A running pg_dump whose output a thread seals into the spool file.
struct PgDump {
    child: Child,
    stderr: StderrTail,
    copier: JoinHandle<std::io::Result<(BufWriter<File>, StreamTotals)>>,
}

impl PgDump {
    fn start(
        config: &Config,
        bin: &Path,
        dbname: &str,
        snapshot_id: &str,
        mut writer: ChunkWriter<BufWriter<File>>,
    ) -> anyhow::Result<PgDump> {
        let mut command = pgtools::command(config, bin, "pg_dump", dbname)?;
        command
            .arg("--format=custom")
            .arg(format!("--snapshot={snapshot_id}"))
            // The owner sees every row through its own policies. Without this flag pg_dump
            // sets row_security = off, which fails on tables with forced row-level security.
            .arg("--enable-row-security")
            .arg("--lock-wait-timeout=60s")
            .arg("--no-password")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(role) = &config.migration_login().role {
            command.arg(format!("--role={role}"));
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.join("pg_dump").display()))?;
        let stderr = StderrTail::start(&mut child);
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let copier = std::thread::spawn(move || {
            std::io::copy(&mut stdout, &mut writer)?;
            writer.finish()
        });
        Ok(PgDump {
            child,
            stderr,
            copier,
        })
    }

    /// Waits for pg_dump and returns the spool file with its totals.
    fn finish(mut self) -> anyhow::Result<(File, StreamTotals)> {
        let copied = self.copier.join();
        let status = self.child.wait().context("cannot wait for pg_dump")?;
        let messages = self.stderr.finish();
        if !status.success() {
            bail!("pg_dump failed ({status}): {messages}");
        }
        let (output, totals) = copied
            .map_err(|_| anyhow::anyhow!("the thread writing the spool file panicked"))?
            .context("cannot write the spool file")?;
        let file = output.into_inner().map_err(|err| err.into_error())?;
        Ok((file, totals))
    }

    /// Stops pg_dump and waits for it and the thread.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.copier.join();
    }
}
