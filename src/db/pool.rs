//! The r2d2 pool of runtime sessions.
//!
//! [`Manager`] opens sessions through [`SharedTls`], so a connection always uses the TLS
//! settings current when it was made, and retires a connection on return when those settings
//! have since been replaced (its generation is older) or the socket has closed. Requests only
//! change session state with `SET LOCAL` or `set_config(..., true)` inside their transaction,
//! so nothing a request sets reaches the next borrower.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient, Statement, Transaction};
use r2d2::{HandleError, ManageConnection};

use super::{ConnectError, ConnectParams, SharedTls};
use crate::audit::{self, ActorType, Event, Outcome};
use crate::config::PoolConfig;

/// A pooled session with its prepared statements.
pub struct PgConn {
    client: Client,
    generation: u64,
    statements: StatementCache,
    /// When the session last came back to the pool with its socket open.
    returned_at: Option<Instant>,
}

impl PgConn {
    /// Starts a transaction and returns it with the statement cache, borrowed side by side.
    pub fn transaction(
        &mut self,
    ) -> Result<(Transaction<'_>, &mut StatementCache), postgres::Error> {
        let transaction = self.client.transaction()?;
        Ok((transaction, &mut self.statements))
    }

    /// Returns whether the connection has closed, as it does after the server ends the session.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Returns the session and its statement cache, for reads that need no transaction.
    pub fn parts(&mut self) -> (&mut Client, &mut StatementCache) {
        (&mut self.client, &mut self.statements)
    }
}

/// Statements prepared once per session and reused, keyed by their SQL text.
#[derive(Default)]
pub struct StatementCache {
    statements: HashMap<&'static str, Statement>,
}

impl StatementCache {
    /// Returns the prepared statement for `sql`, preparing it on first use in this session.
    pub fn get<C: GenericClient>(
        &mut self,
        client: &mut C,
        sql: &'static str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// Opens and checks runtime sessions for r2d2.
pub struct Manager {
    params: ConnectParams,
    tls: Arc<SharedTls>,
    check_timeout: Duration,
    /// A session returned more recently than this skips the check-out query.
    skip_test_within: Duration,
    /// Failed connection attempts since the last success, and when the first of them failed.
    failures: Mutex<Option<(u64, DateTime<Utc>)>>,
}

impl Manager {
    pub fn new(params: ConnectParams, tls: Arc<SharedTls>, skip_test_within: Duration) -> Manager {
        let check_timeout = params.connect_timeout;
        Manager {
            params,
            tls,
            check_timeout,
            skip_test_within,
            failures: Mutex::new(None),
        }
    }

    fn note_failure(&self) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failures.get_or_insert((0, Utc::now())).0 += 1;
    }

    /// Writes one audit row summarizing the failures that preceded this successful connect.
    /// The database was unreachable while they happened, so only the log has each of them.
    fn record_recovery(&self, client: &mut Client) {
        let taken = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some((count, since)) = taken else { return };
        log::info!(
            "database reachable again after {count} failed connection attempts since {since}"
        );
        let event = Event::new(
            ActorType::System,
            "database.connection_failures",
            Outcome::Failed,
        )
        .actor(self.params.user.clone())
        .details(serde_json::json!({"failed_attempts": count, "since": since.to_rfc3339()}));
        if let Err(err) = audit::record(client, &event) {
            log::error!("cannot record the connection failure summary in the audit log: {err}");
        }
    }
}

/// A failure to hand out a pooled session.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The session was made with TLS material that has since been replaced; r2d2 drops it
    /// and opens a new one.
    #[error("a session of TLS generation {generation} was retired after a certificate reload")]
    Retired { generation: u64 },
}

impl ManageConnection for Manager {
    type Connection = PgConn;
    type Error = PoolError;

    fn connect(&self) -> Result<PgConn, PoolError> {
        let state = self.tls.current();
        let connected = super::connect(&self.params, state.connector.as_ref());
        let mut client = connected.inspect_err(|_| self.note_failure())?;
        self.record_recovery(&mut client);
        Ok(PgConn {
            client,
            generation: state.generation,
            statements: StatementCache::default(),
            returned_at: None,
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), PoolError> {
        let state = self.tls.current();
        if conn.generation != state.generation {
            return Err(PoolError::Retired {
                generation: conn.generation,
            });
        }
        // A session that finished a request a moment ago skips the round trip, as HikariCP's
        // alive-bypass window does. Should the server have ended it since, the request's
        // BEGIN fails, and `http::payments::with_transaction` retries on another session.
        if conn
            .returned_at
            .is_some_and(|at| at.elapsed() < self.skip_test_within)
        {
            return Ok(());
        }
        conn.client.is_valid(self.check_timeout).map_err(|source| {
            PoolError::Connect(ConnectError {
                host: self.params.host.clone(),
                port: self.params.port,
                user: self.params.user.clone(),
                mode: state
                    .connector
                    .as_ref()
                    .map_or(super::tls::SslMode::Disable, |c| c.mode()),
                detail: "the pooled session failed its check-out test".to_owned(),
                source,
            })
        })
    }

    /// Reports whether a session coming back to the pool is broken, and stamps a healthy one
    /// for `is_valid`.
    fn has_broken(&self, conn: &mut PgConn) -> bool {
        let broken = conn.client.is_closed() || conn.generation != self.tls.current().generation;
        conn.returned_at = (!broken).then(Instant::now);
        broken
    }
}

/// Logs connection failures at warn, at most one line per 5 seconds with the count of the
/// failures in between: the pool retries, and requests get 503 meanwhile.
#[derive(Debug, Default)]
struct WarnOnError {
    last: Mutex<Option<(std::time::Instant, u64)>>,
}

impl HandleError<PoolError> for WarnOnError {
    fn handle_error(&self, error: PoolError) {
        if let PoolError::Retired { .. } = error {
            log::debug!("{error}");
            return;
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match last.as_mut() {
            Some((at, skipped)) if at.elapsed() < Duration::from_secs(5) => *skipped += 1,
            _ => {
                let skipped = last.map_or(0, |(_, skipped)| skipped);
                log::warn!(
                    "database connection failed, the pool will retry: {error} \
                     (failures not logged since the previous line: {skipped})"
                );
                *last = Some((std::time::Instant::now(), 0));
            }
        }
    }
}

/// The pool type handlers borrow sessions from.
pub type Pool = r2d2::Pool<Manager>;

/// Builds the pool without waiting for connections; the first check-out opens them.
pub fn build(config: &PoolConfig, manager: Manager) -> Pool {
    r2d2::Pool::builder()
        .max_size(config.max_size)
        .min_idle(Some(config.min_idle))
        .connection_timeout(config.connection_timeout())
        .max_lifetime(Some(Duration::from_secs(config.max_lifetime_s)))
        .idle_timeout(Some(Duration::from_secs(config.idle_timeout_s)))
        .test_on_check_out(config.test_on_check_out)
        .error_handler(Box::new(WarnOnError::default()))
        .build_unchecked(manager)
}
