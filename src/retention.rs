//! Retention of personal data and audit events, and erasure of a payment's personal fields.
//!
//! The personal fields of a payment are `reference` and `metadata`. Erasing sets them to
//! NULL and `{}` in place, in the caller's transaction. Amount, chain, address, status,
//! timestamps and transaction data stay for accounting, and the audit row records only that
//! an erasure happened. A retention run erases the personal fields of payments whose final
//! state is older than `retention.payment_personal_data_days`, and prunes audit events older
//! than `retention.audit_events_months` after signing a checkpoint of the last pruned row.
//! A transaction-level advisory lock lets one process at a time run it.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient, Transaction};
use serde_json::json;
use uuid::Uuid;

use crate::audit::{self, checkpoint, ActorType, Event, Outcome};
use crate::config::Config;
use crate::db::pool::StatementCache;
use crate::db::{ConnectParams, SharedTls};

/// Payment columns that hold personal data, cleared by an erasure.
pub const PERSONAL_FIELDS: &[&str] = &["reference", "metadata"];

/// Statuses after which a payment no longer changes; retention counts from the first.
pub const FINAL_STATUSES: &[&str] = &["paid", "settled", "expired", "failed"];

/// Arbitrary but fixed advisory lock key, the bytes of "ctripret".
const LOCK_KEY: i64 = 0x6374_7269_7072_6574;

/// The outcome of erasing one payment.
#[derive(Debug, Clone)]
pub struct Erased {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub erased_at: DateTime<Utc>,
    /// True when the payment had been erased before; nothing changed then.
    pub already_erased: bool,
}

const LOCK_PAYMENT: &str =
    "SELECT merchant_id, erased_at IS NOT NULL FROM ctrip.payments WHERE id = $1 FOR UPDATE";
const ERASE_PAYMENT: &str =
    "UPDATE ctrip.payments SET reference = NULL, metadata = '{}' WHERE id = $1 RETURNING erased_at";

/// Erases the personal fields of payment `id` if the transaction may see it (row-level
/// security applies); returns `None` for an unknown or hidden id. Erasing twice changes
/// nothing and keeps the first `erased_at`.
pub fn erase_payment<C: GenericClient>(
    client: &mut C,
    statements: &mut StatementCache,
    id: Uuid,
) -> Result<Option<Erased>, postgres::Error> {
    let lock = statements.get(client, LOCK_PAYMENT)?;
    let Some(row) = client.query_opt(&lock, &[&id])? else {
        return Ok(None);
    };
    let merchant_id: Uuid = row.get(0);
    let already_erased: bool = row.get(1);
    let erase = statements.get(client, ERASE_PAYMENT)?;
    let erased_at: DateTime<Utc> = client.query_one(&erase, &[&id])?.get(0);
    Ok(Some(Erased {
        id,
        merchant_id,
        erased_at,
        already_erased,
    }))
}

/// Returns the audit details of an erasure: which fields, never their values.
pub fn erase_details(erased: &Erased, selected_by: &str) -> serde_json::Value {
    json!({
        "fields": PERSONAL_FIELDS,
        "already_erased": erased.already_erased,
        "selected_by": selected_by,
    })
}

/// The payments that `ctrip erase` selects.
#[derive(Debug, Clone)]
pub enum EraseTarget {
    Payment(Uuid),
    /// Every payment with this reference, of one merchant when given.
    Reference {
        reference: String,
        merchant: Option<Uuid>,
    },
}

/// A failed erasure from the CLI. No message contains the reference itself, because the
/// reference is the personal value being erased.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("no payment with id {0}: check the id (erasing an erased payment succeeds)")]
    NotFound(Uuid),
    #[error(
        "the reference is used by payments of {0} merchants: pass --merchant ID to choose one"
    )]
    SeveralMerchants(usize),
    #[error(transparent)]
    Database(#[from] postgres::Error),
}

