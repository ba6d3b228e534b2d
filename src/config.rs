//! Typed settings from `config.toml`, environment overrides and per-environment rules.
//!
//! [`Config::load`] reads the file, rejects unknown keys (naming file, line and key), applies
//! the `CTRIP_*` environment overrides, resolves relative paths against the file's directory
//! and enforces what each environment allows. Secrets are not read here: the file only names
//! where they live, and [`Config::database_password`] and [`Config::mnemonic`] read them on
//! demand, checking file permissions as they go.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::db::tls::SslMode;
use crate::secret::Secret;
use crate::wallet::{Family, Mnemonic};

/// A configuration problem, with the file or variable and the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}: pass --config PATH or set CTRIP_CONFIG")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Where the service runs, which decides how strict start-up is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Testing,
    Production,
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Environment::Development => "development",
            Environment::Testing => "testing",
            Environment::Production => "production",
        })
    }
}

/// The whole configuration, after overrides and path resolution.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub environment: Environment,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    pub wallet: WalletConfig,
    #[serde(default)]
    pub payments: PaymentsConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub chains: Vec<ChainConfig>,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Directory of the config file; relative paths in it are resolved against this.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Source of the settings (a file path), for error messages.
    #[serde(skip)]
    pub origin: String,
    #[serde(skip)]
    env_secrets: EnvSecrets,
}

/// Secrets given through the environment, kept apart from the file's values.
#[derive(Debug, Clone, Default)]
struct EnvSecrets {
    runtime_password: Option<Secret>,
    migration_password: Option<Secret>,
    mnemonic: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port the HTTP API listens on.
    pub listen: String,
    /// Worker threads that run request handlers: by default one per CPU core, at least two.
    pub workers: usize,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Time in-flight requests get to finish after SIGTERM, in seconds.
    pub shutdown_timeout_s: u64,
    /// Apply migrations and write the chains at start-up as the migration login. With false,
    /// `serve` needs only the runtime login and refuses a schema `ctrip migrate` has not updated.
    pub migrate_on_start: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".to_owned(),
            workers: default_workers(),
            max_body_bytes: 64 * 1024,
            shutdown_timeout_s: 20,
            migrate_on_start: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub level: String,
    /// Optional file that receives a copy of every log line.
    pub file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub dbname: String,
    #[serde(default)]
    pub sslmode: SslMode,
    #[serde(default = "default_sslrootcert")]
    pub sslrootcert: PathBuf,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    #[serde(default = "default_application_name")]
    pub application_name: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    #[serde(default = "default_idle_in_transaction_timeout_ms")]
    pub idle_in_transaction_session_timeout_ms: u64,
    /// How often `ctrip serve` checks the TLS files for a change, in milliseconds.
    #[serde(default = "default_tls_watch_interval_ms")]
    pub tls_watch_interval_ms: u64,
    /// The login that serves requests.
    pub runtime: DatabaseLogin,
    /// The login that applies migrations; defaults to the runtime login.
    pub migration: Option<DatabaseLogin>,
}

fn default_port() -> u16 {
    5432
}
fn default_sslrootcert() -> PathBuf {
    PathBuf::from("certs/ca.crt")
}
fn default_application_name() -> String {
    "ctrip".to_owned()
}
fn default_connect_timeout_ms() -> u64 {
    5000
}
fn default_statement_timeout_ms() -> u64 {
    5000
}
fn default_idle_in_transaction_timeout_ms() -> u64 {
    10_000
}
fn default_tls_watch_interval_ms() -> u64 {
    2000
}

/// One database identity: user name and where its password comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseLogin {
    pub user: String,
    pub password_file: Option<PathBuf>,
    /// Inline password, accepted outside production only.
    pub password: Option<Secret>,
    /// Role to `SET ROLE` to after connecting, so objects get a group owner.
    pub role: Option<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// Returns one worker per CPU core, at least two. With PostgreSQL on the same machine, each
/// request keeps a backend busy while its worker waits, so the two share the cores.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get().max(2))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// `max_size` as written in the file, if it is.
    #[serde(rename = "max_size")]
    max_size_setting: Option<u32>,
    /// Sessions for requests: `max_size` from the file, or else `server.workers`.
    #[serde(skip)]
    pub max_size: u32,
    pub min_idle: u32,
    pub connection_timeout_ms: u64,
    pub max_lifetime_s: u64,
    pub idle_timeout_s: u64,
    /// Run a cheap query on every check-out to catch dead connections.
    pub test_on_check_out: bool,
    /// Age below which a connection that came back healthy skips that query.
    pub skip_test_within_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size_setting: None,
            max_size: u32::try_from(default_workers()).unwrap_or(u32::MAX),
            min_idle: 2,
            connection_timeout_ms: 2000,
            max_lifetime_s: 1800,
            idle_timeout_s: 600,
            test_on_check_out: true,
            skip_test_within_ms: 500,
        }
    }
}

