//! API keys: creation, listing, revocation and request authentication.
//!
//! A key reads `ctrip_<8 base58 characters>_<secret>`. The first part (through the eight
//! characters) is the prefix: stored in the clear, safe to log, and used to find the key's
//! row. Only the SHA-256 of the whole key is stored; `ctrip.begin_request` compares it in the
//! database, which also sets the request's merchant context.

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::{self, ActorType, Event, Outcome};
use crate::db::pool::StatementCache;
use crate::secret::Secret;
use crate::wallet::Family;

const SCHEME: &str = "ctrip_";
const PREFIX_LEN: usize = SCHEME.len() + 8;

/// Scopes a key can hold, in the order they are listed.
pub const SCOPES: &[&str] = &["payments:read", "payments:write", "payments:erase"];

/// A stored key, without its secret part.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A failed API key operation.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("invalid key name {0:?}: use 1 to 100 printable characters")]
    InvalidName(String),
    #[error("no API key with id {0}: run `ctrip api-key list` to see the ids")]
    NotFound(Uuid),
    #[error("API key {0} is already revoked")]
    AlreadyRevoked(Uuid),
    #[error("unknown scope {0:?}: expected a comma-separated list of {scopes}", scopes = SCOPES.join(", "))]
    UnknownScope(String),
    #[error("no merchant with id {0}: run `ctrip merchant list` to see the ids")]
    MerchantNotFound(Uuid),
    #[error(transparent)]
    Database(#[from] postgres::Error),
}

/// Parses `payments:read,payments:write` into a de-duplicated list of known scopes.
pub fn parse_scopes(text: &str) -> Result<Vec<String>, ApiKeyError> {
    let mut scopes = Vec::new();
    for scope in text
        .split(',')
        .map(str::trim)
        .filter(|scope| !scope.is_empty())
    {
        if !SCOPES.contains(&scope) {
            return Err(ApiKeyError::UnknownScope(scope.to_owned()));
        }
        if !scopes.iter().any(|known| known == scope) {
            scopes.push(scope.to_owned());
        }
    }
    if scopes.is_empty() {
        return Err(ApiKeyError::UnknownScope(text.to_owned()));
    }
    scopes.sort_by_key(|scope| SCOPES.iter().position(|known| known == scope));
    Ok(scopes)
}

/// Creates a key for `merchant_id` and returns it with its full text, which is shown once.
/// Audited as `api_key.created`.
pub fn create(
    client: &mut impl GenericClient,
    merchant_id: Uuid,
    name: &str,
    scopes: &[String],
) -> Result<(ApiKey, Secret), ApiKeyError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiKeyError::InvalidName(name.to_owned()));
    }
    let mut transaction = client.transaction()?;
    let merchant_exists = transaction
        .query_opt(
            "SELECT 1 FROM ctrip.merchants WHERE id = $1",
            &[&merchant_id],
        )?
        .is_some();
    if !merchant_exists {
        return Err(ApiKeyError::MerchantNotFound(merchant_id));
    }
    let (prefix, key) = generate();
    let id = Uuid::now_v7();
    let hash = Sha256::digest(key.expose().as_bytes()).to_vec();
    let row = transaction.query_one(
        "INSERT INTO ctrip.api_keys (id, merchant_id, name, prefix, key_hash, scopes)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING created_at",
        &[&id, &merchant_id, &name, &prefix, &hash, &scopes],
    )?;
    let event = Event::new(ActorType::Cli, "api_key.created", Outcome::Success)
        .actor(audit::cli_user())
        .merchant(merchant_id)
        .object("api_key", id.to_string())
        .details(json!({"prefix": prefix, "name": name, "scopes": scopes}));
    audit::record(&mut transaction, &event)?;
    transaction.commit()?;

    let stored = ApiKey {
        id,
        merchant_id,
        name: name.to_owned(),
        prefix,
        scopes: scopes.to_vec(),
        created_at: row.get(0),
        revoked_at: None,
        last_used_at: None,
    };
    Ok((stored, key))
}

