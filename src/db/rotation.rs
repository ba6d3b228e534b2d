//! The TLS material in use, and replacing it while the server runs.
//!
//! [`SharedTls`] is the one handle every connection attempt reads its connector from. A
//! reload reads the whole set (CA bundle, client certificate and key) from the files,
//! validates it, opens one canary connection with it, and only then swaps it in with the
//! next generation number. Pooled connections made with an older generation are retired
//! when they come back to the pool, so requests in flight finish on the old set. On any
//! failure the current set stays, and the reason is returned for the log and the audit.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::Client;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::tls::{SslMode, TlsConnector, TlsError, TlsFiles, TlsMaterial, TlsSummary};
use super::{connect, ConnectError, ConnectParams};
use crate::config::Config;

/// A connector with its generation and a description of its certificates.
pub struct TlsState {
    pub connector: Option<TlsConnector>,
    pub generation: u64,
    pub summary: Option<TlsSummary>,
    /// SHA-256 over the contents of the files the set was read from.
    pub files_digest: String,
}

/// The result of the latest reload attempt, for `/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadResult {
    /// Seconds since the Unix epoch.
    pub at: i64,
    pub ok: bool,
    pub message: String,
}

/// The outcome of a reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files are the ones in use, or the ones that failed last time.
    Unchanged,
    Swapped {
        generation: u64,
    },
}

/// A rejected set of TLS files; the set in use stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid TLS files: {0}")]
    Invalid(#[from] TlsError),
    #[error("the new TLS files were not used because the canary connection failed: {0}")]
    Canary(#[from] ConnectError),
    #[error("the new TLS files were not used because the canary query failed: {0}")]
    CanaryQuery(String),
}

/// The shared TLS handle, with what a reload needs to rebuild it.
pub struct SharedTls {
    current: RwLock<Arc<TlsState>>,
    mode: SslMode,
    files: TlsFiles,
    /// Digest of the last set that failed, so the same broken files are not retried.
    failed_digest: Mutex<Option<String>>,
    last_reload: Mutex<Option<ReloadResult>>,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl SharedTls {
    /// Loads, validates and builds the first set (generation 1). An expired or not yet
    /// valid client certificate is an error here, so start-up refuses it.
    pub fn load(mode: SslMode, files: &TlsFiles) -> Result<SharedTls, TlsError> {
        let state = build_state(mode, files, 1)?;
        Ok(SharedTls {
            current: RwLock::new(Arc::new(state)),
            mode,
            files: files.clone(),
            failed_digest: Mutex::new(None),
            last_reload: Mutex::new(None),
        })
    }

    /// Loads the TLS files named in `config`.
    pub fn from_config(config: &Config) -> Result<SharedTls, TlsError> {
        let db = &config.database;
        let files = TlsFiles {
            rootcert: db.sslrootcert.clone(),
            cert: db.sslcert.clone(),
            key: db.sslkey.clone(),
        };
        SharedTls::load(db.sslmode, &files)
    }

    pub fn current(&self) -> Arc<TlsState> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub fn last_reload(&self) -> Option<ReloadResult> {
        self.last_reload
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Opens one session with the current TLS settings.
    pub fn connect(&self, params: &ConnectParams) -> Result<Client, ConnectError> {
        connect(params, self.current().connector.as_ref())
    }

    /// Reloads the files when their contents differ from the set in use and from the last
    /// failed set; with `force`, also retries a set that failed before.
    ///
    /// `canary` are the parameters of the login the canary connection uses.
    pub fn reload(
        &self,
        canary: &ConnectParams,
        force: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        if self.mode == SslMode::Disable {
            return Ok(ReloadOutcome::Unchanged);
        }
        let digest = files_digest(&self.files);
        let current = self.current();
        let failed = self
            .failed_digest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if digest == current.files_digest || (!force && failed.as_deref() == Some(digest.as_str()))
        {
            return Ok(ReloadOutcome::Unchanged);
        }

        let result = self.try_swap(canary, current.generation + 1);
        let (ok, message) = match &result {
            Ok(generation) => {
                *self.failed_digest.lock().unwrap_or_else(|p| p.into_inner()) = None;
                (true, format!("loaded generation {generation}"))
            }
            Err(err) => {
                *self.failed_digest.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
                (false, err.to_string())
            }
        };
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(ReloadResult {
            at: unix_now(),
            ok,
            message,
        });
        result.map(|generation| ReloadOutcome::Swapped { generation })
    }

    fn try_swap(&self, canary: &ConnectParams, generation: u64) -> Result<u64, ReloadError> {
        let state = build_state(self.mode, &self.files, generation)?;
        let mut client = connect(canary, state.connector.as_ref())?;
        client
            .simple_query("SELECT 1")
            .map_err(|err| ReloadError::CanaryQuery(super::error_chain(&err)))?;
        drop(client);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(state);
        Ok(generation)
    }
}

fn build_state(mode: SslMode, files: &TlsFiles, generation: u64) -> Result<TlsState, TlsError> {
    let files_digest = files_digest(files);
    if mode == SslMode::Disable {
        return Ok(TlsState {
            connector: None,
            generation,
            summary: None,
            files_digest,
        });
    }
    let material = TlsMaterial::load(files)?;
    material.validate(files, unix_now())?;
    Ok(TlsState {
        connector: Some(TlsConnector::build(mode, &material)?),
        generation,
        summary: Some(material.summary()),
        files_digest,
    })
}

/// Hashes the contents of the set's files, following symbolic links, so a copy, an atomic
/// rename and a symlink swap all change it. A file that cannot be read hashes its error.
pub fn files_digest(files: &TlsFiles) -> String {
    let mut hasher = Sha256::new();
    let paths = [
        Some(&files.rootcert),
        files.cert.as_ref(),
        files.key.as_ref(),
    ];
    for path in paths.into_iter().flatten() {
        match std::fs::read(path) {
            Ok(bytes) => {
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(&bytes);
            }
            Err(err) => hasher.update(format!("unreadable {}: {err}", path.display())),
        }
        if let Ok(metadata) = std::fs::metadata(path) {
            use std::os::unix::fs::MetadataExt;
            hasher.update(metadata.mode().to_be_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

/// Returns log lines for certificates close to expiry: warnings within 30 days, errors
/// within 7 days or once expired.
pub fn expiry_warnings(summary: &TlsSummary, now: i64) -> Vec<(log::Level, String)> {
    let mut lines = Vec::new();
    let named = summary
        .client
        .iter()
        .map(|cert| ("client certificate", cert));
    let cas = summary.ca.iter().map(|cert| ("CA certificate", cert));
    for (what, cert) in named.chain(cas) {
        let days = cert.days_left(now);
        let level = match days {
            ..=6 => log::Level::Error,
            7..=29 => log::Level::Warn,
            _ => continue,
        };
        let message = if days < 0 {
            format!(
                "{what} {} (sha256 {}) has expired: rotate it now",
                cert.subject, cert.sha256
            )
        } else {
            format!(
                "{what} {} (sha256 {}) expires in {days} days: rotate it before then",
                cert.subject, cert.sha256
            )
        };
        lines.push((level, message));
    }
    lines
}