impl PoolConfig {
    pub fn connection_timeout(&self) -> Duration {
        Duration::from_millis(self.connection_timeout_ms)
    }

    pub fn skip_test_within(&self) -> Duration {
        Duration::from_millis(self.skip_test_within_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletConfig {
    /// File holding the BIP39 phrase; `CTRIP_MNEMONIC` overrides it.
    pub mnemonic_file: Option<PathBuf>,
    /// Optional file holding the BIP39 passphrase.
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// Lifetime of a payment when the request gives no `expires_in`, in seconds.
    pub default_expires_in_s: u32,
    pub min_expires_in_s: u32,
    pub max_expires_in_s: u32,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            default_expires_in_s: 1800,
            min_expires_in_s: 60,
            max_expires_in_s: 7 * 24 * 3600,
        }
    }
}

/// Settings of signed audit checkpoints: the key and the file they are appended to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// ed25519 key (64 hex digits, mode 0600) that signs checkpoints; `ctrip audit keygen`
    /// creates one. Without it, no checkpoints are written.
    pub key_file: Option<PathBuf>,
    /// File the signed checkpoints are appended to.
    pub checkpoint_file: Option<PathBuf>,
    /// Seconds between checkpoints written by `ctrip serve`.
    pub checkpoint_interval_s: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            key_file: None,
            checkpoint_file: None,
            checkpoint_interval_s: 3600,
        }
    }
}

/// Where backups go, the key that encrypts them, and which ones `ctrip backup prune` keeps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Key-encryption key (64 hex digits, mode 0600); `ctrip backup keygen` creates one.
    pub key_file: Option<PathBuf>,
    /// Directory `ctrip backup create` writes to and `ctrip backup prune` cleans.
    pub dir: Option<PathBuf>,
    /// Directory of pg_dump and pg_restore; default: the newest /usr/lib/postgresql/*/bin.
    pub pg_bin_dir: Option<PathBuf>,
    /// Keep every backup created within this many days.
    pub keep_within_days: u32,
    /// Also keep the newest backup of each of this many 7-day weeks back from now.
    pub keep_weekly_weeks: u32,
    /// Never keep fewer than this many of the newest backups.
    pub keep_min: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            key_file: None,
            dir: None,
            pg_bin_dir: None,
            keep_within_days: 7,
            keep_weekly_weeks: 8,
            keep_min: 3,
        }
    }
}

/// How long each class of data is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days after a payment reaches a final state until its personal fields are erased;
    /// unset keeps them.
    pub payment_personal_data_days: Option<u32>,
    /// Months audit events are kept before they may be pruned (12 or more); unset keeps them.
    pub audit_events_months: Option<u32>,
    /// Seconds between retention runs of `ctrip serve`.
    pub interval_s: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            payment_personal_data_days: None,
            audit_events_months: None,
            interval_s: 24 * 3600,
        }
    }
}

/// The minimum months of audit history, from PCI DSS v4.0 requirement 10.5.1 ("retain audit
/// log history for at least 12 months").
pub const MIN_AUDIT_MONTHS: u32 = 12;

/// A chain payments can be made on, and the tokens accepted there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub name: String,
    pub family: Family,
    /// Symbol of the native coin, such as ETH or SOL.
    pub symbol: String,
    pub decimals: u8,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub symbol: String,
    /// Contract address (EVM) or mint address (Solana).
    pub address: String,
    pub decimals: u8,
}

impl<'de> Deserialize<'de> for Family {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Family::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// Environment variables that override deploy values, and the setting each replaces.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("CTRIP_LISTEN", "server.listen"),
    ("CTRIP_LOG_FILE", "log.file"),
    ("CTRIP_DATABASE_HOST", "database.host"),
    ("CTRIP_DATABASE_PORT", "database.port"),
    ("CTRIP_DATABASE_NAME", "database.dbname"),
    ("CTRIP_SSLROOTCERT", "database.sslrootcert"),
    ("CTRIP_SSLCERT", "database.sslcert"),
    ("CTRIP_SSLKEY", "database.sslkey"),
    ("CTRIP_DATABASE_PASSWORD", "database.runtime password"),
    ("CTRIP_MIGRATION_PASSWORD", "database.migration password"),
    ("CTRIP_MNEMONIC_FILE", "wallet.mnemonic_file"),
    ("CTRIP_MNEMONIC", "wallet mnemonic phrase"),
];

