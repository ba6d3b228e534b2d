//! Certificate rotation while serving: a thread that reloads the TLS files when they change.
//!
//! The thread compares a digest of the files' contents every `database.tls_watch_interval_ms`,
//! so copies, atomic renames and symlink swaps in `certs/` are all seen. SIGHUP makes it
//! reload at once. A successful reload and a rejected set are both logged and audited. A
//! rejected set leaves the current one in use and is retried when the files change again.
//! The thread also logs certificates close to expiry at start and once a day.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::audit::{self, ActorType, Event, Outcome};
use crate::db::rotation::{expiry_warnings, unix_now, ReloadOutcome};
use crate::db::ConnectParams;
use crate::http::App;

const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(24 * 3600);

enum Signal {
    Reload,
    Stop,
}

/// The running watcher; dropping it without [`TlsWatcher::stop`] leaves the thread running
/// until the process ends.
pub struct TlsWatcher {
    signals: Sender<Signal>,
    thread: JoinHandle<()>,
}

impl TlsWatcher {
    /// Starts watching; `canary` is the login the canary connection of a reload uses.
    pub fn start(app: Arc<App>, canary: ConnectParams, interval: Duration) -> TlsWatcher {
        log_expiry(&app);
        let (signals, received) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tls-watch".to_owned())
            .spawn(move || {
                let mut last_expiry_check = Instant::now();
                loop {
                    let force = match received.recv_timeout(interval) {
                        Ok(Signal::Reload) => true,
                        Err(RecvTimeoutError::Timeout) => false,
                        Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    };
                    reload(&app, &canary, force);
                    if last_expiry_check.elapsed() >= EXPIRY_CHECK_EVERY {
                        log_expiry(&app);
                        last_expiry_check = Instant::now();
                    }
                }
            })
            .expect("cannot start the TLS watch thread");
        TlsWatcher { signals, thread }
    }

    /// Asks for a reload now, as SIGHUP does.
    pub fn reload_now(&self) {
        let _ = self.signals.send(Signal::Reload);
    }

    pub fn stop(self) {
        let _ = self.signals.send(Signal::Stop);
        let _ = self.thread.join();
    }
}

fn reload(app: &App, canary: &ConnectParams, force: bool) {
    match app.tls.reload(canary, force) {
        Ok(ReloadOutcome::Unchanged) => {
            if force {
                log::info!("TLS reload requested: the files are unchanged");
            }
        }
        Ok(ReloadOutcome::Swapped { generation }) => {
            let state = app.tls.current();
            let summary = state.summary.as_ref();
            let client = summary
                .and_then(|s| s.client.as_ref())
                .map(|c| c.sha256.clone());
            let ca: Vec<String> = summary
                .map(|s| s.ca.iter().map(|c| c.sha256.clone()).collect())
                .unwrap_or_default();
            log::info!(
                "TLS files reloaded: generation={generation} client_sha256={} ca_sha256={}",
                client.as_deref().unwrap_or("-"),
                ca.join(",")
            );
            let details =
                json!({"generation": generation, "client_sha256": client, "ca_sha256": ca});
            record(
                app,
                Event::new(ActorType::System, "tls.reloaded", Outcome::Success).details(details),
            );
            log_expiry(app);
        }
        Err(err) => {
            let generation = app.tls.current().generation;
            log::error!("TLS reload rejected, generation {generation} stays in use: {err}");
            let details = json!({"reason": err.to_string(), "generation_in_use": generation});
            record(
                app,
                Event::new(ActorType::System, "tls.reload_failed", Outcome::Failed)
                    .details(details),
            );
        }
    }
}

fn record(app: &App, event: Event) {
    let result = app
        .pool
        .get()
        .map_err(|err| err.to_string())
        .and_then(|mut conn| {
            let (client, _) = conn.parts();
            audit::record(client, &event).map_err(|err| err.to_string())
        });
    if let Err(err) = result {
        log::error!("cannot write the audit row for {}: {err}", event.action);
    }
}

fn log_expiry(app: &App) {
    let state = app.tls.current();
    let Some(summary) = &state.summary else {
        return;
    };
    for (level, message) in expiry_warnings(summary, unix_now()) {
        log::log!(level, "{message}");
    }
}
