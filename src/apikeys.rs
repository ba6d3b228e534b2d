//! API keys: creation, listing, revocation and request authentication.
//!
//! A key reads `ctrip_<8 base58 characters>_<secret>`. The first part (through the eight
//! characters) is the prefix: stored in the clear, safe to log, and used to find the key's
//! row. Only the SHA-256 of the whole key is stored, and it is compared in constant time.

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::db::pool::StatementCache;
use crate::secret::Secret;

const SCHEME: &str = "ctrip_";
const PREFIX_LEN: usize = SCHEME.len() + 8;

/// A stored key, without its secret part.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
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
    #[error(transparent)]
    Database(#[from] postgres::Error),
}

/// Creates a key named `name` and returns it with its full text, which is shown once.
pub fn create(
    client: &mut impl GenericClient,
    name: &str,
) -> Result<(ApiKey, Secret), ApiKeyError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiKeyError::InvalidName(name.to_owned()));
    }
    let (prefix, key) = generate();
    let id = Uuid::now_v7();
    let hash = Sha256::digest(key.expose().as_bytes()).to_vec();
    let row = client.query_one(
        "INSERT INTO ctrip.api_keys (id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)
         RETURNING created_at",
        &[&id, &name, &prefix, &hash],
    )?;
    let stored = ApiKey {
        id,
        name: name.to_owned(),
        prefix,
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
        "SELECT id, name, prefix, created_at, revoked_at, last_used_at
         FROM ctrip.api_keys ORDER BY created_at DESC, id DESC",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|row| ApiKey {
            id: row.get(0),
            name: row.get(1),
            prefix: row.get(2),
            created_at: row.get(3),
            revoked_at: row.get(4),
            last_used_at: row.get(5),
        })
        .collect())
}

/// Revokes the key `id`; requests with it fail from then on.
pub fn revoke(client: &mut impl GenericClient, id: Uuid) -> Result<(), ApiKeyError> {
    let row = client.query_opt(
        "SELECT revoked_at IS NOT NULL FROM ctrip.api_keys WHERE id = $1 FOR UPDATE",
        &[&id],
    )?;
    match row.map(|row| row.get::<_, bool>(0)) {
        None => Err(ApiKeyError::NotFound(id)),
        Some(true) => Err(ApiKeyError::AlreadyRevoked(id)),
        Some(false) => {
            client.execute(
                "UPDATE ctrip.api_keys SET revoked_at = now() WHERE id = $1",
                &[&id],
            )?;
            Ok(())
        }
    }
}

/// The key a request was authenticated with.
#[derive(Debug, Clone)]
pub struct AuthenticatedKey {
    pub id: Uuid,
    pub prefix: String,
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
            AuthFailure::Missing => {
                "missing API key: send the header Authorization: Bearer <key>"
            }
            AuthFailure::Malformed => {
                "malformed API key: keys look like ctrip_XXXXXXXX_..., as printed by `ctrip api-key create`"
            }
            AuthFailure::Unknown { .. } => "unknown API key: check the key or create one with `ctrip api-key create`",
            AuthFailure::Revoked { .. } => "revoked API key: create a new one with `ctrip api-key create`",
        }
    }
}

const FIND_KEY: &str = "
    SELECT id, key_hash, revoked_at IS NOT NULL,
           last_used_at IS NULL OR last_used_at < now() - interval '60 seconds'
    FROM ctrip.api_keys WHERE prefix = $1";

const TOUCH_KEY: &str = "UPDATE ctrip.api_keys SET last_used_at = now() WHERE id = $1";

/// Checks the value of an `Authorization` header. `last_used_at` is refreshed at most once a
/// minute per key, so reads do not turn into writes on every request.
pub fn authenticate<C: GenericClient>(
    client: &mut C,
    statements: &mut StatementCache,
    header: Option<&str>,
) -> Result<Result<AuthenticatedKey, AuthFailure>, postgres::Error> {
    let Some(header) = header else {
        return Ok(Err(AuthFailure::Missing));
    };
    let Some(key) = header.strip_prefix("Bearer ").map(str::trim) else {
        return Ok(Err(AuthFailure::Malformed));
    };
    if key.len() <= PREFIX_LEN || !key.starts_with(SCHEME) || !key.is_char_boundary(PREFIX_LEN) {
        return Ok(Err(AuthFailure::Malformed));
    }
    let prefix = &key[..PREFIX_LEN];

    let find = statements.get(client, FIND_KEY)?;
    let Some(row) = client.query_opt(&find, &[&prefix])? else {
        return Ok(Err(AuthFailure::Unknown {
            prefix: prefix.to_owned(),
        }));
    };
    let stored_hash: Vec<u8> = row.get(1);
    let presented_hash = Sha256::digest(key.as_bytes());
    if !bool::from(presented_hash.as_slice().ct_eq(&stored_hash)) {
        return Ok(Err(AuthFailure::Unknown {
            prefix: prefix.to_owned(),
        }));
    }
    if row.get::<_, bool>(2) {
        return Ok(Err(AuthFailure::Revoked {
            prefix: prefix.to_owned(),
        }));
    }
    let id: Uuid = row.get(0);
    if row.get::<_, bool>(3) {
        let touch = statements.get(client, TOUCH_KEY)?;
        client.execute(&touch, &[&id])?;
    }
    Ok(Ok(AuthenticatedKey {
        id,
        prefix: prefix.to_owned(),
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
