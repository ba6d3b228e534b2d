//! The HTTP API: routing, request ids, the access log line and the server loop.
//!
//! Each request gets an id (the client's `X-Request-Id` when it is sane, else a new UUID),
//! echoed in the response and written in the one info line logged per request. Handlers
//! return `Result<Response, ApiError>`; the error becomes the JSON error body here.

pub mod body;
pub mod error;
pub mod openapi;
mod payments;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rouille::{Request, Response};
use serde_json::json;

use crate::apikeys::AuthenticatedKey;
use crate::audit::{self, ActorType, Event, Outcome};
use crate::chains::ChainRegistry;
use crate::config::PaymentsConfig;
use crate::db::migrate::{self, Migration};
use crate::db::pool::Pool;
use crate::db::SharedTls;
use crate::wallet::Wallet;
use body::BodySchema;
use error::ApiError;

/// Everything request handlers share, built once at start-up.
pub struct App {
    pub pool: Pool,
    /// One session for the background tasks (audit chaining, checkpoints), so that they never
    /// take a session that a request is waiting for.
    pub background: Pool,
    pub tls: Arc<SharedTls>,
    pub wallet: Wallet,
    pub chains: ChainRegistry,
    pub payments: PaymentsConfig,
    pub max_body_bytes: usize,
    pub migrations: Vec<Migration>,
    pub create_payment_schema: BodySchema,
    /// The OpenAPI document, serialized once.
    pub openapi: String,
    /// Limits audit rows and warnings for failed authentication per client address.
    pub auth_failures: FailureLimiter,
}

/// Admits the first failure per client address per minute and counts the rest, so a flood of
/// bad keys costs one audit row and one warning per address and minute, not one each. The
/// counted ones are recorded too, as one summary per address and minute, by
/// [`FailureLimiter::take_summaries`].
#[derive(Default)]
pub struct FailureLimiter {
    state: std::sync::Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    windows: std::collections::HashMap<std::net::IpAddr, FailureWindow>,
    /// Windows replaced by a later minute before a summary was taken.
    finished: Vec<FailureSummary>,
}

struct FailureWindow {
    minute: u64,
    summary: FailureSummary,
}

/// The failures of one client address in one minute that were counted but not recorded.
#[derive(Debug, Clone)]
pub struct FailureSummary {
    pub client: std::net::IpAddr,
    /// Start of the minute, in seconds since 1970.
    pub minute_start: i64,
    pub suppressed: u64,
    /// Counts by reason, such as "unknown API key".
    pub reasons: std::collections::BTreeMap<&'static str, u64>,
    /// Up to [`MAX_SUMMARY_PREFIXES`] distinct key prefixes presented.
    pub key_prefixes: std::collections::BTreeSet<String>,
}

/// Key prefixes kept per summary, so a flood of random keys cannot grow one without bound.
pub const MAX_SUMMARY_PREFIXES: usize = 10;

/// Client addresses tracked at once. Beyond this, windows of past minutes are summarized.
const MAX_TRACKED_CLIENTS: usize = 10_000;

impl FailureLimiter {
    /// Returns true for the first failure of `client` in the current minute, which the caller
    /// records, and false for the rest, which are counted for the minute's summary.
    pub fn admit(&self, client: std::net::IpAddr, reason: &'static str, prefix: &str) -> bool {
        let minute = current_minute();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.windows.len() > MAX_TRACKED_CLIENTS {
            state.finish_before(minute);
        }
        if let Some(window) = state.windows.get_mut(&client) {
            if window.minute == minute {
                let summary = &mut window.summary;
                summary.suppressed += 1;
                *summary.reasons.entry(reason).or_insert(0) += 1;
                if summary.key_prefixes.len() < MAX_SUMMARY_PREFIXES && prefix != "-" {
                    summary.key_prefixes.insert(prefix.to_owned());
                }
                return false;
            }
        }
        let fresh = FailureWindow {
            minute,
            summary: FailureSummary {
                client,
                minute_start: (minute * 60) as i64,
                suppressed: 0,
                reasons: Default::default(),
                key_prefixes: Default::default(),
            },
        };
        if let Some(old) = state.windows.insert(client, fresh) {
            if old.summary.suppressed > 0 {
                state.finished.push(old.summary);
            }
        }
        true
    }

    /// Takes the summaries of minutes that have ended, or of every window with `all`, as on
    /// shutdown. Windows without suppressed failures give none.
    pub fn take_summaries(&self, all: bool) -> Vec<FailureSummary> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = if all { u64::MAX } else { current_minute() };
        state.finish_before(before);
        std::mem::take(&mut state.finished)
    }
}

