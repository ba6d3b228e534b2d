//! The operator commands behind `ctrip migrate`, `merchant`, `api-key`, `audit`, `backup`,
//! `retention` and `erase`.
//!
//! Each opens one session as the migration login (the schema owner), prints a result for a
//! person on stdout, and returns an error for `main` to print as one line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::apikeys;
use crate::audit::{self, checkpoint, verify, ActorType, Event, Outcome};
use crate::backup;
use crate::config::Config;
use crate::db::migrate::{self, MigrationState};
use crate::merchants;
use crate::retention;
use crate::serve;

fn show_time(time: Option<DateTime<Utc>>) -> String {
    time.map_or("-".to_owned(), |t| {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    })
}

/// Chains the audit rows the command just wrote, so they are covered at once even when no
/// `ctrip serve` is running. Rows left pending are chained by the next server or command.
pub fn chain_audit(config: &Config) -> anyhow::Result<u64> {
    let mut client = serve::migration_client(config)?;
    Ok(audit::chain_pending(&mut client, true)?)
}

/// `ctrip migrate`: applies pending migrations.
pub fn migrate_apply(config: &Config) -> anyhow::Result<()> {
    let mut client = serve::migration_client(config)?;
    let applied = migrate::apply(&mut client, &migrate::embedded())?;
    crate::chains::sync(
        &mut client,
        &crate::chains::ChainRegistry::from_config(&config.chains),
    )?;
    if applied.is_empty() {
        println!("migrations are current; nothing to apply");
    }
    for migration in applied {
        println!(
            "applied {:04}_{} in {} ms",
            migration.version, migration.name, migration.execution_ms
        );
    }
    Ok(())
}