/// Erases the payments `target` selects, as the schema owner, in one transaction with one
/// audit row per payment. Returns what was erased; empty when a reference matches nothing
/// (it was erased already, or never used).
pub fn erase(client: &mut Client, target: &EraseTarget) -> Result<Vec<Erased>, EraseError> {
    let mut transaction = client.transaction()?;
    let (ids, selected_by): (Vec<Uuid>, &str) = match target {
        EraseTarget::Payment(id) => (vec![*id], "id"),
        EraseTarget::Reference {
            reference,
            merchant,
        } => {
            let rows = transaction.query(
                "SELECT id, merchant_id FROM ctrip.payments
                 WHERE reference = $1 AND ($2::uuid IS NULL OR merchant_id = $2)
                 ORDER BY created_at, id",
                &[reference, merchant],
            )?;
            let mut merchants: Vec<Uuid> = rows.iter().map(|row| row.get(1)).collect();
            merchants.sort();
            merchants.dedup();
            if merchants.len() > 1 {
                return Err(EraseError::SeveralMerchants(merchants.len()));
            }
            (rows.iter().map(|row| row.get(0)).collect(), "reference")
        }
    };
    let mut statements = StatementCache::default();
    let mut erased = Vec::new();
    for id in ids {
        let Some(done) = erase_payment(&mut transaction, &mut statements, id)? else {
            return Err(EraseError::NotFound(id));
        };
        let event = Event::new(ActorType::Cli, "payment.erased", Outcome::Success)
            .actor(audit::cli_user())
            .merchant(done.merchant_id)
            .object("payment", id.to_string())
            .details(erase_details(&done, selected_by));
        audit::record(&mut transaction, &event)?;
        erased.push(done);
    }
    transaction.commit()?;
    Ok(erased)
}

/// The actor of a retention run, for its audit rows.
#[derive(Debug, Clone)]
pub struct Actor {
    pub actor_type: ActorType,
    pub id: String,
}

/// The changes of a retention run (for a dry run, the changes it would make).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub dry_run: bool,
    /// Payments whose final state is older than this had their personal fields erased.
    pub payments_cutoff: Option<DateTime<Utc>>,
    pub payments_erased: Vec<Uuid>,
    /// Audit events that occurred before this were pruned.
    pub audit_cutoff: Option<DateTime<Utc>>,
    pub audit_pruned: Option<PrunedRange>,
}

/// Audit rows `first_id` to `last_id`, deleted by a prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedRange {
    pub first_id: i64,
    pub last_id: i64,
    pub rows: i64,
}

/// The reason a retention run did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// Another session holds the retention lock.
    Busy,
    /// The last run is more recent than `retention.interval_s`.
    NotDue,
}

/// Payments with personal data whose final state is older than $1. A pending payment past
/// expires_at is expired (the API reports it so), so its final time is expires_at.
const SELECT_EXPIRED_PERSONAL: &str = "
    SELECT id FROM ctrip.payments
    WHERE (reference IS NOT NULL OR metadata <> '{}'::jsonb)
      AND CASE WHEN status IN ('paid', 'settled', 'expired', 'failed') THEN final_at
               WHEN status = 'pending' AND expires_at <= now() THEN expires_at
          END < $1
    ORDER BY id";

/// Runs retention once. With `only_when_due`, skips when the last run is more recent than
/// `retention.interval_s`. With `dry_run`, reports without changing anything (the run itself
/// is still audited).
pub fn run(
    config: &Config,
    client: &mut Client,
    actor: &Actor,
    dry_run: bool,
    only_when_due: bool,
) -> anyhow::Result<Result<Report, Skipped>> {
    let mut transaction = client.transaction()?;
    transaction.batch_execute("SET LOCAL statement_timeout = '30min'")?;
    let locked: bool = transaction
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY])?
        .get(0);
    if !locked {
        return Ok(Err(Skipped::Busy));
    }
    if only_when_due {
        let due: bool = transaction
            .query_one(
                "SELECT last_run_at IS NULL OR last_run_at <= now() - make_interval(secs => $1)
                 FROM ctrip.retention_state",
                &[&(config.retention.interval_s as f64)],
            )?
            .get(0);
        if !due {
            return Ok(Err(Skipped::NotDue));
        }
    }

    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    if let Some(days) = config.retention.payment_personal_data_days {
        erase_expired_payments(&mut transaction, &mut report, days, dry_run)?;
    }
    if let Some(months) = config.retention.audit_events_months {
        prune_audit_events(
            config,
            &mut transaction,
            &mut report,
            actor,
            months,
            dry_run,
        )?;
    }

    let event = Event::new(actor.actor_type, "retention.run", Outcome::Success)
        .actor(actor.id.clone())
        .details(json!({
            "dry_run": dry_run,
            "payments_cutoff": report.payments_cutoff.map(|t| t.to_rfc3339()),
            "payments_erased": report.payments_erased.len(),
            "audit_cutoff": report.audit_cutoff.map(|t| t.to_rfc3339()),
            "audit_pruned_first_id": report.audit_pruned.as_ref().map(|r| r.first_id),
            "audit_pruned_last_id": report.audit_pruned.as_ref().map(|r| r.last_id),
            "audit_pruned_rows": report.audit_pruned.as_ref().map_or(0, |r| r.rows),
        }));
    audit::record(&mut transaction, &event)?;
    if !dry_run {
        transaction.execute("UPDATE ctrip.retention_state SET last_run_at = now()", &[])?;
    }
    transaction.commit()?;
    Ok(Ok(report))
}

