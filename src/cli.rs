//! The operator commands behind `ctrip migrate`, `merchant`, `api-key` and `audit`.
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
use crate::config::Config;
use crate::db::migrate::{self, MigrationState};
use crate::merchants;
use crate::serve;

fn show_time(time: Option<DateTime<Utc>>) -> String {
    time.map_or("-".to_owned(), |t| {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    })
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
    let points = match checkpoints {
        None => Vec::new(),
        Some(file) => {
            let signing = checkpoint::load_key(&audit_key_path(config, key)?)?;
            checkpoint::read(file, &signing.verifying_key())?
        }
    };
    let mut client = serve::migration_client(config)?;
    let report = verify::verify(&mut client, &points)?;
    if report.is_ok() {
        println!(
            "audit log verified: {} rows, last row {} (hash {}), {} checkpoints",
            report.rows,
            report.last_id,
            hex::encode(&report.last_hash),
            report.checkpoints_checked
        );
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
    let mut transaction = client.transaction()?;
    let rows = transaction.query(
        "SELECT id, occurred_at, actor_type, actor_id, merchant_id::text, action, object_type,
                object_id, outcome, source_address, request_id, details::text
         FROM (SELECT * FROM ctrip.audit_events WHERE occurred_at >= $1
               ORDER BY id DESC LIMIT $2) newest
         ORDER BY id",
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
