//! The tamper-evident audit log: writing events, verifying the hash chain, and checkpoints.
//!
//! Events are inserted in the same transaction as the change they record, as pending rows.
//! [`chain_pending`], which `ctrip serve` runs every 100 ms, then numbers the committed ones
//! without gaps and chains each row's hash to the previous one. [`verify::verify`]
//! recomputes the chain here, from the raw fields, and
//! [`checkpoint`] signs the newest id and hash with a key kept outside the database, so a cut
//! tail, which the chain alone cannot show, is detected too.

pub mod checkpoint;
pub mod verify;

use postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use crate::db::pool::StatementCache;

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorType {
    ApiKey,
    Cli,
    System,
}

impl ActorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::ApiKey => "api_key",
            ActorType::Cli => "cli",
            ActorType::System => "system",
        }
    }
}

/// The result of the recorded act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Denied,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One event to record. `details` must hold neither secrets nor personal data.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor_type: ActorType,
    pub actor_id: Option<String>,
    pub merchant_id: Option<Uuid>,
    pub action: &'static str,
    pub object_type: Option<&'static str>,
    pub object_id: Option<String>,
    pub outcome: Outcome,
    pub source_address: Option<String>,
    pub request_id: Option<String>,
    pub details: Value,
}

impl Event {
    /// Starts an event with the required fields; the rest default to none.
    pub fn new(actor_type: ActorType, action: &'static str, outcome: Outcome) -> Event {
        Event {
            actor_type,
            actor_id: None,
            merchant_id: None,
            action,
            object_type: None,
            object_id: None,
            outcome,
            source_address: None,
            request_id: None,
            details: Value::Object(Default::default()),
        }
    }

    pub fn actor(mut self, id: impl Into<String>) -> Event {
        self.actor_id = Some(id.into());
        self
    }

    pub fn merchant(mut self, merchant_id: Uuid) -> Event {
        self.merchant_id = Some(merchant_id);
        self
    }

    pub fn object(mut self, object_type: &'static str, id: impl Into<String>) -> Event {
        self.object_type = Some(object_type);
        self.object_id = Some(id.into());
        self
    }

    pub fn source(mut self, address: impl Into<String>) -> Event {
        self.source_address = Some(address.into());
        self
    }

    pub fn request(mut self, request_id: impl Into<String>) -> Event {
        self.request_id = Some(request_id.into());
        self
    }

    pub fn details(mut self, details: Value) -> Event {
        self.details = details;
        self
    }
}

const INSERT_EVENT: &str = "
    INSERT INTO ctrip.audit_events
        (actor_type, actor_id, merchant_id, action, object_type, object_id, outcome,
         source_address, request_id, details)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Inserts `event` with a statement prepared once per session.
pub fn record_cached<C: GenericClient>(
    client: &mut C,
    statements: &mut StatementCache,
    event: &Event,
) -> Result<(), postgres::Error> {
    let statement = statements.get(client, INSERT_EVENT)?;
    insert(client, &statement, event)
}

/// Inserts `event`; for the CLI and other cold paths.
pub fn record(client: &mut impl GenericClient, event: &Event) -> Result<(), postgres::Error> {
    insert(client, INSERT_EVENT, event)
}

fn insert<C: GenericClient, T: postgres::ToStatement + ?Sized>(
    client: &mut C,
    statement: &T,
    event: &Event,
) -> Result<(), postgres::Error> {
    let actor_type = event.actor_type.as_str();
    let outcome = event.outcome.as_str();
    client.execute(
        statement,
        &[
            &actor_type,
            &event.actor_id,
            &event.merchant_id,
            &event.action,
            &event.object_type,
            &event.object_id,
            &outcome,
            &event.source_address,
            &event.request_id,
            &event.details,
        ],
    )?;
    Ok(())
}

/// Rows one call of `ctrip.audit_chain_pending` chains at most, so one lock hold stays short.
const CHAIN_BATCH: i32 = 5_000;

/// Numbers and hashes every committed audit row that is still pending, and returns how many
/// it chained. Rows are inserted pending and chained later, in batches (see
/// sql/0006_audit_chain_in_background.sql). With `wait`, waits for another session that is
/// chaining and then chains what is left. Without it, returns 0 at once while one is.
pub fn chain_pending(client: &mut impl GenericClient, wait: bool) -> Result<u64, postgres::Error> {
    let mut total = 0;
    loop {
        let chained: i32 = client
            .query_one(
                "SELECT ctrip.audit_chain_pending($1, $2)",
                &[&CHAIN_BATCH, &wait],
            )?
            .get(0);
        total += chained as u64;
        if chained < CHAIN_BATCH {
            return Ok(total);
        }
    }
}

/// Returns the operating-system user running the CLI, for `actor_id`.
pub fn cli_user() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {}", process_uid()))
}

fn process_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}
