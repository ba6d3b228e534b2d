//! HTTP load: concurrent clients, one thread and one keep-alive connection each, send one
//! scenario's requests back to back to a `ctrip serve` on loopback.
//!
//! A run is bounded twice: by time (warm-up plus measured seconds) and by a total request
//! count. Only requests that start after the warm-up are measured. Every non-2xx response and
//! every I/O error counts as an error, warm-up included; after an I/O error the client opens a
//! new connection.
//!
//! Clients connect one after another: each opens its connection once the previous client has
//! its first response. tiny_http 0.12, under rouille, can leave a connection unread when
//! several arrive at once while others stay open, and the request on it then waits until
//! another connection closes. `--connect-at-once` reproduces that.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;

use crate::http::{self, Connection};
use crate::record::Record;
use crate::RecordArgs;

/// Maximum number of payment ids kept from create responses, for the get scenario.
const MAX_SAVED_IDS: usize = 20_000;

/// Bounds a connect, a write and a read of one response.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after an I/O error, so a stopped server is not hammered with reconnects.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Maximum number of error messages printed per run. Further errors are only counted.
const MAX_PRINTED_ERRORS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// POST /api/v1/payments with {"chain":"ethereum","amount":"1000"}.
    CreateEvm,
    /// POST /api/v1/payments with {"chain":"solana","amount":"1000"}.
    CreateSolana,
    /// GET /api/v1/payments/{id}, with ids from --ids-file.
    Get,
    /// GET /api/v1/payments (the first page, 20 payments).
    List,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::CreateEvm => "create-evm",
            Scenario::CreateSolana => "create-solana",
            Scenario::Get => "get",
            Scenario::List => "list",
        }
    }

    fn create_body(self) -> Option<&'static str> {
        match self {
            Scenario::CreateEvm => Some(r#"{"chain":"ethereum","amount":"1000"}"#),
            Scenario::CreateSolana => Some(r#"{"chain":"solana","amount":"1000"}"#),
            Scenario::Get | Scenario::List => None,
        }
    }
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Address of `ctrip serve`, which must be a loopback address.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Concurrent clients, each with its own thread and connection.
    #[arg(long)]
    clients: usize,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured after the warm-up.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Maximum number of requests over the whole run, warm-up included.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// Payment ids, one per line: written by the create scenarios, read by get.
    #[arg(long)]
    ids_file: Option<PathBuf>,
    /// Open every client's connection at the same moment instead of one after another.
    #[arg(long)]
    connect_at_once: bool,
    /// Name to record instead of the scenario's, to tell apart runs of one scenario under
    /// different server settings.
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    record: RecordArgs,
}

/// Results of one client thread.
#[derive(Default)]
struct ClientReport {
    /// Latency of each measured request, in microseconds.
    latencies_us: Vec<u32>,
    /// When the thread's last request finished.
    finished: Option<Instant>,
    errors: u64,
    warmup_errors: u64,
    ids: Vec<String>,
}

/// Settings and shared state of one run, read by every client thread.
struct Plan {
    target: SocketAddr,
    scenario: Scenario,
    authorization: String,
    ids: Vec<String>,
    measure_from: Instant,
    stop_at: Instant,
    max_requests: u64,
    sent: AtomicU64,
    printed_errors: AtomicU64,
    /// Position in `ids` of the next get, shared so the clients go through every id in turn.
    next_id: AtomicU64,
    ids_per_client: usize,
    /// Order in which clients connect, or `None` with --connect-at-once.
    ramp: Option<Ramp>,
}

/// Lets client N connect only after clients 0 to N-1 have their first response.
#[derive(Default)]
struct Ramp {
    ready: Mutex<usize>,
    changed: Condvar,
}

impl Ramp {
    /// Waits until `client` clients are ready, or at most [`IO_TIMEOUT`].
    fn wait_turn(&self, client: usize) {
        let ready = self
            .ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = self
            .changed
            .wait_timeout_while(ready, IO_TIMEOUT, |ready| *ready < client);
    }

    fn mark_ready(&self) {
        let mut ready = self
            .ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *ready += 1;
        self.changed.notify_all();
    }
}