fn erase_expired_payments(
    transaction: &mut Transaction<'_>,
    report: &mut Report,
    days: u32,
    dry_run: bool,
) -> anyhow::Result<()> {
    let cutoff: DateTime<Utc> = transaction
        .query_one(
            "SELECT now() - make_interval(days => $1)",
            &[&(days as i32)],
        )?
        .get(0);
    report.payments_cutoff = Some(cutoff);
    let rows = if dry_run {
        transaction.query(SELECT_EXPIRED_PERSONAL, &[&cutoff])?
    } else {
        let sql = format!(
            "UPDATE ctrip.payments SET reference = NULL, metadata = '{{}}'
             WHERE id IN ({SELECT_EXPIRED_PERSONAL}) RETURNING id"
        );
        transaction.query(&sql, &[&cutoff])?
    };
    report.payments_erased = rows.iter().map(|row| row.get(0)).collect();
    report.payments_erased.sort();
    Ok(())
}

fn prune_audit_events(
    config: &Config,
    transaction: &mut Transaction<'_>,
    report: &mut Report,
    actor: &Actor,
    months: u32,
    dry_run: bool,
) -> anyhow::Result<()> {
    // Only a prefix of the log is pruned, ending before the first event at or after the
    // cutoff, so no younger event goes even when ids and times are not in the same order.
    // Pending rows (negative ids, not yet chained) are left for a later run.
    let row = transaction.query_one(
        "WITH bounds AS (SELECT now() - make_interval(months => $1) AS cutoff)
         SELECT bounds.cutoff,
                (SELECT min(id) FROM ctrip.audit_events WHERE id > 0),
                coalesce((SELECT min(id) - 1 FROM ctrip.audit_events
                          WHERE id > 0 AND occurred_at >= bounds.cutoff),
                         (SELECT max(id) FROM ctrip.audit_events))
         FROM bounds",
        &[&(months as i32)],
    )?;
    let cutoff: DateTime<Utc> = row.get(0);
    report.audit_cutoff = Some(cutoff);
    let (Some(first_id), Some(last_id)) =
        (row.get::<_, Option<i64>>(1), row.get::<_, Option<i64>>(2))
    else {
        return Ok(());
    };
    if last_id < first_id {
        return Ok(());
    }
    let rows: i64 = transaction
        .query_one(
            "SELECT count(*) FROM ctrip.audit_events WHERE id BETWEEN $1 AND $2",
            &[&first_id, &last_id],
        )?
        .get(0);
    report.audit_pruned = Some(PrunedRange {
        first_id,
        last_id,
        rows,
    });
    if dry_run {
        return Ok(());
    }

    let (key_path, file) = audit_files(config)?;
    let key = checkpoint::load_key(&key_path)?;
    let hash: Vec<u8> = transaction
        .query_one(
            "SELECT hash FROM ctrip.audit_events WHERE id = $1",
            &[&last_id],
        )?
        .get(0);
    let (point, signature) = checkpoint::write_for(&key, &file, last_id, &hash)
        .context("cannot write the checkpoint that must precede an audit prune")?;
    let deleted: i64 = transaction
        .query_one(
            "SELECT ctrip.audit_prune($1, $2, $3, $4, $5, $6, $7)",
            &[
                &last_id,
                &hash,
                &cutoff,
                &point.at,
                &signature.as_slice(),
                &actor.actor_type.as_str(),
                &actor.id,
            ],
        )?
        .get(0);
    if let Some(range) = report.audit_pruned.as_mut() {
        range.rows = deleted;
    }
    Ok(())
}

