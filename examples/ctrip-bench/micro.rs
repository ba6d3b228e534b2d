//! Micro-benchmarks: address derivation per family, and `ctrip serve` start-up time.

use std::fs::OpenOptions;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ctrip::wallet::{Family, Mnemonic, Wallet};

use crate::http::{self, Connection};
use crate::record::Record;
use crate::RecordArgs;

/// Hardhat's and Foundry's public test phrase. Production rejects it, but any seed will do here.
const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";

/// Derivations run before timing, so caches and lazily built tables are warm.
const DERIVE_WARMUP: u32 = 200;

/// Pause between two /ready polls.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// How long a start-up or a stop may take before the run is treated as broken.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct DeriveArgs {
    /// Addresses derived per family, from index 0 up.
    #[arg(long, default_value_t = 20_000)]
    count: u32,
    #[command(flatten)]
    record: RecordArgs,
}

/// Derives `count` addresses per family and records the mean time per address.
pub fn derive(args: &DeriveArgs) -> anyhow::Result<ExitCode> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let seed = Mnemonic::parse(TEST_MNEMONIC)?.to_seed("");
    let wallet = Wallet::from_seed(&seed)?;
    for family in Family::ALL {
        for index in 0..DERIVE_WARMUP {
            black_box(wallet.derive(family, index)?);
        }
        let started = Instant::now();
        for index in 0..args.count {
            black_box(wallet.derive(family, black_box(index))?);
        }
        let micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(args.count);
        Record::new("derive")
            .with("family", family.as_str())
            .with("count", args.count)
            .with("us_per_address", format!("{micros:.1}"))
            .append_to(&args.record.results)?;
        eprintln!(
            "ctrip-bench: derive {family}: {micros:.1} µs per address over {} indexes",
            args.count
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct StartupArgs {
    /// The ctrip binary.
    #[arg(long)]
    ctrip: PathBuf,
    /// The config file passed to `ctrip --config`.
    #[arg(long)]
    config: PathBuf,
    /// Loopback address the started servers listen on (set through CTRIP_LISTEN).
    #[arg(long)]
    listen: SocketAddr,
    /// Start-ups to time.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// File that the servers' stdout and stderr are appended to.
    #[arg(long)]
    log: PathBuf,
    #[command(flatten)]
    record: RecordArgs,
}

/// Starts and stops `ctrip serve` `runs` times, timing spawn to the first 200 from /ready.
pub fn startup(args: &StartupArgs) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() {
        bail!("--listen {} is not a loopback address", args.listen);
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut times_ms = Vec::new();
    for _ in 0..args.runs {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.log)
            .with_context(|| format!("cannot open the server log {}", args.log.display()))?;
        let started = Instant::now();
        let mut child = Command::new(&args.ctrip)
            .arg("--config")
            .arg(&args.config)
            .arg("serve")
            .env("CTRIP_LISTEN", args.listen.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", args.ctrip.display()))?;
        let ready = wait_ready(&mut child, args.listen, started);
        let elapsed = started.elapsed();
        stop(&mut child)?;
        ready.with_context(|| format!("see the server log {}", args.log.display()))?;
        times_ms.push(elapsed.as_secs_f64() * 1000.0);
    }
    times_ms.sort_by(f64::total_cmp);
    let median = times_ms[times_ms.len() / 2];
    let max = times_ms[times_ms.len() - 1];
    Record::new("startup")
        .with("runs", args.runs)
        .with("median_ms", format!("{median:.1}"))
        .with("min_ms", format!("{:.1}", times_ms[0]))
        .with("max_ms", format!("{max:.1}"))
        .append_to(&args.record.results)?;
    eprintln!(
        "ctrip-bench: start-up to ready: median {median:.1} ms, max {max:.1} ms over {} runs",
        args.runs
    );
    Ok(ExitCode::SUCCESS)
}

/// Polls /ready until it returns 200, the server exits, or [`STARTUP_LIMIT`] passes.
fn wait_ready(child: &mut Child, addr: SocketAddr, started: Instant) -> anyhow::Result<()> {
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("ctrip serve exited with {status} before it was ready");
        }
        if started.elapsed() > STARTUP_LIMIT {
            bail!(
                "timed out after {} s waiting for ctrip serve to return 200 from /ready",
                STARTUP_LIMIT.as_secs()
            );
        }
        if is_ready(addr) {
            return Ok(());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Returns true when GET /ready at `addr` returns 200.
fn is_ready(addr: SocketAddr) -> bool {
    let request = http::request_bytes(addr, "GET", "/ready", None, None);
    let status = Connection::open(addr, Duration::from_secs(1))
        .and_then(|mut connection| connection.exchange(&request))
        .map(|response| response.status);
    matches!(status, Ok(200))
}

#[derive(clap::Args)]
pub struct WaitReadyArgs {
    /// Address of `ctrip serve`, which must be a loopback address.
    #[arg(long)]
    target: SocketAddr,
    /// Maximum wait, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// Waits until the server at `--target` returns 200 from /ready.
pub fn wait_ready_command(args: &WaitReadyArgs) -> anyhow::Result<ExitCode> {
    if !args.target.ip().is_loopback() {
        bail!("--target {} is not a loopback address", args.target);
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    while Instant::now() < deadline {
        if is_ready(args.target) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "timed out after {1} s waiting for {0} to return 200 from /ready",
        args.target,
        args.timeout
    )
}

/// Sends SIGTERM (through kill(1), since std has no signal API) and waits for the exit.
fn stop(child: &mut Child) -> anyhow::Result<()> {
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + STARTUP_LIMIT;
    if matches!(sent, Ok(status) if status.success()) {
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    child.kill()?;
    child.wait()?;
    bail!(
        "ctrip serve (pid {}) did not stop on SIGTERM and was killed",
        child.id()
    )
}
