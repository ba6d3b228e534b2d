//! Signed checkpoints of the audit chain, appended to a file outside the database.
//!
//! A checkpoint line pins the newest row id to its hash, signed with an ed25519 key read from
//! a file of mode 0600. Someone who can rewrite the database can rebuild a consistent chain
//! or cut its tail, but cannot sign a new checkpoint, so `ctrip audit verify --checkpoints`
//! detects both. Line format:
//! `ctrip-audit-checkpoint v1 id=<id> hash=<hex> at=<RFC 3339> sig=<hex>`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use postgres::GenericClient;

use crate::keyfile;

/// A checkpoint problem: the key file, the checkpoint file, or a line in it.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::keyfile::KeyFileError),
    #[error("{path} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Database(#[from] postgres::Error),
}

/// A verified checkpoint: row `id` had `hash` at time `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: i64,
    pub hash: Vec<u8>,
    pub at: String,
}

const PREFIX: &str = "ctrip-audit-checkpoint v1";

const KEY_KIND: &str = "audit key";

fn signed_message(id: i64, hash_hex: &str, at: &str) -> String {
    format!("{PREFIX}\nid={id}\nhash={hash_hex}\nat={at}")
}

/// Creates a new audit key file with mode 0600; never overwrites one.
pub fn generate_key(path: &Path) -> Result<VerifyingKey, CheckpointError> {
    let seed = keyfile::create(path, KEY_KIND)?;
    Ok(SigningKey::from_bytes(&seed).verifying_key())
}

/// Reads the signing key, rejecting a file that group or others can read.
pub fn load_key(path: &Path) -> Result<SigningKey, CheckpointError> {
    let seed = keyfile::read(path, KEY_KIND)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Chains the pending rows, signs the chain head and appends it to `file`. Returns `None`
/// for an empty log.
pub fn write(
    client: &mut impl GenericClient,
    key: &SigningKey,
    file: &Path,
) -> Result<Option<Checkpoint>, CheckpointError> {
    super::chain_pending(client, true)?;
    let row = client.query_one("SELECT last_id, last_hash FROM ctrip.audit_chain_head", &[])?;
    let id: i64 = row.get(0);
    let hash: Vec<u8> = row.get(1);
    if id == 0 {
        return Ok(None);
    }
    let (checkpoint, _) = write_for(key, file, id, &hash)?;
    Ok(Some(checkpoint))
}

/// Signs row `id` with `hash` now and appends the line to `file`; returns the checkpoint and
/// its signature. An audit prune signs the last row it deletes this way before deleting.
pub fn write_for(
    key: &SigningKey,
    file: &Path,
    id: i64,
    hash: &[u8],
) -> Result<(Checkpoint, [u8; 64]), CheckpointError> {
    let at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let hash_hex = hex::encode(hash);
    let signature = key.sign(signed_message(id, &hash_hex, &at).as_bytes());
    let line = format!(
        "{PREFIX} id={id} hash={hash_hex} at={at} sig={}\n",
        hex::encode(signature.to_bytes())
    );

    let write_error = |source| CheckpointError::Write {
        path: file.to_owned(),
        source,
    };
    let mut output = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(file)
        .map_err(write_error)?;
    output
        .write_all(line.as_bytes())
        .and_then(|()| output.sync_data())
        .map_err(write_error)?;
    let checkpoint = Checkpoint {
        id,
        hash: hash.to_vec(),
        at,
    };
    Ok((checkpoint, signature.to_bytes()))
}

/// True when `signature` signs row `id` with `hash` at `at` under `key`.
pub fn signature_valid(
    key: &VerifyingKey,
    id: i64,
    hash: &[u8],
    at: &str,
    signature: &[u8],
) -> bool {
    let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    let message = signed_message(id, &hex::encode(hash), at);
    key.verify(message.as_bytes(), &Signature::from_bytes(&bytes))
        .is_ok()
}

/// Reads and verifies every checkpoint in `file` against `key`, oldest first.
pub fn read(file: &Path, key: &VerifyingKey) -> Result<Vec<Checkpoint>, CheckpointError> {
    let text = fs::read_to_string(file).map_err(|source| CheckpointError::Read {
        path: file.to_owned(),
        source,
    })?;
    let mut checkpoints = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
    {
        let line_error = |message: &str| CheckpointError::Line {
            path: file.to_owned(),
            line: index + 1,
            message: message.to_owned(),
        };
        checkpoints.push(parse_line(line, key).map_err(|message| line_error(&message))?);
    }
    Ok(checkpoints)
}

fn parse_line(line: &str, key: &VerifyingKey) -> Result<Checkpoint, String> {
    let rest = line
        .strip_prefix(PREFIX)
        .ok_or("not a ctrip-audit-checkpoint v1 line")?;
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .ok_or(format!("missing {name}="))
    };
    let id: i64 = field("id")?
        .parse()
        .map_err(|_| "id is not a number".to_owned())?;
    let hash_hex = field("hash")?;
    let at = field("at")?;
    let hash = hex::decode(hash_hex).map_err(|_| "hash is not hex".to_owned())?;
    let mut signature_bytes = [0u8; 64];
    hex::decode_to_slice(field("sig")?, &mut signature_bytes)
        .map_err(|_| "sig is not 128 hex digits".to_owned())?;
    let signature = Signature::from_bytes(&signature_bytes);
    key.verify(signed_message(id, hash_hex, at).as_bytes(), &signature)
        .map_err(|_| {
            "the signature does not verify with the audit key (forged or edited line)".to_owned()
        })?;
    DateTime::parse_from_rfc3339(at).map_err(|_| "at is not an RFC 3339 time".to_owned())?;
    Ok(Checkpoint {
        id,
        hash,
        at: at.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn line(id: i64, hash_hex: &str, at: &str, signer: &SigningKey) -> String {
        let signature = signer.sign(signed_message(id, hash_hex, at).as_bytes());
        format!(
            "{PREFIX} id={id} hash={hash_hex} at={at} sig={}",
            hex::encode(signature.to_bytes())
        )
    }

    #[test]
    fn signed_line_parses() {
        let hash_hex = "ab".repeat(32);
        let text = line(12, &hash_hex, "2026-12-04T12:00:00.000Z", &key());

        let checkpoint = parse_line(&text, &key().verifying_key()).unwrap();

        assert_eq!(checkpoint.id, 12);
        assert_eq!(checkpoint.hash, vec![0xab; 32]);
    }

    #[test]
    fn edited_line_rejected() {
        let hash_hex = "ab".repeat(32);
        let text =
            line(12, &hash_hex, "2026-12-04T12:00:00.000Z", &key()).replace("id=12", "id=11");

        let err = parse_line(&text, &key().verifying_key()).unwrap_err();

        assert!(err.contains("does not verify"), "{err}");
    }

    #[test]
    fn other_key_rejected() {
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let text = line(3, &"cd".repeat(32), "2026-12-04T12:00:00.000Z", &other);

        let err = parse_line(&text, &key().verifying_key()).unwrap_err();

        assert!(err.contains("does not verify"), "{err}");
    }
}