fn audit_files(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    match (&config.audit.key_file, &config.audit.checkpoint_file) {
        (Some(key), Some(file)) => Ok((key.clone(), file.clone())),
        _ => anyhow::bail!(
            "pruning audit events needs audit.key_file and audit.checkpoint_file, to sign a \
             checkpoint first"
        ),
    }
}

/// The retention job of `ctrip serve`: checks at start and then every
/// `min(retention.interval_s, 3600)` seconds whether a run is due, and runs it. It runs as
/// the migration login, so only servers with `server.migrate_on_start` start it.
pub struct Scheduler {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Scheduler {
    /// Starts the job when any retention period is configured.
    pub fn start(config: &Config, tls: Arc<SharedTls>) -> anyhow::Result<Option<Scheduler>> {
        let retention = &config.retention;
        if retention.payment_personal_data_days.is_none() && retention.audit_events_months.is_none()
        {
            return Ok(None);
        }
        if !config.server.migrate_on_start {
            log::warn!(
                "retention periods are set but server.migrate_on_start is false, so this \
                 server has no migration login and does not run retention: run `ctrip \
                 retention run` daily with the migration login"
            );
            return Ok(None);
        }
        if retention.audit_events_months.is_some() {
            // Fail at start-up, not at the first prune, when the audit key is unusable.
            let (key_path, _) = audit_files(config)?;
            checkpoint::load_key(&key_path)?;
        }
        let params = ConnectParams::migration(config)?;
        let check_every = Duration::from_secs(retention.interval_s.min(3600));
        log::info!(
            "retention job started: interval_s={} check_every_s={} \
             payment_personal_data_days={:?} audit_events_months={:?}",
            retention.interval_s,
            check_every.as_secs(),
            retention.payment_personal_data_days,
            retention.audit_events_months
        );
        let config = config.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("retention".to_owned())
            .spawn(move || loop {
                run_scheduled(&config, &tls, &params);
                match stopped.recv_timeout(check_every) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            })
            .context("cannot start the retention thread")?;
        Ok(Some(Scheduler { stop, thread }))
    }

    /// Ends the job, waiting for a run in progress.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn run_scheduled(config: &Config, tls: &SharedTls, params: &ConnectParams) {
    let actor = Actor {
        actor_type: ActorType::System,
        id: format!("ctrip serve {}", env!("CARGO_PKG_VERSION")),
    };
    let result = tls
        .connect(params)
        .map_err(anyhow::Error::from)
        .and_then(|mut client| run(config, &mut client, &actor, false, true));
    match result {
        Ok(Ok(report)) => log::info!("retention run: {}", summary(&report)),
        Ok(Err(Skipped::NotDue)) => log::debug!("retention run not due yet"),
        Ok(Err(Skipped::Busy)) => {
            log::info!("retention run skipped: another process holds the retention lock")
        }
        Err(err) => log::error!("retention run failed, will retry at the next check: {err:#}"),
    }
}

/// Returns one line describing a run, with counts and ids but no personal value.
pub fn summary(report: &Report) -> String {
    let verb = if report.dry_run {
        "would erase"
    } else {
        "erased"
    };
    let payments = match report.payments_cutoff {
        Some(cutoff) => format!(
            "{verb} personal fields of {} payments final before {}",
            report.payments_erased.len(),
            cutoff.to_rfc3339()
        ),
        None => {
            "payment personal data kept (retention.payment_personal_data_days unset)".to_owned()
        }
    };
    let prune_verb = if report.dry_run {
        "would prune"
    } else {
        "pruned"
    };
    let audit = match (&report.audit_cutoff, &report.audit_pruned) {
        (None, _) => "audit events kept (retention.audit_events_months unset)".to_owned(),
        (Some(cutoff), None) => format!(
            "no audit events older than {} to prune",
            cutoff.to_rfc3339()
        ),
        (Some(cutoff), Some(range)) => format!(
            "{prune_verb} {} audit events (rows {} to {}) older than {}",
            range.rows,
            range.first_id,
            range.last_id,
            cutoff.to_rfc3339()
        ),
    };
    format!("{payments}; {audit}")
}