/// A source of environment variables, so tests can pass a map instead of the process's.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

impl Config {
    /// Loads and validates the file at `path` with the process environment applied.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path, &process_env)
    }

    /// Parses `text` as if read from `path`, applies overrides from `env` and validates.
    pub fn from_toml_str(text: &str, path: &Path, env: EnvLookup) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            line: err
                .span()
                .map(|span| line_of(text, span.start))
                .unwrap_or(0),
            message: err.message().replace('\n', " "),
        })?;
        config.pool.max_size = config
            .pool
            .max_size_setting
            .unwrap_or_else(|| u32::try_from(config.server.workers).unwrap_or(u32::MAX));
        config.origin = path.display().to_string();
        config.base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        config.apply_env(env)?;
        config.resolve_paths();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            message: message.into(),
        }
    }

    fn apply_env(&mut self, env: EnvLookup) -> Result<(), ConfigError> {
        if let Some(listen) = env("CTRIP_LISTEN") {
            self.server.listen = listen;
        }
        if let Some(file) = env("CTRIP_LOG_FILE") {
            self.log.file = Some(PathBuf::from(file));
        }
        if let Some(host) = env("CTRIP_DATABASE_HOST") {
            self.database.host = host;
        }
        if let Some(port) = env("CTRIP_DATABASE_PORT") {
            self.database.port = port.parse().map_err(|_| ConfigError::Invalid {
                origin: "environment".to_owned(),
                message: format!(
                    "CTRIP_DATABASE_PORT={port:?} is not a port number: expected 1 to 65535"
                ),
            })?;
        }
        if let Some(name) = env("CTRIP_DATABASE_NAME") {
            self.database.dbname = name;
        }
        if let Some(path) = env("CTRIP_SSLROOTCERT") {
            self.database.sslrootcert = PathBuf::from(path);
        }
        if let Some(path) = env("CTRIP_SSLCERT") {
            self.database.sslcert = Some(PathBuf::from(path));
        }
        if let Some(path) = env("CTRIP_SSLKEY") {
            self.database.sslkey = Some(PathBuf::from(path));
        }
        if let Some(path) = env("CTRIP_MNEMONIC_FILE") {
            self.wallet.mnemonic_file = Some(PathBuf::from(path));
        }
        self.env_secrets = EnvSecrets {
            runtime_password: env("CTRIP_DATABASE_PASSWORD").map(Secret::new),
            migration_password: env("CTRIP_MIGRATION_PASSWORD").map(Secret::new),
            mnemonic: env("CTRIP_MNEMONIC").map(Secret::new),
        };
        Ok(())
    }

    fn resolve_paths(&mut self) {
        let base = self.base_dir.clone();
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.database.sslrootcert);
        self.database.sslcert.iter_mut().for_each(resolve);
        self.database.sslkey.iter_mut().for_each(resolve);
        self.database
            .runtime
            .password_file
            .iter_mut()
            .for_each(resolve);
        if let Some(login) = self.database.migration.as_mut() {
            login.password_file.iter_mut().for_each(resolve);
        }
        self.wallet.mnemonic_file.iter_mut().for_each(resolve);
        self.wallet.passphrase_file.iter_mut().for_each(resolve);
        self.log.file.iter_mut().for_each(resolve);
        self.audit.key_file.iter_mut().for_each(resolve);
        self.audit.checkpoint_file.iter_mut().for_each(resolve);
        self.backup.key_file.iter_mut().for_each(resolve);
        self.backup.dir.iter_mut().for_each(resolve);
        self.backup.pg_bin_dir.iter_mut().for_each(resolve);
    }
}

