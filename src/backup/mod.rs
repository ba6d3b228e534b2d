//! Encrypted backups: create, verify, restore, prune and rekey.
//!
//! `create` exports a snapshot, computes a manifest of per-table row counts and digests in
//! it, and streams `pg_dump --format=custom --snapshot=...` of that same snapshot through
//! chunked AES-256-GCM ([`stream`]) into a file that is renamed into place only when
//! complete. The header ([`format`]) records the backup and its manifest and wraps the
//! random data key under a key-encryption key read from a file ([`key`]). `restore` runs
//! `pg_restore` on the decrypted stream, never on a plaintext file, then compares the
//! restored database with the manifest.

pub mod create;
pub mod format;
pub mod key;
pub mod manifest;
pub mod pgtools;
pub mod prune;
pub mod rekey;
pub mod restore;
pub mod stream;
pub mod verify;

/// Why a backup file cannot be read or trusted. Each way a file can be damaged has its own
/// variant, so the operator learns what happened to it.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a ctrip backup: the file does not start with CTRIPBAK")]
    NotABackup,
    #[error("backup format version {0} is not supported by this ctrip (it reads version 1)")]
    UnsupportedVersion(u16),
    #[error("the backup header is corrupted: {0}")]
    HeaderCorrupted(String),
    #[error(
        "wrong key: the backup's data key is wrapped with key {file_key_id}, but the key file \
         has id {key_id}; pass the key that made the backup, or rekey the backup with it"
    )]
    WrongKey { file_key_id: String, key_id: String },
    #[error(
        "the backup header failed authentication under key {key_id}: the header or its wrapped \
         key was modified"
    )]
    HeaderAuthentication { key_id: String },
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    #[error(
        "chunk {chunk} failed authentication: its bytes were modified or damaged (counting \
         chunks from 1)"
    )]
    ChunkAuthentication { chunk: u64 },
    #[error(
        "chunk {chunk} is out of order: it was written as chunk {written_as}, so chunks were \
         reordered (counting chunks from 1)"
    )]
    ChunkReordered { chunk: u64, written_as: u64 },
    #[error("the backup has data after its end record: bytes were appended")]
    TrailingData,
    #[error("the backup authenticated but its payload is not a pg_dump archive: {0}")]
    Payload(String),
    #[error("cannot read the backup: {0}")]
    Io(#[from] std::io::Error),
}

impl BackupError {
    /// Returns a short stable name for the audit log and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            BackupError::NotABackup => "not_a_backup",
            BackupError::UnsupportedVersion(_) => "unsupported_version",
            BackupError::HeaderCorrupted(_) => "header_corrupted",
            BackupError::WrongKey { .. } => "wrong_key",
            BackupError::HeaderAuthentication { .. } => "header_authentication",
            BackupError::Truncated(_) => "truncated",
            BackupError::ChunkAuthentication { .. } => "chunk_authentication",
            BackupError::ChunkReordered { .. } => "chunk_reordered",
            BackupError::TrailingData => "trailing_data",
            BackupError::Payload(_) => "payload",
            BackupError::Io(_) => "io",
        }
    }
}