fn generate() -> (String, Secret) {
    let mut rng = rand::rng();
    let mut prefix_bytes = [0u8; 8];
    let mut secret_bytes = [0u8; 32];
    rng.fill_bytes(&mut prefix_bytes);
    rng.fill_bytes(&mut secret_bytes);
    let mut prefix_id = bs58::encode(prefix_bytes).into_string();
    prefix_id.truncate(8);
    let prefix = format!("{SCHEME}{prefix_id}");
    let key = format!("{prefix}_{}", bs58::encode(secret_bytes).into_string());
    (prefix, Secret::new(key))
}

/// Lists every key, newest first, revoked ones included.
pub fn list(client: &mut impl GenericClient) -> Result<Vec<ApiKey>, ApiKeyError> {
    let rows = client.query(
        "SELECT id, merchant_id, name, prefix, scopes, created_at, revoked_at, last_used_at
         FROM ctrip.api_keys ORDER BY created_at DESC, id DESC",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|row| ApiKey {
            id: row.get(0),
            merchant_id: row.get(1),
            name: row.get(2),
            prefix: row.get(3),
            scopes: row.get(4),
            created_at: row.get(5),
            revoked_at: row.get(6),
            last_used_at: row.get(7),
        })
        .collect())
}

/// Revokes the key `id`; requests with it fail from then on. Audited as `api_key.revoked`.
pub fn revoke(client: &mut impl GenericClient, id: Uuid) -> Result<(), ApiKeyError> {
    let mut transaction = client.transaction()?;
    let row = transaction.query_opt(
        "SELECT revoked_at IS NOT NULL, merchant_id, prefix FROM ctrip.api_keys
         WHERE id = $1 FOR UPDATE",
        &[&id],
    )?;
    let Some(row) = row else {
        return Err(ApiKeyError::NotFound(id));
    };
    if row.get::<_, bool>(0) {
        return Err(ApiKeyError::AlreadyRevoked(id));
    }
    transaction.execute(
        "UPDATE ctrip.api_keys SET revoked_at = now() WHERE id = $1",
        &[&id],
    )?;
    let event = Event::new(ActorType::Cli, "api_key.revoked", Outcome::Success)
        .actor(audit::cli_user())
        .merchant(row.get(1))
        .object("api_key", id.to_string())
        .details(json!({"prefix": row.get::<_, String>(2)}));
    audit::record(&mut transaction, &event)?;
    transaction.commit()?;
    Ok(())
}

/// The key a request was authenticated with, and its merchant.
#[derive(Debug, Clone)]
pub struct AuthenticatedKey {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub prefix: String,
    pub scopes: Vec<String>,
    /// The derivation index taken by the same statement, when [`Also::NextIndex`] requested
    /// one and the key has its scope.
    pub next_index: Option<i32>,
}

/// Extra work for the statement that checks the key.
#[derive(Debug, Clone, Copy)]
pub enum Also {
    Nothing,
    /// Takes the next derivation index of `family` when the key has `scope`. A create needs
    /// one right after the check, and taking it here saves a round trip.
    NextIndex {
        family: Family,
        scope: &'static str,
    },
}

impl AuthenticatedKey {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|held| held == scope)
    }
}

/// The reason a presented key was not accepted, with only what is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown { prefix: String },
    Revoked { prefix: String },
}

impl AuthFailure {
    /// Returns the key prefix for the log, or `-` when the key had none.
    pub fn prefix(&self) -> &str {
        match self {
            AuthFailure::Unknown { prefix } | AuthFailure::Revoked { prefix } => prefix,
            _ => "-",
        }
    }

    /// Returns the client-facing reason.
    pub fn message(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing API key: send the header Authorization: Bearer <key>",
            AuthFailure::Malformed => {
                "malformed API key: keys look like ctrip_XXXXXXXX_..., as printed by `ctrip \
                 api-key create`"
            }
            AuthFailure::Unknown { .. } => {
                "unknown API key: check the key or create one with `ctrip api-key create`"
            }
            AuthFailure::Revoked { .. } => {
                "revoked API key: create a new one with `ctrip api-key create`"
            }
        }
    }
}

