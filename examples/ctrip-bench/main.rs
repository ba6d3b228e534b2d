//! The benchmark tool behind `make bench` (scripts/bench.sh).
//!
//! `load` drives a running `ctrip serve` over keep-alive HTTP/1.1 on loopback, `derive` times
//! address derivation, `startup` times `ctrip serve` from spawn to its first 200 from /ready,
//! and `report` turns the records these write into the results table and BENCHMARKS.md.
//! Each measuring command appends one record per result to a file shared by the whole run.
//!
//! It is an example rather than a binary of the package, so `cargo install` never ships it.

mod http;
mod load;
mod micro;
mod race;
mod record;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ctrip-bench",
    about = "Benchmarks of ctrip (run through `make bench`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send one scenario's requests from concurrent keep-alive clients and record throughput,
    /// latency and errors. The API key comes from the CTRIP_BENCH_KEY environment variable.
    Load(load::LoadArgs),
    /// Time address derivation per family with the public test mnemonic.
    Derive(micro::DeriveArgs),
    /// Time `ctrip serve` from spawn to the first 200 from /ready.
    Startup(micro::StartupArgs),
    /// Wait until a running `ctrip serve` returns 200 from /ready.
    WaitReady(micro::WaitReadyArgs),
    /// Show tiny_http leaving a connection unread when many arrive at once (exit 1 if so).
    ConnectRace(race::RaceArgs),
    /// Print the results table with target checks and write BENCHMARKS.md.
    Report(report::ReportArgs),
}

/// Arguments every measuring command shares.
#[derive(clap::Args)]
pub struct RecordArgs {
    /// File that the result records are appended to.
    #[arg(long)]
    results: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Load(args) => load::run(&args),
        Command::Derive(args) => micro::derive(&args),
        Command::Startup(args) => micro::startup(&args),
        Command::WaitReady(args) => micro::wait_ready_command(&args),
        Command::ConnectRace(args) => race::run(&args),
        Command::Report(args) => report::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ctrip-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