pub fn run(args: &LoadArgs) -> anyhow::Result<ExitCode> {
    if !args.target.ip().is_loopback() {
        bail!(
            "--target {} is not a loopback address: the benchmark only sends to this machine",
            args.target
        );
    }
    if !(1..=1024).contains(&args.clients) {
        bail!("--clients {} is out of range: use 1 to 1024", args.clients);
    }
    if !(args.duration > 0.0 && args.duration <= 600.0 && (0.0..=60.0).contains(&args.warmup)) {
        bail!("--duration must be in (0, 600] and --warmup in [0, 60] seconds");
    }
    let key = std::env::var("CTRIP_BENCH_KEY")
        .context("CTRIP_BENCH_KEY is not set: export the API key that the load should use")?;
    let ids = match args.scenario {
        Scenario::Get => read_ids(args.ids_file.as_ref())?,
        _ => Vec::new(),
    };

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let plan = Arc::new(Plan {
        target: args.target,
        scenario: args.scenario,
        authorization: format!("Bearer {key}"),
        ids,
        measure_from,
        stop_at: measure_from + Duration::from_secs_f64(args.duration),
        max_requests: args.max_requests,
        sent: AtomicU64::new(0),
        printed_errors: AtomicU64::new(0),
        next_id: AtomicU64::new(0),
        ids_per_client: MAX_SAVED_IDS.div_ceil(args.clients),
        ramp: (!args.connect_at_once).then(Ramp::default),
    });
    let threads: Vec<_> = (0..args.clients)
        .map(|client| {
            let plan = plan.clone();
            std::thread::Builder::new()
                .name(format!("client-{client}"))
                .spawn(move || run_client(&plan, client))
                .context("cannot start a client thread")
        })
        .collect::<anyhow::Result<_>>()?;
    let reports: Vec<ClientReport> = threads
        .into_iter()
        .map(|thread| thread.join().expect("client threads do not panic"))
        .collect();

    let summary = Summary::of(&reports, measure_from);
    if let Some(path) = &args.ids_file {
        if args.scenario.create_body().is_some() {
            write_ids(path, &reports)?;
        }
    }
    let name = args.label.as_deref().unwrap_or(args.scenario.name());
    let record = Record::new("http")
        .with("scenario", name)
        .with("clients", args.clients)
        .with("requests", summary.requests)
        .with("seconds", format!("{:.3}", summary.seconds))
        .with("rps", format!("{:.1}", summary.rps()))
        .with("p50_ms", format!("{:.2}", summary.percentile_ms(0.50)))
        .with("p99_ms", format!("{:.2}", summary.percentile_ms(0.99)))
        .with("max_ms", format!("{:.2}", summary.max_ms()))
        .with("errors", summary.errors);
    record.append_to(&args.record.results)?;
    eprintln!(
        "ctrip-bench: {} clients={} requests={} rps={:.1} p50={:.2}ms p99={:.2}ms max={:.2}ms \
         errors={} (warm-up: {})",
        name,
        args.clients,
        summary.requests,
        summary.rps(),
        summary.percentile_ms(0.50),
        summary.percentile_ms(0.99),
        summary.max_ms(),
        summary.errors,
        summary.warmup_errors,
    );
    Ok(if summary.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn run_client(plan: &Plan, client: usize) -> ClientReport {
    let mut report = ClientReport::default();
    let mut connection: Option<Connection> = None;
    let body = plan.scenario.create_body();
    let mut waiting_for_first_response = plan.ramp.is_some();
    if let Some(ramp) = &plan.ramp {
        ramp.wait_turn(client);
    }
    loop {
        let started = Instant::now();
        if started >= plan.stop_at || plan.sent.fetch_add(1, Ordering::Relaxed) >= plan.max_requests
        {
            break;
        }
        let path = match plan.scenario {
            Scenario::CreateEvm | Scenario::CreateSolana | Scenario::List => {
                "/api/v1/payments".to_owned()
            }
            Scenario::Get => {
                let next = plan.next_id.fetch_add(1, Ordering::Relaxed) as usize;
                format!("/api/v1/payments/{}", plan.ids[next % plan.ids.len()])
            }
        };
        let method = if body.is_some() { "POST" } else { "GET" };
        let request =
            http::request_bytes(plan.target, method, &path, Some(&plan.authorization), body);

        let outcome = match connection.as_mut() {
            Some(open) => open.exchange(&request),
            None => Connection::open(plan.target, IO_TIMEOUT).and_then(|mut opened| {
                let response = opened.exchange(&request);
                connection = Some(opened);
                response
            }),
        };
        let finished = Instant::now();
        report.finished = Some(finished);
        let measured = started >= plan.measure_from;
        if measured {
            let micros = finished.duration_since(started).as_micros();
            report
                .latencies_us
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
        let failure = match outcome {
            Ok(response) => {
                if response.close {
                    connection = None;
                }
                if (200..300).contains(&response.status) {
                    if body.is_some() && report.ids.len() < plan.ids_per_client {
                        if let Some(id) = payment_id(&response.body) {
                            report.ids.push(id);
                        }
                    }
                    None
                } else {
                    let text = String::from_utf8_lossy(&response.body);
                    Some(format!(
                        "{method} {path}: status {}: {text}",
                        response.status
                    ))
                }
            }
            Err(err) => {
                connection = None;
                std::thread::sleep(RECONNECT_PAUSE);
                Some(format!("{method} {path}: {err}"))
            }
        };
        if waiting_for_first_response {
            waiting_for_first_response = false;
            if let Some(ramp) = &plan.ramp {
                ramp.mark_ready();
            }
        }
        if let Some(message) = failure {
            if measured {
                report.errors += 1;
            } else {
                report.warmup_errors += 1;
            }
            if plan.printed_errors.fetch_add(1, Ordering::Relaxed) < MAX_PRINTED_ERRORS {
                eprintln!("ctrip-bench: client {client}: {message}");
            }
        }
    }
    if waiting_for_first_response {
        if let Some(ramp) = &plan.ramp {
            ramp.mark_ready();
        }
    }
    report
}

fn payment_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value.get("id")?.as_str()?.to_owned())
}

fn read_ids(path: Option<&PathBuf>) -> anyhow::Result<Vec<String>> {
    let path = path.context("--ids-file is required for the get scenario")?;
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read payment ids from {}", path.display()))?;
    let ids: Vec<String> = text.lines().map(str::to_owned).collect();
    if ids.is_empty() {
        bail!(
            "{} contains no payment ids: run a create scenario with the same --ids-file first",
            path.display()
        );
    }
    Ok(ids)
}

fn write_ids(path: &PathBuf, reports: &[ClientReport]) -> anyhow::Result<()> {
    let mut file = fs::File::create(path)
        .with_context(|| format!("cannot write payment ids to {}", path.display()))?;
    for id in reports.iter().flat_map(|report| &report.ids) {
        writeln!(file, "{id}")?;
    }
    Ok(())
}

/// Throughput, latency and errors of a whole run.
struct Summary {
    requests: usize,
    seconds: f64,
    /// Every measured latency, sorted, in microseconds.
    sorted_us: Vec<u32>,
    /// Errors of the whole run, warm-up included, because any error means the run is broken.
    errors: u64,
    warmup_errors: u64,
}

impl Summary {
    fn of(reports: &[ClientReport], measure_from: Instant) -> Summary {
        let mut sorted_us: Vec<u32> = reports
            .iter()
            .flat_map(|report| report.latencies_us.iter().copied())
            .collect();
        sorted_us.sort_unstable();
        let last = reports.iter().filter_map(|report| report.finished).max();
        let seconds = last.map_or(0.0, |last| {
            last.saturating_duration_since(measure_from).as_secs_f64()
        });
        let measured_errors: u64 = reports.iter().map(|report| report.errors).sum();
        let warmup_errors: u64 = reports.iter().map(|report| report.warmup_errors).sum();
        Summary {
            requests: sorted_us.len(),
            seconds,
            sorted_us,
            errors: measured_errors + warmup_errors,
            warmup_errors,
        }
    }

    fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Returns the nearest-rank percentile `fraction` (0 to 1) in milliseconds.
    fn percentile_ms(&self, fraction: f64) -> f64 {
        if self.sorted_us.is_empty() {
            return 0.0;
        }
        let rank = (fraction * self.sorted_us.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.sorted_us.len()) - 1;
        f64::from(self.sorted_us[index]) / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.sorted_us
            .last()
            .map_or(0.0, |micros| f64::from(*micros) / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary_of(latencies_us: Vec<u32>) -> Summary {
        let mut sorted_us = latencies_us;
        sorted_us.sort_unstable();
        Summary {
            requests: sorted_us.len(),
            seconds: 1.0,
            sorted_us,
            errors: 0,
            warmup_errors: 0,
        }
    }

    #[test]
    fn percentile_nearest_rank() {
        let summary = summary_of((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!(summary.percentile_ms(0.50), 50.0);
        assert_eq!(summary.percentile_ms(0.99), 99.0);
        assert_eq!(summary.max_ms(), 100.0);
    }

    #[test]
    fn percentile_of_one_sample() {
        let summary = summary_of(vec![2500]);
        assert_eq!(summary.percentile_ms(0.99), 2.5);
    }

    #[test]
    fn payment_id_from_body() {
        let body = br#"{"id":"01a24114-4282-77ba-bde5-763cd30773f8","chain":"ethereum"}"#;
        assert_eq!(
            payment_id(body).as_deref(),
            Some("01a24114-4282-77ba-bde5-763cd30773f8")
        );
        assert_eq!(payment_id(b"not json"), None);
    }
}
