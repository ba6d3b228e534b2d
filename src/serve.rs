//! Start-up and shutdown of `ctrip serve`.
//!
//! Order matters: secrets and TLS files are checked before any connection, migrations and the
//! chain sync run as the migration login before the pool opens as the runtime login, and the
//! HTTP port opens last, so a server that accepts requests is ready for them.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ed25519_dalek::SigningKey;

use crate::audit::{self, checkpoint, ActorType, Event, Outcome};
use crate::chains::{self, ChainRegistry};
use crate::config::{Config, Environment};
use crate::db::{self, migrate, pool, ConnectParams, SharedTls};
use crate::http::body::BodySchema;
use crate::http::{self, App, Server};
use crate::payments::CreatePaymentRequest;
use crate::retention;
use crate::tls_watch::TlsWatcher;
use crate::wallet::Wallet;

/// A started server with what the start-up log line reports.
pub struct Running {
    pub server: Server,
    pub app: Arc<App>,
    pub migrations_applied: usize,
    /// Chains the pending audit rows every 100 ms.
    pub audit_chain: Periodic,
    /// Signs the audit chain head every `audit.checkpoint_interval_s`.
    pub checkpoints: Option<Periodic>,
    pub tls_watch: TlsWatcher,
    /// The daily retention job, when a retention period is configured.
    pub retention: Option<retention::Scheduler>,
}

/// Builds everything and starts serving; returns once the port is open.
pub fn start(config: &Config) -> anyhow::Result<Running> {
    let started = Instant::now();
    let wallet = load_wallet(config)?;
    config.check_production_key_file()?;
    let tls = Arc::new(SharedTls::from_config(config).context("invalid database TLS settings")?);
    let chains = ChainRegistry::from_config(&config.chains);

    let migrations = migrate::embedded();
    let applied = if config.server.migrate_on_start {
        let mut owner = tls.connect(&ConnectParams::migration(config)?)?;
        let applied = migrate::apply(&mut owner, &migrations)?;
        chains::sync(&mut owner, &chains)?;
        applied.len()
    } else {
        0
    };
    let audit_key = match &config.audit.key_file {
        Some(path) => Some(checkpoint::load_key(path)?),
        None => None,
    };

    let runtime_params = ConnectParams::runtime(config)?;
    // One direct session first, so a wrong password or host fails at once with its hint
    // instead of after the pool's retries.
    let mut runtime = tls.connect(&runtime_params)?;
    if !config.server.migrate_on_start {
        check_schema_current(&mut runtime, &migrations, &chains)?;
    }
    check_seed(&mut runtime, &wallet)?;
    audit_relaxed_start(config, &mut runtime)?;
    drop(runtime);
    let manager = pool::Manager::new(
        runtime_params.clone(),
        tls.clone(),
        config.pool.skip_test_within(),
    );
    let pool = pool::build(&config.pool, manager);
    // The first session may take longer than a request would wait (TLS, SCRAM), so the
    // start-up check waits for the longer of the two limits.
    let first_timeout = config
        .pool
        .connection_timeout()
        .max(Duration::from_millis(config.database.connect_timeout_ms));
    pool.get_timeout(first_timeout).map_err(|err| {
        anyhow::anyhow!(
            "cannot open a pooled connection as {}: {err}",
            config.database.runtime.user
        )
    })?;

    let mut background_config = config.pool.clone();
    background_config.max_size = 1;
    background_config.min_idle = 1;
    let background = pool::build(
        &background_config,
        pool::Manager::new(
            runtime_params.clone(),
            tls.clone(),
            config.pool.skip_test_within(),
        ),
    );

    let app = Arc::new(App {
        pool,
        background,
        tls,
        wallet,
        chains,
        payments: config.payments.clone(),
        max_body_bytes: config.server.max_body_bytes,
        migrations: migrations.clone(),
        create_payment_schema: BodySchema::of::<CreatePaymentRequest>(),
        openapi: http::openapi::document().to_string(),
        auth_failures: Default::default(),
    });
    let server = Server::start(app.clone(), &config.server.listen, config.server.workers)
        .map_err(anyhow::Error::msg)?;

    let audit_chain = Periodic::start(AUDIT_CHAIN_INTERVAL, audit_chainer(app.clone()));
    let checkpoints = match (audit_key, &config.audit.checkpoint_file) {
        (Some(key), Some(file)) => {
            let (app, file) = (app.clone(), file.clone());
            Some(Periodic::start(
                Duration::from_secs(config.audit.checkpoint_interval_s),
                move |_| write_checkpoint(&app, &key, &file),
            ))
        }
        _ => None,
    };

    let watch_interval = Duration::from_millis(config.database.tls_watch_interval_ms);
    let tls_watch = TlsWatcher::start(app.clone(), runtime_params, watch_interval);
    let retention = retention::Scheduler::start(config, app.tls.clone())?;

    log_summary(
        config,
        &server,
        &app,
        &migrations,
        applied,
        started.elapsed(),
    );
    Ok(Running {
        server,
        app,
        migrations_applied: applied,
        audit_chain,
        checkpoints,
        tls_watch,
        retention,
    })
}

