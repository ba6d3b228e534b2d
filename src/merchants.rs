//! Merchants: the owners of payments, deposit addresses and API keys.
//!
//! Managed from the CLI as the schema owner; the server only ever sees the merchant of the
//! API key of the request, through row-level security.

use chrono::{DateTime, Utc};
use postgres::error::SqlState;
use postgres::GenericClient;
use serde_json::json;
use uuid::Uuid;

use crate::audit::{self, ActorType, Event, Outcome};

#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A failed merchant operation.
#[derive(Debug, thiserror::Error)]
pub enum MerchantError {
    #[error("invalid merchant name {0:?}: use 1 to 100 printable characters")]
    InvalidName(String),
    #[error("a merchant named {0:?} already exists: run `ctrip merchant list`")]
    Exists(String),
    #[error(transparent)]
    Database(#[from] postgres::Error),
}

/// Creates a merchant; audited as `merchant.created`.
pub fn create(client: &mut impl GenericClient, name: &str) -> Result<Merchant, MerchantError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(MerchantError::InvalidName(name.to_owned()));
    }
    let id = Uuid::now_v7();
    let mut transaction = client.transaction()?;
    let inserted = transaction.query_one(
        "INSERT INTO ctrip.merchants (id, name) VALUES ($1, $2) RETURNING created_at",
        &[&id, &name],
    );
    let row = match inserted {
        Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            return Err(MerchantError::Exists(name.to_owned()))
        }
        other => other?,
    };
    let event = Event::new(ActorType::Cli, "merchant.created", Outcome::Success)
        .actor(audit::cli_user())
        .merchant(id)
        .object("merchant", id.to_string())
        .details(json!({"name": name}));
    audit::record(&mut transaction, &event)?;
    transaction.commit()?;
    Ok(Merchant {
        id,
        name: name.to_owned(),
        created_at: row.get(0),
    })
}

/// Lists merchants, oldest first.
pub fn list(client: &mut impl GenericClient) -> Result<Vec<Merchant>, MerchantError> {
    let rows = client.query(
        "SELECT id, name, created_at FROM ctrip.merchants ORDER BY created_at, id",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|row| Merchant {
            id: row.get(0),
            name: row.get(1),
            created_at: row.get(2),
        })
        .collect())
}
