//! The backup file header: what it records and its byte layout.
//!
//! A backup file is, with every integer big-endian:
//!
//! ```text
//! magic "CTRIPBAK" | version u16 | body length u32 | body (JSON, HeaderBody)
//! | key envelope (key id 16, wrap nonce 12, wrapped data key 48) | SHA-256 of all the above
//! | records (see `stream`)
//! ```
//!
//! The digest of everything up to the end of the body is the associated data of every chunk,
//! so the body cannot change without every chunk failing. The key envelope is outside that
//! digest, so `ctrip backup rekey` can replace it without re-encrypting the chunks. The
//! trailing SHA-256 only tells accidental damage to the header apart from a wrong key.

use std::io::Read;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::key::{ENVELOPE_LEN, KEY_ID_LEN};
use super::BackupError;

pub const MAGIC: &[u8; 8] = b"CTRIPBAK";
pub const FORMAT_VERSION: u16 = 1;
/// File name suffix of a complete backup.
pub const SUFFIX: &str = ".ctrip-backup";
/// Largest header body accepted when reading, in bytes; a manifest of a few hundred
/// tables fits many times over.
const MAX_BODY_LEN: u32 = 1024 * 1024;

/// One table or sequence of the database, as of the backup's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Schema-qualified name, such as `ctrip.payments`.
    pub name: String,
    /// `table` or `sequence`.
    pub kind: String,
    pub rows: u64,
    /// SHA-256, in hex, of the rows in `COPY` text format ordered by primary key (for a
    /// sequence: of its last value and is_called).
    pub sha256: String,
}

/// The authenticated description of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderBody {
    pub format_version: u16,
    pub backup_id: Uuid,
    pub created_at: DateTime<Utc>,
    /// The database the backup was taken from.
    pub database: String,
    /// `pg_control_system().system_identifier` of the source cluster, as decimal text.
    pub system_identifier: String,
    pub server_version: String,
    /// Highest migration applied in the source database.
    pub schema_version: i64,
    /// How the payload was made, such as `pg_dump (PostgreSQL) 15.10, custom format`.
    pub payload: String,
    /// Plaintext bytes per chunk (the last data chunk may be shorter).
    pub chunk_size: u32,
    pub manifest: Vec<ManifestEntry>,
}

/// A parsed header and the byte counts the reader needs.
#[derive(Debug, Clone)]
pub struct Header {
    pub body: HeaderBody,
    /// SHA-256 of magic, version, length and body: the associated data of every chunk.
    pub digest: [u8; 32],
    pub envelope: [u8; ENVELOPE_LEN],
    /// Bytes of the serialized body, kept so a rekey writes it back unchanged.
    pub body_bytes: Vec<u8>,
    /// Total header length in bytes, where the first record starts.
    pub len: u64,
}

impl Header {
    /// Returns the id of the key that wraps this backup's data key, in hex.
    pub fn key_id_hex(&self) -> String {
        hex::encode(&self.envelope[..KEY_ID_LEN])
    }
}

/// Serializes the part of the header covered by the chunk digest.
pub fn encode_prefix(body: &HeaderBody) -> Vec<u8> {
    let json = serde_json::to_vec(body).expect("a header body always serializes");
    prefix_from_body_bytes(&json)
}

fn prefix_from_body_bytes(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    out
}

/// Returns the chunk associated data for a serialized prefix.
pub fn digest_of(prefix: &[u8]) -> [u8; 32] {
    Sha256::digest(prefix).into()
}

/// Appends the envelope and the checksum to `prefix`, giving the whole header.
pub fn finish_header(prefix: &[u8], envelope: &[u8; ENVELOPE_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + ENVELOPE_LEN + 32);
    out.extend_from_slice(prefix);
    out.extend_from_slice(envelope);
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    out
}

/// Rebuilds the whole header of `header` with another envelope, for a rekey.
pub fn with_envelope(header: &Header, envelope: &[u8; ENVELOPE_LEN]) -> Vec<u8> {
    finish_header(&prefix_from_body_bytes(&header.body_bytes), envelope)
}

