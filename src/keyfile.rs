//! Files that hold one 32-byte secret key as 64 hex digits: the audit signing key and the
//! backup key-encryption key.
//!
//! A key file is created with mode 0600 and never overwritten, and is read only when group
//! and others have no access to it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use zeroize::Zeroizing;

/// A key file problem; `kind` names the key, such as "audit key" or "backup key".
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {kind} {path}: {source}")]
    Read {
        kind: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {kind} {path}: {source}")]
    Write {
        kind: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{kind} {path} has mode {mode:04o}, readable by group or others: run chmod 600 {path}"
    )]
    Permissions {
        kind: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{kind} {path} is invalid: expected 64 hex digits (32 random bytes) on one line")]
    Format { kind: &'static str, path: PathBuf },
    #[error("{path} already exists: refusing to overwrite a {kind}")]
    Exists { kind: &'static str, path: PathBuf },
}

/// Creates `path` with mode 0600 holding 32 new random bytes, and returns them. Fails rather
/// than overwrite an existing file.
pub fn create(path: &Path, kind: &'static str) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(key.as_mut());
    let write_error = |source| KeyFileError::Write {
        kind,
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists {
                kind,
                path: path.to_owned(),
            },
            _ => write_error(source),
        })?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.as_ref())));
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error)?;
    Ok(key)
}

/// Reads the key in `path`, rejecting a file that group or others can read.
pub fn read(path: &Path, kind: &'static str) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let read_error = |source| KeyFileError::Read {
        kind,
        path: path.to_owned(),
        source,
    };
    let mode = fs::metadata(path).map_err(read_error)?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            kind,
            path: path.to_owned(),
            mode,
        });
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(read_error)?);
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), key.as_mut()).map_err(|_| KeyFileError::Format {
        kind,
        path: path.to_owned(),
    })?;
    Ok(key)
}