/// With `server.migrate_on_start = false`, refuses to serve a schema or chain list that
/// `ctrip migrate` has not brought up to date, since the runtime login may not change either.
fn check_schema_current(
    client: &mut postgres::Client,
    migrations: &[migrate::Migration],
    chains: &ChainRegistry,
) -> anyhow::Result<()> {
    let lines = migrate::status(client, migrations)?;
    let pending: Vec<String> = lines
        .iter()
        .filter(|line| line.state != migrate::MigrationState::Applied)
        .map(|line| format!("{:04} {:?}", line.version, line.state).to_lowercase())
        .collect();
    if !pending.is_empty() {
        anyhow::bail!(
            "migrations are not current ({}) and server.migrate_on_start is false: run `ctrip \
             migrate` with the migration login first",
            pending.join(", ")
        );
    }
    let rows = client.query("SELECT name FROM ctrip.chains WHERE enabled", &[])?;
    let stored: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    for chain in chains.iter() {
        if !stored.contains(&chain.name) {
            anyhow::bail!(
                "chain {:?} from the config is not in the database: run `ctrip migrate`, which \
                 also writes the configured chains and tokens",
                chain.name
            );
        }
    }
    Ok(())
}

/// Records the seed fingerprint on first start, and refuses a seed other than the recorded one.
fn check_seed(client: &mut postgres::Client, wallet: &Wallet) -> anyhow::Result<()> {
    let configured = wallet
        .fingerprint()
        .context("cannot fingerprint the seed")?;
    client.execute(
        "INSERT INTO ctrip.wallet_seed (fingerprint) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&configured],
    )?;
    let stored: String = client
        .query_one("SELECT fingerprint FROM ctrip.wallet_seed", &[])?
        .get(0);
    if stored != configured {
        anyhow::bail!(
            "the configured mnemonic or passphrase is not the one this database's deposit \
             addresses come from (seed fingerprint in the database {stored}, configured \
             {configured}): start ctrip with the original mnemonic and passphrase"
        );
    }
    Ok(())
}

/// Records a start-up in production with settings that weaken security, and warns about it.
fn audit_relaxed_start(config: &Config, client: &mut postgres::Client) -> anyhow::Result<()> {
    let relaxed = config.relaxed_settings();
    if config.environment != Environment::Production || relaxed.is_empty() {
        return Ok(());
    }
    log::warn!(
        "starting in production with relaxed settings: {}",
        relaxed.join("; ")
    );
    let event = Event::new(
        ActorType::System,
        "server.started_relaxed",
        Outcome::Success,
    )
    .actor(format!("ctrip {}", env!("CARGO_PKG_VERSION")))
    .details(serde_json::json!({ "relaxed": relaxed }));
    audit::record(client, &event)?;
    Ok(())
}

/// A background task run every interval, and once more on stop. The task gets true on that
/// last run.
pub struct Periodic {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Periodic {
    fn start(interval: Duration, mut task: impl FnMut(bool) + Send + 'static) -> Periodic {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || loop {
            let timed_out = matches!(
                stopped.recv_timeout(interval),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            task(!timed_out);
            if !timed_out {
                break;
            }
        });
        Periodic { stop, thread }
    }

    /// Runs the task a last time and ends the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// How often `ctrip serve` chains the pending audit rows. Until a committed row is chained,
/// which normally takes about this long, someone with owner rights could edit it unseen.
const AUDIT_CHAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Records the summaries of suppressed authentication failures of past minutes (of every
/// minute on the last run) and chains pending audit rows. Failures are logged once per minute
/// while they last, because the database may be down. The rows wait and are chained once it
/// is back.
fn audit_chainer(app: Arc<App>) -> impl FnMut(bool) + Send + 'static {
    let mut failing_since: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    move |last| {
        let result = with_pooled_client(&app, |client| {
            crate::http::record_failure_summaries(&app, client, last)?;
            Ok(audit::chain_pending(client, false)?)
        });
        match result {
            Ok(chained) => {
                if let Some(since) = failing_since.take() {
                    log::info!(
                        "audit chaining resumed after {}s and chained {chained} waiting row(s)",
                        since.elapsed().as_secs()
                    );
                    last_warning = None;
                }
            }
            Err(err) => {
                failing_since.get_or_insert_with(Instant::now);
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    log::warn!(
                        "cannot chain pending audit rows, which wait and are chained once this \
                         works again: {err:#}"
                    );
                    last_warning = Some(Instant::now());
                }
            }
        }
    }
}

