//! PostgreSQL access: connection parameters, TLS, the pool and migrations.
//!
//! Every connection ctrip opens goes through [`connect`], which applies the configured
//! sslmode (see [`tls`]) and the session limits, so the pool, the migrator and the CLI all
//! reach the database the same way.

pub mod migrate;
pub mod pool;
pub mod rotation;
pub mod tls;

pub use rotation::{SharedTls, TlsState};

use std::error::Error as _;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls};

use crate::config::{Config, ConfigError, DatabaseLogin};
use crate::secret::Secret;
use tls::{SslMode, TlsConnector};

/// Everything needed to open one session as one login.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Secret,
    /// Role to switch to after connecting (the migration login becomes the schema owner).
    pub role: Option<String>,
    pub application_name: String,
    pub connect_timeout: Duration,
    pub statement_timeout_ms: u64,
    pub idle_in_transaction_session_timeout_ms: u64,
}

impl ConnectParams {
    /// Builds the parameters for `login` with `password` from the `[database]` settings.
    pub fn new(config: &Config, login: &DatabaseLogin, password: Secret) -> ConnectParams {
        let db = &config.database;
        ConnectParams {
            host: db.host.clone(),
            port: db.port,
            dbname: db.dbname.clone(),
            user: login.user.clone(),
            password,
            role: login.role.clone(),
            application_name: db.application_name.clone(),
            connect_timeout: Duration::from_millis(db.connect_timeout_ms),
            statement_timeout_ms: db.statement_timeout_ms,
            idle_in_transaction_session_timeout_ms: db.idle_in_transaction_session_timeout_ms,
        }
    }

    /// Returns the parameters for the runtime login.
    pub fn runtime(config: &Config) -> Result<ConnectParams, ConfigError> {
        Ok(ConnectParams::new(
            config,
            &config.database.runtime,
            config.runtime_password()?,
        ))
    }

    /// Returns the parameters for the migration login.
    pub fn migration(config: &Config) -> Result<ConnectParams, ConfigError> {
        Ok(ConnectParams::new(
            config,
            config.migration_login(),
            config.migration_password()?,
        ))
    }

    /// Returns the same parameters for another database on the same server.
    pub fn with_dbname(&self, dbname: &str) -> ConnectParams {
        ConnectParams {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    fn postgres_config(&self) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .user(&self.user)
            .password(self.password.expose())
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .options(&format!(
                "-c statement_timeout={} -c idle_in_transaction_session_timeout={} \
                 -c search_path=ctrip",
                self.statement_timeout_ms, self.idle_in_transaction_session_timeout_ms
            ));
        config
    }
}

/// A failed connection attempt, naming the server, user and sslmode.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL at {host}:{port} as {user} (sslmode={mode}): {detail}")]
pub struct ConnectError {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub mode: SslMode,
    pub detail: String,
    #[source]
    pub source: postgres::Error,
}

impl ConnectError {
    /// True when the server was reached but refused the login or the role switch.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self.source.code(),
            Some(&SqlState::INVALID_PASSWORD)
                | Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        )
    }
}

/// Joins an error and its sources into one line, because `postgres::Error` keeps the useful
/// part (the server's message, OpenSSL's verify result) in its source.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Opens one session with `params`, over TLS unless `tls` is `None` (sslmode=disable).
///
/// The session gets application_name, statement_timeout, idle_in_transaction_session_timeout
/// and search_path from the start-up packet, and `SET ROLE` when `params.role` is set.
pub fn connect(params: &ConnectParams, tls: Option<&TlsConnector>) -> Result<Client, ConnectError> {
    let mut config = params.postgres_config();
    let result = match tls {
        Some(connector) => {
            config.ssl_mode(postgres::config::SslMode::Require);
            config.connect(connector.make())
        }
        None => {
            config.ssl_mode(postgres::config::SslMode::Disable);
            config.connect(NoTls)
        }
    };
    let mode = tls.map_or(SslMode::Disable, TlsConnector::mode);
    let mut client = result.map_err(|source| connect_error(params, mode, source))?;
    if let Some(role) = &params.role {
        let statement = format!("SET ROLE {}", quote_identifier(role));
        client
            .batch_execute(&statement)
            .map_err(|source| connect_error(params, mode, source))?;
    }
    Ok(client)
}

fn connect_error(params: &ConnectParams, mode: SslMode, source: postgres::Error) -> ConnectError {
    let mut detail = match source.source() {
        Some(cause) => error_chain(cause),
        None => source.to_string(),
    };
    if let Some(hint) = connect_hint(&source, &detail, params) {
        detail.push_str(": ");
        detail.push_str(&hint);
    }
    ConnectError {
        host: params.host.clone(),
        port: params.port,
        user: params.user.clone(),
        mode,
        detail,
        source,
    }
}

/// Suggests the setting to check for common connection failures.
fn connect_hint(source: &postgres::Error, detail: &str, params: &ConnectParams) -> Option<String> {
    let hint = match source.code() {
        Some(&SqlState::INVALID_PASSWORD) => format!(
            "check the password of {} (its password_file, or CTRIP_DATABASE_PASSWORD / \
             CTRIP_MIGRATION_PASSWORD)",
            params.user
        ),
        Some(&SqlState::INVALID_CATALOG_NAME) => {
            format!(
                "database {} does not exist: check database.dbname",
                params.dbname
            )
        }
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) => format!(
            "the server's pg_hba.conf has no TLS entry for {} on this database",
            params.user
        ),
        _ if detail.contains("Connection refused") => format!(
            "nothing accepts connections at {}:{}: check database.host and database.port, and \
             that PostgreSQL is running",
            params.host, params.port
        ),
        _ if detail.contains("does not support TLS") => {
            "enable ssl on the server; ctrip never falls back to plaintext".to_owned()
        }
        _ if detail.contains("mismatch") => format!(
            "the server certificate does not name {}: set database.host to a name in its \
             subjectAltName, or use sslmode \"verify-ca\"",
            params.host
        ),
        _ if detail.contains("certificate verify failed") => "check database.sslrootcert: it \
             must contain the CA that signed the server certificate"
            .to_owned(),
        _ => return None,
    };
    Some(hint)
}

/// Quotes an SQL identifier, doubling embedded quotes.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// True when `err` means the database is unreachable or refusing work for now, so the caller
/// should respond 503 and the client may retry.
pub fn is_unavailable(err: &postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        Some(code) => {
            let class = &code.code()[..2];
            class == "08"
                || class == "53"
                || class == "57"
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
        // No SQLSTATE: an I/O failure on the socket means the server went away.
        None => err
            .source()
            .is_some_and(|cause| cause.is::<std::io::Error>()),
    }
}