/// The key check, and its variants that also take an index from a family's sequence when
/// the key is unrevoked and has the scope `$3`.
macro_rules! begin_request {
    ($index:expr) => {
        concat!(
            "SELECT key_id, merchant_id, scopes, revoked, stale, ",
            $index,
            " FROM ctrip.begin_request($1, $2)"
        )
    };
}
const BEGIN_REQUEST: &str = begin_request!("NULL::integer");
const BEGIN_REQUEST_EVM_INDEX: &str = begin_request!(
    "CASE WHEN NOT revoked AND $3 = ANY (scopes) \
     THEN nextval('ctrip.deposit_index_evm')::integer END"
);
const BEGIN_REQUEST_SOLANA_INDEX: &str = begin_request!(
    "CASE WHEN NOT revoked AND $3 = ANY (scopes) \
     THEN nextval('ctrip.deposit_index_solana')::integer END"
);

const TOUCH_KEY: &str = "UPDATE ctrip.api_keys SET last_used_at = now() WHERE id = $1";

/// Checks the value of an `Authorization` header inside the request's transaction.
///
/// On success the database has recorded the key's merchant as this transaction's context
/// (`ctrip.begin_request`), so row-level security shows only that merchant's rows until the
/// transaction ends. `last_used_at` is refreshed when it is older than a minute, so reads do
/// not turn into a write on every request.
pub fn authenticate<C: GenericClient>(
    client: &mut C,
    statements: &mut StatementCache,
    header: Option<&str>,
    also: Also,
) -> Result<Result<AuthenticatedKey, AuthFailure>, postgres::Error> {
    let Some(header) = header else {
        return Ok(Err(AuthFailure::Missing));
    };
    // The scheme name is case-insensitive (RFC 9110, section 11.1).
    let scheme_ok = header
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer "));
    let Some(key) = header.get(7..).filter(|_| scheme_ok).map(str::trim) else {
        return Ok(Err(AuthFailure::Malformed));
    };
    if key.len() <= PREFIX_LEN || !key.starts_with(SCHEME) || !key.is_char_boundary(PREFIX_LEN) {
        return Ok(Err(AuthFailure::Malformed));
    }
    let prefix = &key[..PREFIX_LEN];
    let presented_hash = Sha256::digest(key.as_bytes()).to_vec();

    let row = match also {
        Also::Nothing => {
            let begin = statements.get(client, BEGIN_REQUEST)?;
            client.query_opt(&begin, &[&prefix, &presented_hash])?
        }
        Also::NextIndex { family, scope } => {
            let sql = match family {
                Family::Evm => BEGIN_REQUEST_EVM_INDEX,
                Family::Solana => BEGIN_REQUEST_SOLANA_INDEX,
            };
            let begin = statements.get(client, sql)?;
            client.query_opt(&begin, &[&prefix, &presented_hash, &scope])?
        }
    };
    let Some(row) = row else {
        return Ok(Err(AuthFailure::Unknown {
            prefix: prefix.to_owned(),
        }));
    };
    if row.get::<_, bool>(3) {
        return Ok(Err(AuthFailure::Revoked {
            prefix: prefix.to_owned(),
        }));
    }
    let id: Uuid = row.get(0);
    if row.get::<_, bool>(4) {
        let touch = statements.get(client, TOUCH_KEY)?;
        client.execute(&touch, &[&id])?;
    }
    Ok(Ok(AuthenticatedKey {
        id,
        merchant_id: row.get(1),
        prefix: prefix.to_owned(),
        scopes: row.get(2),
        next_index: row.get(5),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_has_prefix_and_secret() {
        let (prefix, key) = generate();

        assert_eq!(prefix.len(), PREFIX_LEN);
        assert!(key.expose().starts_with(&format!("{prefix}_")));
        assert!(key.expose().len() > PREFIX_LEN + 40);
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(generate().1.expose(), generate().1.expose());
    }
}