/// Runs `task` on the background tasks' session.
fn with_pooled_client<T>(
    app: &App,
    task: impl FnOnce(&mut postgres::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut conn = app.background.get()?;
    let (client, _) = conn.parts();
    task(client)
}

fn write_checkpoint(app: &App, key: &SigningKey, file: &Path) {
    let result = with_pooled_client(app, |client| Ok(checkpoint::write(client, key, file)?));
    match result {
        Ok(Some(point)) => {
            log::info!(
                "audit checkpoint written: row={} file={}",
                point.id,
                file.display()
            )
        }
        Ok(None) => log::debug!("audit log empty; no checkpoint written"),
        Err(err) => log::error!(
            "cannot write an audit checkpoint to {}: {err:#}",
            file.display()
        ),
    }
}

fn load_wallet(config: &Config) -> anyhow::Result<Wallet> {
    let mnemonic = config.mnemonic()?;
    let passphrase = config.passphrase()?;
    let seed = mnemonic.to_seed(passphrase.expose());
    Wallet::from_seed(&seed).context("cannot prepare deposit address keys")
}

fn log_summary(
    config: &Config,
    server: &Server,
    app: &App,
    migrations: &[migrate::Migration],
    applied: usize,
    elapsed: Duration,
) {
    let db = &config.database;
    let schema_version = migrations.last().map_or(0, |m| m.version);
    log::info!(
        "ctrip started listen={} workers={} pool_max_size={} database={}:{}/{} tls={} \
         migrations_applied={applied} schema_version={schema_version:04} chains=[{}] \
         environment={} startup_ms={}",
        server.addr,
        config.server.workers,
        config.pool.max_size,
        db.host,
        db.port,
        db.dbname,
        db.sslmode,
        app.chains.summary(),
        config.environment,
        elapsed.as_millis()
    );
}

/// Runs until SIGTERM or SIGINT, then drains in-flight requests and closes the pool.
pub fn run(config: &Config) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let running = start(config)?;
    for signal in signals.forever() {
        if signal == SIGHUP {
            log::info!("SIGHUP received: reloading the TLS files and the log level");
            running.tls_watch.reload_now();
            reload_log_level(config);
            continue;
        }
        break;
    }

    let timeout = Duration::from_secs(config.server.shutdown_timeout_s);
    log::info!(
        "shutting down: draining in-flight requests for up to {}s",
        timeout.as_secs()
    );
    let drained = running.server.stop(timeout);
    if !drained {
        log::warn!(
            "some requests were still running after {}s and were cut off",
            timeout.as_secs()
        );
    }
    running.tls_watch.stop();
    if let Some(retention) = running.retention {
        retention.stop();
    }
    // Last, so it records the failure summaries of the current minute and chains the rows of
    // everything stopped before it. The final checkpoint chains again before it signs.
    running.audit_chain.stop();
    if let Some(checkpoints) = running.checkpoints {
        checkpoints.stop();
    }
    drop(running.app);
    log::info!("ctrip stopped");
    Ok(())
}

/// Applies `log.level` from the config file again; other settings need a restart.
fn reload_log_level(config: &Config) {
    let reloaded = Config::load(std::path::Path::new(&config.origin));
    let result = reloaded.map_err(|err| err.to_string()).and_then(|fresh| {
        crate::logging::set_level(&fresh.log.level).map(|changed| (changed, fresh))
    });
    match result {
        Ok((true, fresh)) => log::info!("log level set to {}", fresh.log.level),
        Ok((false, _)) => log::info!("RUST_LOG is set, so it keeps deciding the log level"),
        Err(err) => log::error!("log level not reloaded: {err}"),
    }
}

/// Opens a session as the migration login, for CLI commands that change the schema or keys.
pub fn migration_client(config: &Config) -> anyhow::Result<postgres::Client> {
    let tls = SharedTls::from_config(config).context("invalid database TLS settings")?;
    let params = ConnectParams::migration(config)?;
    Ok(tls.connect(&params)?)
}

/// Re-exported so the CLI can format a connection failure.
pub use db::error_chain;