impl LimiterState {
    /// Moves the windows of minutes before `minute` to `finished`.
    fn finish_before(&mut self, minute: u64) {
        let ended: Vec<std::net::IpAddr> = self
            .windows
            .iter()
            .filter(|(_, window)| window.minute < minute)
            .map(|(client, _)| *client)
            .collect();
        for client in ended {
            if let Some(window) = self.windows.remove(&client) {
                if window.summary.suppressed > 0 {
                    self.finished.push(window.summary);
                }
            }
        }
    }
}

fn current_minute() -> u64 {
    crate::db::rotation::unix_now().max(0) as u64 / 60
}

/// Records the summaries of suppressed authentication failures, one audit row each, and
/// returns how many it wrote. On a database error the summaries not yet written are kept.
pub fn record_failure_summaries(
    app: &App,
    client: &mut postgres::Client,
    all: bool,
) -> Result<usize, postgres::Error> {
    let summaries = app.auth_failures.take_summaries(all);
    for (written, summary) in summaries.iter().enumerate() {
        let minute_start = chrono::DateTime::from_timestamp(summary.minute_start, 0)
            .map(|at| at.to_rfc3339())
            .unwrap_or_default();
        let event = Event::new(ActorType::System, "auth.failed", Outcome::Denied)
            .actor("failure-summary")
            .source(summary.client.to_string())
            .details(json!({
                "suppressed": summary.suppressed,
                "minute_start": minute_start,
                "reasons": summary.reasons,
                "key_prefixes": summary.key_prefixes,
            }));
        if let Err(err) = audit::record(client, &event) {
            let mut state = app
                .auth_failures
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.finished.extend(summaries[written..].iter().cloned());
            return Err(err);
        }
    }
    Ok(summaries.len())
}

/// Facts about a request besides its contents, for audit rows and logs.
pub struct RequestContext {
    pub request_id: String,
    pub client_ip: String,
    pub path: String,
}

impl RequestContext {
    /// Starts an audit event by the request's API key, for its merchant.
    pub fn event(&self, key: &AuthenticatedKey, action: &'static str, outcome: Outcome) -> Event {
        Event::new(ActorType::ApiKey, action, outcome)
            .actor(key.id.to_string())
            .merchant(key.merchant_id)
            .source(self.client_ip.clone())
            .request(self.request_id.clone())
    }
}

/// Handles one request end to end: id, routing, error body, access log.
pub fn handle(app: &App, request: &Request) -> Response {
    let started = Instant::now();
    let request_id = request_id(request);
    let context = RequestContext {
        request_id: request_id.clone(),
        client_ip: request.remote_addr().ip().to_string(),
        path: request.raw_url().split('?').next().unwrap_or("").to_owned(),
    };

    let outcome = catch_unwind(AssertUnwindSafe(|| route(app, request, &context)))
        .unwrap_or_else(|_| Err(ApiError::Internal("the handler panicked".to_owned())));
    let response = match outcome {
        Ok(response) => response,
        Err(err) => {
            log_error(&err, &request_id, request);
            err.response()
        }
    };

    let response = response.with_unique_header("X-Request-Id", request_id.clone());
    log::info!(
        "request_id={request_id} method={} path={} status={} elapsed_ms={:.1} client={}",
        request.method(),
        log_path(&context.path),
        response.status_code,
        started.elapsed().as_secs_f64() * 1000.0,
        request.remote_addr().ip(),
    );
    response
}

fn log_error(err: &ApiError, request_id: &str, request: &Request) {
    let detail = err.log_detail();
    match err {
        ApiError::Internal(_) => log::error!("request_id={request_id} internal error: {detail}"),
        ApiError::Unavailable(_) => {
            log::warn!("request_id={request_id} database unavailable: {detail}")
        }
        ApiError::Forbidden(scope) => log::warn!(
            "request_id={request_id} scope denied: scope={scope} client={}",
            request.remote_addr().ip()
        ),
        // Logged (rate-limited) where the audit row is written, in payments::authorize.
        ApiError::Unauthorized(_) => log::debug!("request_id={request_id} rejected: {detail}"),
        _ => log::debug!("request_id={request_id} rejected: {detail}"),
    }
}

/// Maximum length of the request target (path and query), in bytes.
const MAX_TARGET_BYTES: usize = 4096;

/// Returns the path for the access log, cut to 200 characters so a huge path cannot flood it.
fn log_path(path: &str) -> String {
    if path.len() <= 200 {
        return path.to_owned();
    }
    let mut end = 200;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...({} bytes)", &path[..end], path.len())
}