const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_database()?;
        self.validate_pool()?;
        self.validate_payments()?;
        self.validate_audit()?;
        self.validate_backup()?;
        self.validate_retention()?;
        self.validate_chains()
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return Err(self.invalid(format!(
                "server.listen = {:?} is not a socket address: expected IP:port such as \
                 127.0.0.1:8080",
                self.server.listen
            )));
        }
        if !(1..=1024).contains(&self.server.workers) {
            return Err(self.invalid(format!(
                "server.workers = {} is out of range: expected 1 to 1024",
                self.server.workers
            )));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.server.max_body_bytes) {
            return Err(self.invalid(format!(
                "server.max_body_bytes = {} is out of range: expected 1024 to 16777216",
                self.server.max_body_bytes
            )));
        }
        if !LOG_LEVELS.contains(&self.log.level.as_str()) {
            return Err(self.invalid(format!(
                "log.level = {:?} is not a level: expected one of {}",
                self.log.level,
                LOG_LEVELS.join(", ")
            )));
        }
        Ok(())
    }

    fn validate_database(&self) -> Result<(), ConfigError> {
        let db = &self.database;
        if db.host.is_empty() || db.dbname.is_empty() || db.runtime.user.is_empty() {
            return Err(self.invalid(
                "database.host, database.dbname and database.runtime.user \
                                     must not be empty",
            ));
        }
        for (key, value) in [
            ("connect_timeout_ms", db.connect_timeout_ms),
            ("statement_timeout_ms", db.statement_timeout_ms),
            (
                "idle_in_transaction_session_timeout_ms",
                db.idle_in_transaction_session_timeout_ms,
            ),
            ("tls_watch_interval_ms", db.tls_watch_interval_ms),
        ] {
            if value == 0 {
                return Err(self.invalid(format!(
                    "database.{key} = 0 would disable the limit: set a number of milliseconds"
                )));
            }
        }
        if db.sslcert.is_some() != db.sslkey.is_some() {
            return Err(self
                .invalid("database.sslcert and database.sslkey go together: set both or neither"));
        }
        match (self.environment, db.sslmode) {
            (Environment::Production, mode) if mode != SslMode::VerifyFull => {
                return Err(self.invalid(format!(
                    "database.sslmode = \"{mode}\" is not allowed in production: set \
                     sslmode = \"verify-full\" so the server certificate and host name are checked"
                )));
            }
            (Environment::Testing, SslMode::Disable) => {
                return Err(self.invalid(
                    "database.sslmode = \"disable\" is allowed only in development: use \
                     \"verify-full\"",
                ));
            }
            _ => {}
        }
        if self.environment == Environment::Production {
            for (key, login) in self.logins() {
                if login.password.is_some() {
                    return Err(self.invalid(format!(
                        "database.{key}.password is not allowed in production: move it to a \
                         password_file (mode 0600) or the environment"
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_pool(&self) -> Result<(), ConfigError> {
        let pool = &self.pool;
        if pool.max_size == 0 || pool.min_idle > pool.max_size {
            return Err(self.invalid(format!(
                "pool.max_size = {} and pool.min_idle = {} are inconsistent: max_size must be at \
                 least 1 and min_idle at most max_size",
                pool.max_size, pool.min_idle
            )));
        }
        for (key, value) in [
            ("connection_timeout_ms", pool.connection_timeout_ms),
            ("max_lifetime_s", pool.max_lifetime_s),
            ("idle_timeout_s", pool.idle_timeout_s),
        ] {
            if value == 0 {
                return Err(
                    self.invalid(format!("pool.{key} = 0 is invalid: set a positive number"))
                );
            }
        }
        Ok(())
    }

    fn validate_audit(&self) -> Result<(), ConfigError> {
        let audit = &self.audit;
        if audit.key_file.is_some() != audit.checkpoint_file.is_some() {
            return Err(self.invalid(
                "audit.key_file and audit.checkpoint_file go together: set both or neither",
            ));
        }
        if audit.checkpoint_interval_s < 10 {
            return Err(self.invalid(format!(
                "audit.checkpoint_interval_s = {} is too short: use 10 seconds or more",
                audit.checkpoint_interval_s
            )));
        }
        Ok(())
    }

    fn validate_backup(&self) -> Result<(), ConfigError> {
        if self.backup.keep_min == 0 {
            return Err(self.invalid(
                "backup.keep_min = 0 would let prune delete every backup: set 1 or more",
            ));
        }
        Ok(())
    }

    fn validate_retention(&self) -> Result<(), ConfigError> {
        let retention = &self.retention;
        if let Some(days) = retention.payment_personal_data_days {
            if !(1..=36_500).contains(&days) {
                return Err(self.invalid(format!(
                    "retention.payment_personal_data_days = {days} is out of range: expected 1 \
                     to 36500"
                )));
            }
        }
        if let Some(months) = retention.audit_events_months {
            if !(MIN_AUDIT_MONTHS..=1200).contains(&months) {
                return Err(self.invalid(format!(
                    "retention.audit_events_months = {months} is out of range: PCI DSS 10.5.1 \
                     requires at least {MIN_AUDIT_MONTHS} months of audit history, so use \
                     {MIN_AUDIT_MONTHS} to 1200"
                )));
            }
            if self.audit.key_file.is_none() {
                return Err(self.invalid(
                    "retention.audit_events_months needs audit.key_file and \
                     audit.checkpoint_file, because a prune first writes a signed checkpoint",
                ));
            }
        }
        if retention.interval_s < 10 {
            return Err(self.invalid(format!(
                "retention.interval_s = {} is too short: use 10 seconds or more",
                retention.interval_s
            )));
        }
        Ok(())
    }

    /// Lists the settings that weaken security in production, for the start-up audit row.
    pub fn relaxed_settings(&self) -> Vec<&'static str> {
        let mut relaxed = Vec::new();
        if self.database.sslcert.is_none() {
            relaxed.push("no client certificate (database.sslcert)");
        }
        if self.audit.key_file.is_none() {
            relaxed.push("no signed audit checkpoints (audit.key_file)");
        }
        if matches!(self.log.level.as_str(), "debug" | "trace") {
            relaxed.push("verbose logging (log.level)");
        }
        if !self.pool.test_on_check_out {
            relaxed.push("pool connections not tested on check-out (pool.test_on_check_out)");
        }
        relaxed
    }

    fn validate_payments(&self) -> Result<(), ConfigError> {
        let p = &self.payments;
        if p.min_expires_in_s == 0
            || p.min_expires_in_s > p.default_expires_in_s
            || p.default_expires_in_s > p.max_expires_in_s
        {
            return Err(self.invalid(format!(
                "payments expiry settings are inconsistent: expected 0 < min_expires_in_s ({}) <= \
                 default_expires_in_s ({}) <= max_expires_in_s ({})",
                p.min_expires_in_s, p.default_expires_in_s, p.max_expires_in_s
            )));
        }
        Ok(())
    }

    fn validate_chains(&self) -> Result<(), ConfigError> {
        if self.chains.is_empty() {
            return Err(self.invalid("no [[chains]] configured: add at least one chain"));
        }
        let mut names = HashSet::new();
        for chain in &self.chains {
            if !is_chain_name(&chain.name) {
                return Err(self.invalid(format!(
                    "chains.name = {:?} is invalid: use 1 to 32 lowercase letters, digits, '-' \
                     or '_', starting with a letter",
                    chain.name
                )));
            }
            if !names.insert(chain.name.as_str()) {
                return Err(self.invalid(format!("chain {:?} is configured twice", chain.name)));
            }
            self.validate_asset(&chain.name, &chain.symbol, chain.decimals)?;
            self.validate_tokens(chain)?;
        }
        Ok(())
    }

    fn validate_tokens(&self, chain: &ChainConfig) -> Result<(), ConfigError> {
        let mut symbols = HashSet::new();
        for token in &chain.tokens {
            self.validate_asset(&chain.name, &token.symbol, token.decimals)?;
            if !symbols.insert(token.symbol.as_str()) {
                return Err(self.invalid(format!(
                    "token {:?} is configured twice on chain {:?}",
                    token.symbol, chain.name
                )));
            }
            if !is_token_address(chain.family, &token.address) {
                let expected = match chain.family {
                    Family::Evm => "0x followed by 40 hex digits",
                    Family::Solana => "a base58 mint address of 32 bytes",
                };
                return Err(self.invalid(format!(
                    "token {} on chain {:?} has address {:?}: expected {expected}",
                    token.symbol, chain.name, token.address
                )));
            }
        }
        Ok(())
    }

    fn validate_asset(&self, chain: &str, symbol: &str, decimals: u8) -> Result<(), ConfigError> {
        let symbol_ok = (1..=16).contains(&symbol.len())
            && symbol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.');
        if !symbol_ok {
            return Err(self.invalid(format!(
                "symbol {symbol:?} on chain {chain:?} is invalid: use 1 to 16 letters, digits or '.'"
            )));
        }
        if decimals > 77 {
            return Err(self.invalid(format!(
                "{symbol} on chain {chain:?} has decimals = {decimals}: expected 0 to 77"
            )));
        }
        Ok(())
    }

    fn logins(&self) -> Vec<(&'static str, &DatabaseLogin)> {
        let mut logins = vec![("runtime", &self.database.runtime)];
        if let Some(migration) = &self.database.migration {
            logins.push(("migration", migration));
        }
        logins
    }

    /// Returns the login that applies migrations: `database.migration`, else the runtime one.
    pub fn migration_login(&self) -> &DatabaseLogin {
        self.database
            .migration
            .as_ref()
            .unwrap_or(&self.database.runtime)
    }

    /// Reads the runtime login's password from the environment, its file or the config.
    pub fn runtime_password(&self) -> Result<Secret, ConfigError> {
        let env = self.env_secrets.runtime_password.clone();
        self.password_for(
            "runtime",
            &self.database.runtime,
            env,
            "CTRIP_DATABASE_PASSWORD",
        )
    }

    /// Reads the migration login's password; falls back to the runtime one without a
    /// separate `[database.migration]` table.
    pub fn migration_password(&self) -> Result<Secret, ConfigError> {
        match &self.database.migration {
            Some(login) => {
                let env = self.env_secrets.migration_password.clone();
                self.password_for("migration", login, env, "CTRIP_MIGRATION_PASSWORD")
            }
            None => self.runtime_password(),
        }
    }

    fn password_for(
        &self,
        key: &str,
        login: &DatabaseLogin,
        env: Option<Secret>,
        env_name: &str,
    ) -> Result<Secret, ConfigError> {
        if let Some(secret) = env {
            return Ok(secret);
        }
        if let Some(path) = &login.password_file {
            return self.read_secret_file(path);
        }
        login.password.clone().ok_or_else(|| {
            self.invalid(format!(
                "no password for database.{key} (user {:?}): set database.{key}.password_file \
                 or {env_name}",
                login.user
            ))
        })
    }

    /// Reads and parses the BIP39 phrase from `CTRIP_MNEMONIC` or `wallet.mnemonic_file`.
    ///
    /// Fails when neither is set, the phrase is not valid BIP39, or (in production) it is a
    /// well-known test phrase. No word of the phrase appears in any error.
    pub fn mnemonic(&self) -> Result<Mnemonic, ConfigError> {
        let (phrase, source) =
            match (&self.env_secrets.mnemonic, &self.wallet.mnemonic_file) {
                (Some(secret), _) => (secret.clone(), "CTRIP_MNEMONIC".to_owned()),
                (None, Some(path)) => (self.read_secret_file(path)?, path.display().to_string()),
                (None, None) => return Err(self.invalid(
                    "no mnemonic: set wallet.mnemonic_file (a file of mode 0600) or CTRIP_MNEMONIC",
                )),
            };
        let mnemonic = Mnemonic::parse(phrase.expose())
            .map_err(|err| self.invalid(format!("mnemonic from {source} is invalid: {err}")))?;
        if self.environment == Environment::Production && mnemonic.is_well_known_test_phrase() {
            return Err(self.invalid(format!(
                "mnemonic from {source} is a well-known test phrase, so anyone could take the \
                 funds: generate a new one for production"
            )));
        }
        Ok(mnemonic)
    }

    /// Reads the optional BIP39 passphrase; empty when no file is configured.
    pub fn passphrase(&self) -> Result<Secret, ConfigError> {
        match &self.wallet.passphrase_file {
            Some(path) => self.read_secret_file(path),
            None => Ok(Secret::new(String::new())),
        }
    }

    /// Rejects, in production, a client key that group or others can read. (Every environment
    /// applies libpq's rule when the key is loaded; production is stricter and refuses 0640 too.)
    pub fn check_production_key_file(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.database.sslkey else {
            return Ok(());
        };
        if self.environment != Environment::Production {
            return Ok(());
        }
        let mode = std::fs::metadata(path)
            .map_err(|err| self.invalid(format!("cannot read {}: {err}", path.display())))?
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(self.invalid(format!(
                "client key {} has mode {mode:04o}, readable by group or others, which production \
                 refuses: run chmod 600 {}",
                path.display(),
                path.display()
            )));
        }
        Ok(())
    }

    /// Reads a secret file without its trailing newline, rejecting loose permissions in
    /// production (in other environments they are only logged).
    pub fn read_secret_file(&self, path: &Path) -> Result<Secret, ConfigError> {
        let metadata = std::fs::metadata(path).map_err(|err| {
            self.invalid(format!("cannot read secret file {}: {err}", path.display()))
        })?;
        let mode = metadata.mode() & 0o777;
        if mode & 0o077 != 0 {
            let message = format!(
                "secret file {} has mode {mode:04o}, readable by group or others: run chmod 600 {}",
                path.display(),
                path.display()
            );
            if self.environment == Environment::Production {
                return Err(self.invalid(message));
            }
            log::warn!("{message}");
        }
        let mut text = std::fs::read_to_string(path).map_err(|err| {
            self.invalid(format!("cannot read secret file {}: {err}", path.display()))
        })?;
        let trimmed_len = text.trim_end_matches(['\n', '\r']).len();
        text.truncate(trimmed_len);
        if text.is_empty() {
            return Err(self.invalid(format!("secret file {} is empty", path.display())));
        }
        Ok(Secret::new(text))
    }
}

/// Returns the 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn is_chain_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    first_ok
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn is_token_address(family: Family, address: &str) -> bool {
    match family {
        Family::Evm => {
            address.len() == 42
                && address.starts_with("0x")
                && address[2..].chars().all(|c| c.is_ascii_hexdigit())
        }
        Family::Solana => bs58::decode(address)
            .into_vec()
            .is_ok_and(|bytes| bytes.len() == 32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MINIMAL: &str = r#"
environment = "development"
[database]
host = "localhost"
dbname = "ctrip"
[database.runtime]
user = "ctrip_runtime"
password = "dev-only"
[wallet]
mnemonic_file = "mnemonic"
[[chains]]
name = "ethereum"
family = "evm"
symbol = "ETH"
decimals = 18
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/etc/ctrip/config.toml"), &|_| None)
    }

    fn parse_with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_toml_str(text, Path::new("/etc/ctrip/config.toml"), &|name| {
            map.get(name).cloned()
        })
    }

    fn replace(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "{from:?} not in the config");
        text.replacen(from, to, 1)
    }

    #[test]
    fn shipped_config_parses() {
        let text = include_str!("../config.toml");

        let config = parse(text).unwrap();

        assert_eq!(config.environment, Environment::Development);
        assert_eq!(config.database.sslmode, SslMode::VerifyFull);
        assert_eq!(config.database.port, 54329);
        assert_eq!(config.chains.len(), 2);
        assert_eq!(
            config.migration_login().role.as_deref(),
            Some("ctrip_owner")
        );
    }

    #[test]
    fn relative_paths_resolve_against_file() {
        let config = parse(MINIMAL).unwrap();

        assert_eq!(
            config.database.sslrootcert,
            PathBuf::from("/etc/ctrip/certs/ca.crt")
        );
        assert_eq!(
            config.wallet.mnemonic_file,
            Some(PathBuf::from("/etc/ctrip/mnemonic"))
        );
    }

    #[test]
    fn unknown_key_named_with_line() {
        let text = replace(
            MINIMAL,
            "dbname = \"ctrip\"",
            "dbname = \"ctrip\"\ndb_name = \"x\"",
        );

        let err = parse(&text).unwrap_err().to_string();

        assert!(err.starts_with("/etc/ctrip/config.toml line 6:"), "{err}");
        assert!(err.contains("unknown field `db_name`"), "{err}");
    }

    #[test]
    fn prefer_rejected() {
        let text = replace(
            MINIMAL,
            "dbname = \"ctrip\"",
            "dbname = \"ctrip\"\nsslmode = \"prefer\"",
        );

        let err = parse(&text).unwrap_err().to_string();

        assert!(err.contains("falls back to plaintext"), "{err}");
    }

    #[test]
    fn production_requires_verify_full() {
        let text = replace(MINIMAL, "\"development\"", "\"production\"");
        let text = replace(&text, "password = \"dev-only\"", "password_file = \"pw\"");

        let verify_ca = replace(
            &text,
            "dbname = \"ctrip\"",
            "dbname = \"ctrip\"\nsslmode = \"verify-ca\"",
        );
        let err = parse(&verify_ca).unwrap_err().to_string();

        assert!(err.contains("not allowed in production"), "{err}");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn production_rejects_inline_password() {
        let text = replace(MINIMAL, "\"development\"", "\"production\"");

        let err = parse(&text).unwrap_err().to_string();

        assert!(
            err.contains("database.runtime.password is not allowed in production"),
            "{err}"
        );
    }

    #[test]
    fn disable_only_in_development() {
        let disable = replace(
            MINIMAL,
            "dbname = \"ctrip\"",
            "dbname = \"ctrip\"\nsslmode = \"disable\"",
        );
        let testing = replace(&disable, "\"development\"", "\"testing\"");

        assert!(parse(&disable).is_ok());
        assert!(parse(&testing)
            .unwrap_err()
            .to_string()
            .contains("only in development"));
    }

    #[test]
    fn environment_overrides_deploy_values() {
        let config = parse_with_env(
            MINIMAL,
            &[
                ("CTRIP_LISTEN", "0.0.0.0:9000"),
                ("CTRIP_DATABASE_PORT", "6543"),
                ("CTRIP_DATABASE_PASSWORD", "from-env"),
            ],
        )
        .unwrap();

        assert_eq!(config.server.listen, "0.0.0.0:9000");
        assert_eq!(config.database.port, 6543);
        assert_eq!(config.runtime_password().unwrap().expose(), "from-env");
    }

    #[test]
    fn bad_port_variable_named() {
        let err = parse_with_env(MINIMAL, &[("CTRIP_DATABASE_PORT", "http")]).unwrap_err();

        assert!(
            err.to_string().contains("CTRIP_DATABASE_PORT=\"http\""),
            "{err}"
        );
    }

    #[test]
    fn pool_size_follows_workers_unless_set() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));

        let defaults = parse(MINIMAL).unwrap();
        let workers_set = parse(&replace(
            MINIMAL,
            "[database]",
            "[server]\nworkers = 5\n[database]",
        ))
        .unwrap();
        let both_set = parse(&replace(
            MINIMAL,
            "[database]",
            "[server]\nworkers = 5\n[pool]\nmax_size = 7\n[database]",
        ))
        .unwrap();

        assert_eq!(defaults.server.workers, cores);
        assert_eq!(defaults.pool.max_size as usize, cores);
        assert_eq!(workers_set.pool.max_size, 5);
        assert_eq!(both_set.server.workers, 5);
        assert_eq!(both_set.pool.max_size, 7);
    }

    #[test]
    fn bad_values_named() {
        let cases = [
            ("[database]", "[server]\nlisten = \"localhost\"\n[database]", "server.listen"),
            ("[database]", "[pool]\nmax_size = 0\n[database]", "pool.max_size"),
            ("[database]", "[log]\nlevel = \"loud\"\n[database]", "log.level"),
            ("family = \"evm\"", "family = \"bitcoin\"", "bitcoin"),
            ("name = \"ethereum\"", "name = \"Ethereum\"", "chains.name"),
            ("decimals = 18", "decimals = 18\n[[chains.tokens]]\nsymbol = \"USDC\"\naddress = \"0x12\"\ndecimals = 6", "0x followed by 40 hex digits"),
        ];

        for (from, to, expected) in cases {
            let err = parse(&replace(MINIMAL, from, to)).unwrap_err().to_string();

            assert!(err.contains(expected), "{to}: {err}");
        }
    }

    #[test]
    fn secret_file_mode_enforced_in_production() {
        let dir = std::env::temp_dir().join(format!("ctrip-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "secret\n").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let text = replace(MINIMAL, "\"development\"", "\"production\"");
        let text = replace(
            &text,
            "password = \"dev-only\"",
            &format!("password_file = {:?}", file.display().to_string()),
        );

        let err = parse(&text)
            .unwrap()
            .runtime_password()
            .unwrap_err()
            .to_string();
        let dev = parse(MINIMAL).unwrap().read_secret_file(&file).unwrap();

        assert!(err.contains("chmod 600"), "{err}");
        assert_eq!(dev.expose(), "secret");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn test_mnemonic_refused_in_production() {
        let text = replace(MINIMAL, "\"development\"", "\"production\"");
        let text = replace(&text, "password = \"dev-only\"", "password_file = \"pw\"");
        let phrase = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

        let err = parse_with_env(&text, &[("CTRIP_MNEMONIC", phrase)])
            .unwrap()
            .mnemonic()
            .unwrap_err()
            .to_string();
        let dev = parse_with_env(MINIMAL, &[("CTRIP_MNEMONIC", phrase)])
            .unwrap()
            .mnemonic();

        assert!(err.contains("well-known test phrase"), "{err}");
        assert!(!err.contains("abandon"), "{err}");
        assert!(dev.is_ok());
    }

    #[test]
    fn invalid_mnemonic_not_echoed() {
        let phrase = "test test test test test test test test test test test tset";

        let err = parse_with_env(MINIMAL, &[("CTRIP_MNEMONIC", phrase)])
            .unwrap()
            .mnemonic()
            .unwrap_err()
            .to_string();

        assert!(err.contains("CTRIP_MNEMONIC"), "{err}");
        assert!(!err.contains("tset"), "{err}");
    }
}