/// Reads and checks a header from the start of a file.
///
/// Fails with `NotABackup` on a wrong magic, `UnsupportedVersion`, `Truncated` when the file
/// ends inside the header, and `HeaderCorrupted` when the checksum does not match. The body
/// is not trusted until the caller unwraps the data key, which authenticates it.
pub fn read_header(input: &mut impl Read) -> Result<Header, BackupError> {
    let mut fixed = [0u8; 14];
    read_exact_or_truncated(input, &mut fixed, "the header")?;
    if &fixed[..8] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let version = u16::from_be_bytes([fixed[8], fixed[9]]);
    let body_len = u32::from_be_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]);
    if body_len > MAX_BODY_LEN {
        return Err(BackupError::HeaderCorrupted(format!(
            "the header body length {body_len} is above the limit of {MAX_BODY_LEN} bytes"
        )));
    }
    let mut rest = vec![0u8; body_len as usize + ENVELOPE_LEN + 32];
    read_exact_or_truncated(input, &mut rest, "the header")?;
    let body_end = body_len as usize;
    let envelope_end = body_end + ENVELOPE_LEN;

    let mut hasher = Sha256::new();
    hasher.update(fixed);
    hasher.update(&rest[..envelope_end]);
    if hasher.finalize().as_slice() != &rest[envelope_end..] {
        return Err(BackupError::HeaderCorrupted(
            "the header checksum does not match: the header was modified or damaged".to_owned(),
        ));
    }
    if version != FORMAT_VERSION {
        return Err(BackupError::UnsupportedVersion(version));
    }
    let body_bytes = rest[..body_end].to_vec();
    let body: HeaderBody = serde_json::from_slice(&body_bytes).map_err(|err| {
        BackupError::HeaderCorrupted(format!("the header body is not valid: {err}"))
    })?;
    let mut prefix = Vec::with_capacity(14 + body_end);
    prefix.extend_from_slice(&fixed);
    prefix.extend_from_slice(&body_bytes);
    let mut envelope = [0u8; ENVELOPE_LEN];
    envelope.copy_from_slice(&rest[body_end..envelope_end]);
    Ok(Header {
        body,
        digest: digest_of(&prefix),
        envelope,
        body_bytes,
        len: (14 + rest.len()) as u64,
    })
}

/// Fills `buffer`, mapping an early end of file to `Truncated`.
pub fn read_exact_or_truncated(
    input: &mut impl Read,
    buffer: &mut [u8],
    what: &str,
) -> Result<(), BackupError> {
    input.read_exact(buffer).map_err(|err| {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            BackupError::Truncated(format!("the file ends inside {what}"))
        } else {
            BackupError::Io(err)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> HeaderBody {
        HeaderBody {
            format_version: FORMAT_VERSION,
            backup_id: Uuid::nil(),
            created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            database: "ctrip".to_owned(),
            system_identifier: "1".to_owned(),
            server_version: "15.0".to_owned(),
            schema_version: 3,
            payload: "test".to_owned(),
            chunk_size: 65536,
            manifest: vec![],
        }
    }

    #[test]
    fn header_round_trip() {
        let prefix = encode_prefix(&body());
        let bytes = finish_header(&prefix, &[7u8; ENVELOPE_LEN]);

        let header = read_header(&mut bytes.as_slice()).unwrap();

        assert_eq!(header.body, body());
        assert_eq!(header.digest, digest_of(&prefix));
        assert_eq!(header.len, bytes.len() as u64);
        assert_eq!(header.envelope, [7u8; ENVELOPE_LEN]);
    }

    #[test]
    fn flipped_header_bit_is_corruption() {
        let mut bytes = finish_header(&encode_prefix(&body()), &[7u8; ENVELOPE_LEN]);
        bytes[20] ^= 0x01;

        let err = read_header(&mut bytes.as_slice()).unwrap_err();

        assert!(matches!(err, BackupError::HeaderCorrupted(_)), "{err}");
    }

    #[test]
    fn other_file_is_not_a_backup() {
        let err = read_header(&mut &b"PGDMP and some more bytes"[..]).unwrap_err();

        assert!(matches!(err, BackupError::NotABackup), "{err}");
    }
}