/// Rejects requests whose framing is ambiguous or oversized before any routing: a proxy in
/// front could read conflicting Content-Length headers differently (request smuggling).
fn check_framing(request: &Request) -> Result<(), ApiError> {
    if request.raw_url().len() > MAX_TARGET_BYTES {
        return Err(ApiError::UriTooLong(MAX_TARGET_BYTES));
    }
    let lengths = request
        .headers()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Content-Length"))
        .count();
    let chunked = request
        .headers()
        .any(|(name, _)| name.eq_ignore_ascii_case("Transfer-Encoding"));
    if lengths > 1 || (lengths == 1 && chunked) {
        return Err(ApiError::BadRequest(
            "conflicting Content-Length or Transfer-Encoding headers: send exactly one".to_owned(),
        ));
    }
    Ok(())
}

/// Parses the query string, rejecting parameters not in `allowed` and repeated ones, so a
/// typo in a filter is an error instead of an unfiltered response.
pub fn strict_query(
    request: &Request,
    allowed: &[&str],
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let mut params = std::collections::HashMap::new();
    for (key, value) in form_urlencoded::parse(request.raw_query_string().as_bytes()) {
        let invalid = |message: String| {
            ApiError::InvalidQuery(crate::payments::FieldError::new(&key, message))
        };
        if !allowed.contains(&key.as_ref()) {
            let expected = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err(invalid(format!(
                "unknown query parameter {}: expected {expected}",
                crate::payments::excerpt(&key)
            )));
        }
        if params.contains_key(key.as_ref()) {
            return Err(invalid(format!(
                "query parameter {key} is repeated: send it once"
            )));
        }
        params.insert(key.into_owned(), value.into_owned());
    }
    Ok(params)
}