/// `ctrip migrate status`: fails when a migration drifted or is missing.
pub fn migrate_status(config: &Config) -> anyhow::Result<()> {
    let mut client = serve::migration_client(config)?;
    let lines = migrate::status(&mut client, &migrate::embedded())?;
    println!(
        "{:<8} {:<8} {:<30} {:<32} APPLIED BY",
        "VERSION", "STATE", "NAME", "APPLIED AT"
    );
    let mut problems = 0;
    for line in lines {
        let state = match line.state {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Drifted => "DRIFTED",
            MigrationState::Missing => "MISSING",
        };
        if matches!(
            line.state,
            MigrationState::Drifted | MigrationState::Missing
        ) {
            problems += 1;
        }
        let (at, by) = match &line.applied {
            Some(row) => (row.applied_at.to_rfc3339(), row.applied_by.clone()),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let version = format!("{:04}", line.version);
        println!("{version:<8} {state:<8} {:<30} {at:<32} {by}", line.name);
    }
    if problems > 0 {
        bail!(
            "{problems} migration(s) drifted or missing: restore the original sql/ files of this \
             build; `ctrip serve` names each one"
        );
    }
    Ok(())
}

/// `ctrip merchant create NAME`.
pub fn merchant_create(config: &Config, name: &str) -> anyhow::Result<()> {
    let mut client = serve::migration_client(config)?;
    let merchant = merchants::create(&mut client, name)?;
    println!("id:   {}", merchant.id);
    println!("name: {}", merchant.name);
    Ok(())
}

/// `ctrip merchant list`.
pub fn merchant_list(config: &Config) -> anyhow::Result<()> {
    let mut client = serve::migration_client(config)?;
    println!("{:<36}  {:<20}  NAME", "ID", "CREATED");
    for merchant in merchants::list(&mut client)? {
        println!(
            "{:<36}  {:<20}  {}",
            merchant.id,
            show_time(Some(merchant.created_at)),
            merchant.name
        );
    }
    Ok(())
}

/// `ctrip api-key create`: without `--merchant`, uses the only merchant, or creates one named
/// "default" when there is none.
pub fn api_key_create(
    config: &Config,
    name: &str,
    merchant: Option<&str>,
    scopes: &str,
) -> anyhow::Result<()> {
    let scopes = apikeys::parse_scopes(scopes)?;
    let mut client = serve::migration_client(config)?;
    let merchant_id = match merchant {
        Some(text) => Uuid::parse_str(text).map_err(|_| {
            anyhow::anyhow!("--merchant {text:?} is not a merchant id: run `ctrip merchant list`")
        })?,
        None => only_merchant(&mut client)?,
    };
    let (key, secret) = apikeys::create(&mut client, merchant_id, name, &scopes)?;
    println!("id:       {}", key.id);
    println!("merchant: {}", key.merchant_id);
    println!("name:     {}", key.name);
    println!("scopes:   {}", key.scopes.join(","));
    println!("prefix:   {}", key.prefix);
    println!("key:      {}", secret.expose());
    eprintln!("Store the key now: it is shown only once and only its hash is kept.");
    Ok(())
}

fn only_merchant(client: &mut postgres::Client) -> anyhow::Result<Uuid> {
    let all = merchants::list(client)?;
    match all.as_slice() {
        [] => {
            let merchant = merchants::create(client, "default")?;
            eprintln!("created merchant \"default\" ({}) for the key", merchant.id);
            Ok(merchant.id)
        }
        [only] => Ok(only.id),
        _ => bail!(
            "there are {} merchants: choose one with --merchant ID (see `ctrip merchant list`)",
            all.len()
        ),
    }
}

/// `ctrip api-key list`.
pub fn api_key_list(config: &Config) -> anyhow::Result<()> {
    let mut client = serve::migration_client(config)?;
    println!(
        "{:<36}  {:<36}  {:<14}  {:<28}  {:<20}  {:<20}  {:<20}  NAME",
        "ID", "MERCHANT", "PREFIX", "SCOPES", "CREATED", "LAST USED", "REVOKED"
    );
    for key in apikeys::list(&mut client)? {
        println!(
            "{:<36}  {:<36}  {:<14}  {:<28}  {:<20}  {:<20}  {:<20}  {}",
            key.id,
            key.merchant_id,
            key.prefix,
            key.scopes.join(","),
            show_time(Some(key.created_at)),
            show_time(key.last_used_at),
            show_time(key.revoked_at),
            key.name
        );
    }
    Ok(())
}

/// `ctrip api-key revoke ID`.
pub fn api_key_revoke(config: &Config, id: &str) -> anyhow::Result<()> {
    let id = Uuid::parse_str(id).map_err(|_| {
        anyhow::anyhow!("{id:?} is not an API key id: run `ctrip api-key list` to see the ids")
    })?;
    let mut client = serve::migration_client(config)?;
    apikeys::revoke(&mut client, id)?;
    println!("revoked {id}");
    Ok(())
}

/// `ctrip audit keygen --out FILE`.
pub fn audit_keygen(out: &Path) -> anyhow::Result<()> {
    let public = checkpoint::generate_key(out)?;
    println!("wrote audit key {} (mode 0600)", out.display());
    println!("public key: {}", hex::encode(public.as_bytes()));
    Ok(())
}

fn audit_key_path(config: &Config, key: Option<&Path>) -> anyhow::Result<PathBuf> {
    key.map(Path::to_owned).or_else(|| config.audit.key_file.clone()).context(
        "no audit key: pass --key FILE or set audit.key_file (create one with `ctrip audit keygen`)",
    )
}

/// `ctrip audit checkpoint`: signs the current head now.
pub fn audit_checkpoint(config: &Config) -> anyhow::Result<()> {
    let key = checkpoint::load_key(&audit_key_path(config, None)?)?;
    let file = config
        .audit
        .checkpoint_file
        .clone()
        .context("no checkpoint file: set audit.checkpoint_file in the config")?;
    let mut client = serve::migration_client(config)?;
    match checkpoint::write(&mut client, &key, &file)? {
        Some(point) => println!(
            "checkpoint at row {} written to {}",
            point.id,
            file.display()
        ),
        None => println!("the audit log is empty; no checkpoint written"),
    }
    Ok(())
}

/// `ctrip audit verify`: exits non-zero on any problem, naming the first bad row.
pub fn audit_verify(
    config: &Config,
    checkpoints: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<()> {
    // Without --checkpoints, the configured checkpoint file is checked when it exists, so a
    // cut tail is caught by default.
    let configured = config
        .audit
        .checkpoint_file
        .as_deref()
        .filter(|file| file.exists());
    let checkpoints = checkpoints.or(configured);
    // With checkpoints or an explicit key, the key also checks the signed prune ranges.
    let verifying = match (checkpoints, key) {
        (None, None) => None,
        _ => Some(checkpoint::load_key(&audit_key_path(config, key)?)?.verifying_key()),
    };
    let points = match (checkpoints, &verifying) {
        (Some(file), Some(verifying)) => checkpoint::read(file, verifying)?,
        _ => Vec::new(),
    };
    let mut client = serve::migration_client(config)?;
    let report = verify::verify_with_key(&mut client, &points, verifying.as_ref())?;
    if report.is_ok() {
        println!(
            "audit log verified: {} rows, last row {} (hash {}), {} checkpoints",
            report.rows,
            report.last_id,
            hex::encode(&report.last_hash),
            report.checkpoints_checked
        );
        if report.pending > 0 {
            println!(
                "{} rows committed while this ran are still pending and were not checked",
                report.pending
            );
        }
        if report.pruned_through > 0 {
            println!(
                "rows 1 to {} were pruned; the chain starts from the hash the prune kept ({} \
                 prune ranges signature-checked, {} checkpoints of pruned rows skipped)",
                report.pruned_through, report.prunes_signature_checked, report.checkpoints_pruned
            );
        }
        return Ok(());
    }
    for problem in &report.problems {
        println!("row {}: {}", problem.id, problem.message);
    }
    let first = report
        .problems
        .iter()
        .min_by_key(|problem| problem.id)
        .expect("not empty");
    bail!(
        "audit log verification failed at row {}: {} ({} problem(s) listed above)",
        first.id,
        first.message,
        report.problems.len()
    )
}

/// Parses `--since`: an RFC 3339 time, or a duration back from now such as 30m, 12h or 7d.
pub fn parse_since(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let amount: i64 = number.parse().map_err(|_| {
        anyhow::anyhow!(
            "--since {text:?} is invalid: use an RFC 3339 time or a duration like 30m, 12h, 7d"
        )
    })?;
    let duration = match unit {
        "s" => Duration::seconds(amount),
        "m" => Duration::minutes(amount),
        "h" => Duration::hours(amount),
        "d" => Duration::days(amount),
        _ => bail!("--since {text:?} has an unknown unit: use s, m, h or d"),
    };
    Ok(Utc::now() - duration)
}

/// `ctrip audit tail`: prints recent events, oldest first; the read itself is audited.
pub fn audit_tail(config: &Config, since: Option<&str>, limit: i64) -> anyhow::Result<()> {
    let since = since
        .map(parse_since)
        .transpose()?
        .unwrap_or_else(|| Utc::now() - Duration::hours(24));
    if !(1..=10_000).contains(&limit) {
        bail!("--limit {limit} is out of range: use 1 to 10000");
    }
    let mut client = serve::migration_client(config)?;
    audit::chain_pending(&mut client, true)?;
    let mut transaction = client.transaction()?;
    // Rows committed since the chaining above are still pending. Their ids are negative and
    // fall as rows are inserted, so this puts them after every chained row, oldest first.
    let rows = transaction.query(
        "SELECT id, occurred_at, actor_type, actor_id, merchant_id::text, action, object_type,
                object_id, outcome, source_address, request_id, details::text
         FROM (SELECT * FROM ctrip.audit_events WHERE occurred_at >= $1
               ORDER BY id < 0 DESC, abs(id) DESC LIMIT $2) newest
         ORDER BY id < 0, abs(id)",
        &[&since, &limit],
    )?;
    let event = Event::new(ActorType::Cli, "audit.read", Outcome::Success)
        .actor(audit::cli_user())
        .details(json!({"since": since.to_rfc3339(), "limit": limit, "rows": rows.len()}));
    audit::record(&mut transaction, &event)?;
    transaction.commit()?;

    for row in rows {
        let text = |index: usize| {
            row.get::<_, Option<String>>(index)
                .unwrap_or_else(|| "-".to_owned())
        };
        let at: DateTime<Utc> = row.get(1);
        println!(
            "{} {} {}:{} merchant={} {} {}:{} {} source={} request={} {}",
            row.get::<_, i64>(0),
            at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            text(2),
            text(3),
            text(4),
            text(5),
            text(6),
            text(7),
            text(8),
            text(9),
            text(10),
            text(11)
        );
    }
    Ok(())
}

/// `ctrip doctor [--json]`: exits non-zero when a critical check fails.
pub fn doctor(config: &Config, json_output: bool) -> anyhow::Result<()> {
    let checks = crate::doctor::run(config);
    if json_output {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", crate::doctor::render_text(&checks));
    }
    let critical: Vec<&str> = checks
        .iter()
        .filter(|c| c.is_critical_failure())
        .map(|c| c.id)
        .collect();
    if !critical.is_empty() {
        bail!("critical checks failed: {}", critical.join(", "));
    }
    Ok(())
}

/// `ctrip backup ...`.
#[derive(clap::Subcommand)]
pub enum BackupAction {
    /// Create a key-encryption key file (mode 0600) for backups; never overwrites one.
    Keygen {
        /// Path of the new key file; keep a copy off the machine that stores the backups.
        #[arg(long)]
        out: PathBuf,
    },
    /// Dump the database, encrypted, into a new file in DIR (default: backup.dir).
    Create {
        /// Directory for the backup file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Authenticate every chunk of FILE and its end; writes no plaintext.
    Verify {
        file: PathBuf,
        /// Key-encryption key file (default: backup.key_file).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Verify FILE, restore it into the existing database DBNAME, and compare the manifest.
    Restore {
        file: PathBuf,
        /// Target database; it must exist, be owned by the migration role, and be empty.
        #[arg(long)]
        into: String,
        /// Restore into a database that has objects, dropping those the backup recreates.
        #[arg(long)]
        force: bool,
        /// Key-encryption key file (default: backup.key_file).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Delete the backups in DIR that the policy in [backup] no longer keeps.
    Prune {
        /// Backup directory (default: backup.dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the decisions without deleting anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-wrap the data keys of backups under a new key-encryption key.
    Rekey {
        /// The new key file; the backups then need only it.
        #[arg(long)]
        new_key: PathBuf,
        /// The current key file (default: backup.key_file).
        #[arg(long)]
        old_key: Option<PathBuf>,
        /// Backup files to rekey (default: every backup in backup.dir).
        files: Vec<PathBuf>,
    },
}

/// `ctrip retention ...`.
#[derive(clap::Subcommand)]
pub enum RetentionAction {
    /// Apply the retention periods of [retention] now and print what changed.
    Run {
        /// Print what would change without changing it.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `ctrip erase`: which payments to erase.
#[derive(clap::Args)]
#[group(skip)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(false))]
pub struct EraseArgs {
    /// Payment id.
    #[arg(long, group = "target")]
    payment: Option<String>,
    /// Every payment with this reference (the merchant's order number).
    #[arg(long, group = "target")]
    reference: Option<String>,
    /// Limit --reference to this merchant's payments.
    #[arg(long, requires = "reference")]
    merchant: Option<String>,
}

/// Dispatches `ctrip backup ...`.
pub fn backup(config: &Config, action: BackupAction) -> anyhow::Result<()> {
    match action {
        BackupAction::Keygen { .. } => unreachable!("handled before loading the config"),
        BackupAction::Create { out } => backup_create(config, out.as_deref()),
        BackupAction::Verify { file, key } => backup_verify(config, &file, key.as_deref()),
        BackupAction::Restore {
            file,
            into,
            force,
            key,
        } => backup_restore(config, &file, &into, force, key.as_deref()),
        BackupAction::Prune { dir, dry_run } => backup_prune(config, dir.as_deref(), dry_run),
        BackupAction::Rekey {
            new_key,
            old_key,
            files,
        } => backup_rekey(config, &new_key, old_key.as_deref(), files),
    }
}

fn backup_key(config: &Config, key: Option<&Path>) -> anyhow::Result<backup::key::Kek> {
    let path = key
        .map(Path::to_owned)
        .or_else(|| config.backup.key_file.clone())
        .context(
            "no backup key: pass --key FILE or set backup.key_file (create one with `ctrip \
             backup keygen`)",
        )?;
    Ok(backup::key::load(&path)?)
}

fn backup_dir(config: &Config, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    dir.map(Path::to_owned)
        .or_else(|| config.backup.dir.clone())
        .context("no backup directory: pass --out/--dir DIR or set backup.dir")
}

fn backup_event(action: &'static str, outcome: Outcome, details: serde_json::Value) -> Event {
    Event::new(ActorType::Cli, action, outcome)
        .actor(audit::cli_user())
        .details(details)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `ctrip backup keygen --out FILE`, which needs no config.
pub fn backup_keygen(out: &Path) -> anyhow::Result<()> {
    let key = backup::key::generate(out)?;
    println!("wrote backup key {} (mode 0600)", out.display());
    println!("key id: {}", key.id_hex());
    Ok(())
}

fn backup_create(config: &Config, out: Option<&Path>) -> anyhow::Result<()> {
    let kek = backup_key(config, None)?;
    let dir = backup_dir(config, out)?;
    let mut client = serve::migration_client(config)?;
    let created = match backup::create::create(config, &mut client, &kek, &dir) {
        Ok(created) => created,
        Err(err) => {
            let details = json!({"dir": dir.display().to_string(), "error": format!("{err:#}")});
            let event = backup_event("backup.created", Outcome::Failed, details);
            if let Err(audit_err) = audit::record(&mut client, &event) {
                log::error!("cannot record the failed backup in the audit log: {audit_err}");
            }
            return Err(err);
        }
    };
    let rows: u64 = created.body.manifest.iter().map(|entry| entry.rows).sum();
    let event = backup_event(
        "backup.created",
        Outcome::Success,
        json!({
            "file": file_name(&created.path),
            "key_id": created.key_id,
            "bytes": created.file_len,
            "chunks": created.totals.chunks,
            "tables": created.body.manifest.len(),
            "rows": rows,
            "schema_version": created.body.schema_version,
        }),
    )
    .object("backup", created.body.backup_id.to_string());
    audit::record(&mut client, &event)?;
    println!(
        "backup {} written to {}",
        created.body.backup_id,
        created.path.display()
    );
    println!(
        "  {} bytes in {} chunks, {} tables and sequences, {rows} rows, key {}, {:.1} s",
        created.file_len,
        created.totals.chunks,
        created.body.manifest.len(),
        created.key_id,
        created.elapsed.as_secs_f64()
    );
    Ok(())
}

fn backup_verify(config: &Config, file: &Path, key: Option<&Path>) -> anyhow::Result<()> {
    let kek = backup_key(config, key)?;
    let mut client = serve::migration_client(config)?;
    let result = backup::verify::verify_file(file, &kek);
    let (outcome, details) = match &result {
        Ok(verified) => (
            Outcome::Success,
            json!({"file": file_name(file), "backup_id": verified.header.body.backup_id,
                   "chunks": verified.totals.chunks, "bytes": verified.file_len}),
        ),
        Err(err) => (
            Outcome::Failed,
            json!({"file": file_name(file), "error": err.kind()}),
        ),
    };
    audit::record(
        &mut client,
        &backup_event("backup.verified", outcome, details),
    )?;
    let verified = result.with_context(|| format!("{} failed verification", file.display()))?;
    let body = &verified.header.body;
    println!("backup {} verified: {}", body.backup_id, file.display());
    println!(
        "  created {} from database {} (system {}, schema version {:04}), key {}",
        body.created_at.to_rfc3339(),
        body.database,
        body.system_identifier,
        body.schema_version,
        verified.header.key_id_hex()
    );
    println!(
        "  {} chunks, {} bytes of pg_dump archive, {} tables and sequences in the manifest",
        verified.totals.chunks,
        verified.totals.bytes,
        body.manifest.len()
    );
    Ok(())
}

fn backup_restore(
    config: &Config,
    file: &Path,
    into: &str,
    force: bool,
    key: Option<&Path>,
) -> anyhow::Result<()> {
    let kek = backup_key(config, key)?;
    if !backup::restore::is_plain_database_name(into) {
        bail!(
            "--into {into:?} is not a plain database name: use 1 to 63 lowercase letters, \
             digits and underscores, not starting with a digit"
        );
    }
    let tls = crate::db::SharedTls::from_config(config).context("invalid database TLS settings")?;
    let params = crate::db::ConnectParams::migration(config)?.with_dbname(into);
    let mut client = tls.connect(&params)?;

    let result = backup::restore::restore(config, &mut client, &kek, file, into, force);
    // The audit row goes into the restored database, whose log continues the source's.
    let restored = match result {
        Ok(restored) => restored,
        Err(err) => {
            let details =
                json!({"file": file_name(file), "force": force, "error": format!("{err:#}")});
            let event = backup_event("backup.restored", Outcome::Failed, details);
            if let Err(audit_err) = audit::record(&mut client, &event) {
                log::warn!("cannot record the failed restore in {into}: {audit_err}");
            }
            chain_restored(&mut client, into);
            return Err(err);
        }
    };

    let body = &restored.header.body;
    let outcome = if restored.differences.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    };
    let event = backup_event(
        "backup.restored",
        outcome,
        json!({
            "file": file_name(file),
            "source_database": body.database,
            "source_system_identifier": body.system_identifier,
            "backup_created_at": body.created_at.to_rfc3339(),
            "force": force,
            "manifest_differences": restored.differences.len(),
        }),
    )
    .object("backup", body.backup_id.to_string());
    audit::record(&mut client, &event)?;
    chain_restored(&mut client, into);

    println!(
        "restored backup {} (created {}) into {into} in {:.1} s",
        body.backup_id,
        body.created_at.to_rfc3339(),
        restored.elapsed.as_secs_f64()
    );
    if restored.differences.is_empty() {
        println!(
            "  manifest matches: {} tables and sequences, {} rows",
            body.manifest.len(),
            body.manifest.iter().map(|entry| entry.rows).sum::<u64>()
        );
        return Ok(());
    }
    for difference in &restored.differences {
        println!("  differs: {difference}");
    }
    bail!(
        "the restored database {into} does not match the backup's manifest: {} difference(s) \
         listed above",
        restored.differences.len()
    )
}

/// Chains the restore's audit row in the restored database, which the command's final
/// chaining (of the configured database) does not reach.
fn chain_restored(client: &mut postgres::Client, into: &str) {
    if let Err(err) = audit::chain_pending(client, true) {
        log::warn!(
            "the restore's audit row in {into} is saved but not yet chained, and a `ctrip serve` \
             or `ctrip audit verify` on {into} chains it: {err}"
        );
    }
}

fn backup_prune(config: &Config, dir: Option<&Path>, dry_run: bool) -> anyhow::Result<()> {
    use backup::prune::Decision;

    let kek = backup_key(config, None)?;
    let dir = backup_dir(config, dir)?;
    let mut client = serve::migration_client(config)?;
    let entries = backup::prune::plan(&dir, &kek, &config.backup, Utc::now())?;
    for entry in &entries {
        let created = show_time(entry.created_at);
        let (action, reason) = match &entry.decision {
            Decision::Keep(reason) => ("keep", reason.clone()),
            Decision::Delete if dry_run => ("would delete", "outside the policy".to_owned()),
            Decision::Delete => ("delete", "outside the policy".to_owned()),
            Decision::Unverified(why) => ("keep", format!("header not authenticated: {why}")),
        };
        println!(
            "{action:<12}  {created:<20}  {}  ({reason})",
            file_name(&entry.path)
        );
    }
    let deleted: Vec<String> = entries
        .iter()
        .filter(|entry| entry.decision == Decision::Delete)
        .filter_map(|entry| entry.backup_id.map(|id| id.to_string()))
        .collect();
    let unverified = entries
        .iter()
        .filter(|entry| matches!(entry.decision, Decision::Unverified(_)))
        .count();
    if !dry_run {
        backup::prune::delete(&dir, &entries)?;
    }
    let details = json!({
        "dir": dir.display().to_string(),
        "dry_run": dry_run,
        "kept": entries.len() - deleted.len(),
        "deleted": deleted,
        "unverified": unverified,
    });
    audit::record(
        &mut client,
        &backup_event("backup.pruned", Outcome::Success, details),
    )?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{verb} {} of {} backups in {}",
        deleted.len(),
        entries.len(),
        dir.display()
    );
    Ok(())
}

fn backup_rekey(
    config: &Config,
    new_key: &Path,
    old_key: Option<&Path>,
    files: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let old = backup_key(config, old_key)?;
    let new = backup::key::load(new_key)?;
    let files = if files.is_empty() {
        let dir = backup_dir(config, None)?;
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                let name = file_name(path);
                name.ends_with(backup::format::SUFFIX) && !name.starts_with('.')
            })
            .collect();
        found.sort();
        found
    } else {
        files
    };
    let mut client = serve::migration_client(config)?;
    let (mut rekeyed, mut current, mut failed) = (Vec::new(), 0, Vec::new());
    for file in &files {
        match backup::rekey::rekey_file(file, &old, &new) {
            Ok(backup::rekey::Rekeyed::Done) => {
                println!("rekeyed      {}", file.display());
                rekeyed.push(file_name(file));
            }
            Ok(backup::rekey::Rekeyed::AlreadyCurrent) => {
                println!("already new  {}", file.display());
                current += 1;
            }
            Err(err) => {
                println!("failed       {}: {err:#}", file.display());
                failed.push(file_name(file));
            }
        }
    }
    let outcome = if failed.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    };
    let details = json!({
        "old_key_id": old.id_hex(),
        "new_key_id": new.id_hex(),
        "rekeyed": rekeyed,
        "already_current": current,
        "failed": failed,
    });
    audit::record(
        &mut client,
        &backup_event("backup.rekeyed", outcome, details),
    )?;
    println!(
        "rekeyed {} of {} backups from key {} to key {}",
        rekeyed.len(),
        files.len(),
        old.id_hex(),
        new.id_hex()
    );
    if !failed.is_empty() {
        bail!(
            "{} backup(s) could not be rekeyed, listed above",
            failed.len()
        );
    }
    Ok(())
}

/// Dispatches `ctrip retention ...`.
pub fn retention(config: &Config, action: RetentionAction) -> anyhow::Result<()> {
    let RetentionAction::Run { dry_run } = action;
    let mut client = serve::migration_client(config)?;
    let actor = retention::Actor {
        actor_type: ActorType::Cli,
        id: audit::cli_user(),
    };
    let report = match retention::run(config, &mut client, &actor, dry_run, false)? {
        Ok(report) => report,
        Err(_) => bail!(
            "another ctrip process is running retention now (it holds the retention lock): \
             try again when it has finished"
        ),
    };
    println!("{}", retention::summary(&report));
    let verb = if dry_run { "would erase" } else { "erased" };
    for id in &report.payments_erased {
        println!("  {verb} payment {id}");
    }
    Ok(())
}

/// `ctrip erase`: erases the personal fields of the chosen payments in one transaction.
pub fn erase(config: &Config, args: &EraseArgs) -> anyhow::Result<()> {
    let target = match (&args.payment, &args.reference) {
        (Some(id), _) => retention::EraseTarget::Payment(
            Uuid::parse_str(id)
                .map_err(|_| anyhow::anyhow!("--payment {id:?} is not a payment id (a UUID)"))?,
        ),
        (None, Some(reference)) => retention::EraseTarget::Reference {
            reference: reference.clone(),
            merchant: args
                .merchant
                .as_deref()
                .map(|text| {
                    Uuid::parse_str(text).map_err(|_| {
                        anyhow::anyhow!(
                            "--merchant {text:?} is not a merchant id: run `ctrip merchant list`"
                        )
                    })
                })
                .transpose()?,
        },
        (None, None) => bail!("pass --payment ID or --reference REF"),
    };
    let mut client = serve::migration_client(config)?;
    let erased = retention::erase(&mut client, &target)?;
    if erased.is_empty() {
        println!("no payment has this reference (erased before, or never used): nothing to erase");
    }
    for payment in erased {
        if payment.already_erased {
            println!(
                "payment {} (merchant {}) was already erased at {}",
                payment.id,
                payment.merchant_id,
                show_time(Some(payment.erased_at))
            );
        } else {
            println!(
                "erased reference and metadata of payment {} (merchant {})",
                payment.id, payment.merchant_id
            );
        }
    }
    Ok(())
}