/// Accepts the client's request id when it is 1 to 128 visible, safe characters.
fn request_id(request: &Request) -> String {
    match request.header("X-Request-Id") {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            id.to_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

fn route(app: &App, request: &Request, context: &RequestContext) -> Result<Response, ApiError> {
    check_framing(request)?;
    let path = request.raw_url().split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = request.method();

    match segments.as_slice() {
        ["health"] => only_get(method).map(|()| Response::json(&json!({"status": "ok"}))),
        ["ready"] => only_get(method).map(|()| ready(app)),
        ["api", "v1", "openapi.json"] => {
            only_get(method).map(|()| Response::from_data("application/json", app.openapi.clone()))
        }
        ["api", "v1", "payments"] => match method {
            "POST" => payments::create(app, request, context),
            "GET" | "HEAD" => payments::list(app, request, context),
            _ => Err(ApiError::MethodNotAllowed("GET, POST")),
        },
        ["api", "v1", "payments", id] => match method {
            "GET" | "HEAD" => payments::get(app, request, context, id),
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        ["api", "v1", "payments", id, "erase"] => match method {
            "POST" => payments::erase(app, request, context, id),
            _ => Err(ApiError::MethodNotAllowed("POST")),
        },
        _ => Err(ApiError::NotFound(format!(
            "no route for {}: see /api/v1/openapi.json",
            crate::payments::excerpt(path)
        ))),
    }
}

fn only_get(method: &str) -> Result<(), ApiError> {
    match method {
        "GET" | "HEAD" => Ok(()),
        _ => Err(ApiError::MethodNotAllowed("GET")),
    }
}

/// Describes the TLS set in use: generation, fingerprints, days to expiry, last reload.
fn tls_status(app: &App) -> serde_json::Value {
    let tls = app.tls.current();
    let now = crate::db::rotation::unix_now();
    let describe = |cert: &crate::db::tls::CertSummary| {
        json!({
            "sha256": cert.sha256,
            "subject": cert.subject,
            "serial": cert.serial,
            "days_until_expiry": cert.days_left(now),
        })
    };
    let summary = tls.summary.as_ref();
    json!({
        "sslmode": app.tls.mode().as_str(),
        "generation": tls.generation,
        "ca": summary.map(|s| s.ca.iter().map(describe).collect::<Vec<_>>()),
        "client": summary.and_then(|s| s.client.as_ref()).map(describe),
        "last_reload": app.tls.last_reload(),
    })
}

/// Returns 200 when a pooled session responds and every migration is applied, else 503.
fn ready(app: &App) -> Response {
    let tls_json = tls_status(app);
    let check = || -> Result<bool, String> {
        let mut conn = app
            .pool
            .get()
            .map_err(|err| format!("no database connection: {err}"))?;
        let (client, _) = conn.parts();
        migrate::is_current(client, &app.migrations).map_err(|err| err.to_string())
    };
    match check() {
        Ok(true) => Response::json(&json!({"status": "ready", "migrations": "current", "tls": tls_json})),
        Ok(false) => Response::json(&json!({
            "status": "not_ready", "reason": "migrations are not current: run `ctrip migrate`", "tls": tls_json
        }))
        .with_status_code(503),
        Err(detail) => {
            // The detail names hosts and logins, so it goes to the log, not to the client.
            log::warn!("readiness check failed: {detail}");
            let reason = "the database is unavailable; the server log has the cause";
            Response::json(&json!({"status": "not_ready", "reason": reason, "tls": tls_json}))
                .with_status_code(503)
                .with_additional_header("Retry-After", "1")
        }
    }
}

/// Sets TCP_NODELAY on the listening socket bound to `addr`, which Linux copies to every
/// connection it accepts.
///
/// tiny_http writes a response longer than its 1,024-byte buffer in two writes. With Nagle's
/// algorithm on, the second waits until the client ACKs the first, and clients delay that ACK
/// by up to 40 ms. rouille binds the socket itself and does not expose it.
fn disable_nagle(addr: SocketAddr) -> std::io::Result<()> {
    with_listener(addr, |socket| socket.set_tcp_nodelay(true))
}

/// Returns whether the listening socket bound to `addr` has TCP_NODELAY set.
pub fn listener_nodelay(addr: SocketAddr) -> std::io::Result<bool> {
    with_listener(addr, |socket| socket.tcp_nodelay())
}

/// Runs `action` on this process's listening socket bound to `addr`, found among the
/// descriptors in /proc/self/fd by its address.
fn with_listener<T>(
    addr: SocketAddr,
    action: impl FnOnce(&socket2::SockRef<'_>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for getsockname, getsockopt and setsockopt,
        // which fail without effect on a descriptor that is closed or not a socket.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let bound = socket.local_addr().ok().and_then(|local| local.as_socket());
        if bound == Some(addr) && socket.is_listener().unwrap_or(false) {
            return action(&socket);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no listening socket bound to {addr} in /proc/self/fd"),
    ))
}

/// A running HTTP server; [`Server::stop`] drains it.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `listen` and serves `app` on `workers` threads, in a background thread.
    pub fn start(app: Arc<App>, listen: &str, workers: usize) -> Result<Server, String> {
        let handler_app = app.clone();
        let server = rouille::Server::new(listen, move |request| handle(&handler_app, request))
            .map_err(|err| format!("cannot listen on {listen}: {err}"))?
            .pool_size(workers);
        let addr = server.server_addr();
        if let Err(err) = disable_nagle(addr) {
            log::warn!(
                "cannot set TCP_NODELAY on {addr}, so responses over 1 KiB may wait about 40 ms \
                 for the client's delayed ACK: {err}"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("http-accept".to_owned())
            .spawn(move || {
                while !stop_flag.load(Ordering::SeqCst) {
                    server.poll_timeout(Duration::from_millis(100));
                }
                // Accepting has stopped; wait for the requests already handed to workers.
                server.join();
            })
            .map_err(|err| format!("cannot start the HTTP thread: {err}"))?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting and waits up to `timeout` for in-flight requests to finish.
    /// Returns false when they did not finish in time.
    pub fn stop(mut self, timeout: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        thread.join().is_ok()
    }

    /// Blocks until the server thread ends (it ends only after `stop`).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_after_first_failure() {
        let limiter = FailureLimiter::default();
        let client: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let other: std::net::IpAddr = "192.0.2.8".parse().unwrap();

        let first = limiter.admit(client, "unknown API key", "ctrip_AAAAAAAA");
        let second = limiter.admit(client, "unknown API key", "ctrip_BBBBBBBB");
        let third = limiter.admit(client, "malformed API key", "-");
        let elsewhere = limiter.admit(other, "missing API key", "-");
        let during_minute = limiter.take_summaries(false);
        let on_stop = limiter.take_summaries(true);

        assert!(first);
        assert!(!second);
        assert!(!third);
        assert!(elsewhere);
        // The minute can turn between the calls above, which summarizes it early.
        assert!(during_minute.len() <= 1, "{during_minute:?}");
        let summaries: Vec<_> = during_minute.into_iter().chain(on_stop).collect();
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        let summary = &summaries[0];
        assert_eq!(summary.client, client);
        assert_eq!(summary.suppressed, 2);
        assert_eq!(summary.reasons["unknown API key"], 1);
        assert_eq!(summary.reasons["malformed API key"], 1);
        assert_eq!(
            summary.key_prefixes.iter().collect::<Vec<_>>(),
            ["ctrip_BBBBBBBB"]
        );
        assert!(limiter.take_summaries(true).is_empty());
    }
}
