//! The results table, the target checks and BENCHMARKS.md, built from one run's records.
//!
//! Targets are checked and printed as PASS or FAIL but do not change the exit code. Only a
//! broken run does: an HTTP error, a failed pgbench transaction, or a missing result. A broken
//! run leaves BENCHMARKS.md as it was.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::record::{self, Record};

/// Client count at which the throughput and latency targets are checked.
const TARGET_CLIENTS: u32 = 32;
const MIN_CREATE_TO_PGBENCH: f64 = 0.7;
const MAX_CREATE_P99_MS: f64 = 25.0;
const MAX_PEAK_RSS_MIB: f64 = 64.0;
const MAX_DERIVE_US: f64 = 100.0;
const MAX_STARTUP_MS: f64 = 1000.0;
const MIN_AUDITED_TO_UNAUDITED: f64 = 0.85;
/// Labels of the create-evm runs with the audit row and with audit rows discarded.
const WITH_AUDIT: &str = "create-evm-with-audit";
const WITHOUT_AUDIT: &str = "create-evm-without-audit";

/// Separates the generated part of BENCHMARKS.md from hand-written notes, which are kept.
const NOTES_MARKER: &str =
    "<!-- Notes below this line are written by hand and kept when `make bench` rewrites the file. -->";

const SCENARIOS: [&str; 4] = ["create-evm", "create-solana", "get", "list"];

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The records of the run.
    #[arg(long)]
    results: PathBuf,
    /// BENCHMARKS.md to rewrite. Hand-written notes below its marker line are kept.
    #[arg(long)]
    markdown: PathBuf,
}

pub fn run(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let records = record::read_all(&args.results)?;
    let run = Run { records };
    let mut problems = Vec::new();
    let tables = run.tables(&mut problems);
    let targets = run.targets(&mut problems);

    println!("{tables}");
    println!("Targets (on this machine; they do not change the exit code):");
    for target in &targets {
        println!("  {}", target.line());
    }
    if !problems.is_empty() {
        eprintln!("ctrip-bench: the run is broken, so BENCHMARKS.md is left unchanged:");
        for problem in &problems {
            eprintln!("  {problem}");
        }
        return Ok(ExitCode::FAILURE);
    }

    let notes = match std::fs::read_to_string(&args.markdown) {
        Ok(text) => text
            .split_once(NOTES_MARKER)
            .map(|(_, notes)| notes.trim_start_matches('\n').to_owned())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    let markdown = run.markdown(&tables, &targets, &notes);
    std::fs::write(&args.markdown, markdown)
        .with_context(|| format!("cannot write {}", args.markdown.display()))?;
    println!("\nwrote {}", args.markdown.display());
    Ok(ExitCode::SUCCESS)
}

/// One checked target.
struct Target {
    name: String,
    passed: Option<bool>,
    measured: String,
}

impl Target {
    fn line(&self) -> String {
        let verdict = match self.passed {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "N/A ",
        };
        format!("{verdict}  {}: {}", self.name, self.measured)
    }
}

struct Run {
    records: Vec<Record>,
}

impl Run {
    fn of_kind(&self, kind: &'static str) -> impl Iterator<Item = &Record> + '_ {
        self.records
            .iter()
            .filter(move |record| record.kind() == kind)
    }

    fn find(&self, kind: &'static str, pairs: &[(&str, &str)]) -> Option<&Record> {
        self.of_kind(kind).find(|record| {
            pairs
                .iter()
                .all(|(key, value)| record.get(key) == Some(value))
        })
    }

    fn http(&self, scenario: &str, clients: u32) -> Option<&Record> {
        self.find(
            "http",
            &[("scenario", scenario), ("clients", &clients.to_string())],
        )
    }

    fn pgbench(&self, script: &str, clients: u32) -> Option<&Record> {
        self.find(
            "pgbench",
            &[("script", script), ("clients", &clients.to_string())],
        )
    }

    /// Returns the mean requests/s of the HTTP runs recorded under `label`, and how many.
    fn mean_rps(&self, label: &str) -> Option<(f64, usize)> {
        let rates: Vec<f64> = self
            .of_kind("http")
            .filter(|record| record.get("scenario") == Some(label))
            .filter_map(|record| record.number("rps").ok())
            .collect();
        (!rates.is_empty()).then(|| (rates.iter().sum::<f64>() / rates.len() as f64, rates.len()))
    }

    fn client_counts(&self) -> Vec<u32> {
        let counts: BTreeSet<u32> = self
            .of_kind("http")
            .chain(self.of_kind("pgbench"))
            .filter_map(|record| record.get("clients")?.parse().ok())
            .collect();
        counts.into_iter().collect()
    }

    fn field(&self, kind: &'static str, key: &str) -> String {
        self.of_kind(kind)
            .next()
            .and_then(|record| record.get(key))
            .unwrap_or("?")
            .to_owned()
    }

    /// Builds the Markdown tables, adding to `problems` what makes the run broken.
    fn tables(&self, problems: &mut Vec<String>) -> String {
        let counts = self.client_counts();
        let mut text = String::new();
        text.push_str("| Scenario | Clients | Requests/s | p50 ms | p99 ms | max ms | Errors |\n");
        text.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for scenario in SCENARIOS {
            for &clients in &counts {
                let Some(record) = self.http(scenario, clients) else {
                    problems.push(format!("no result for {scenario} at {clients} clients"));
                    continue;
                };
                let errors = record.get("errors").unwrap_or("?");
                if errors != "0" {
                    problems.push(format!(
                        "{scenario} at {clients} clients had {errors} errors"
                    ));
                }
                let _ = writeln!(
                    text,
                    "| {scenario} | {clients} | {} | {} | {} | {} | {errors} |",
                    record.get("rps").unwrap_or("?"),
                    record.get("p50_ms").unwrap_or("?"),
                    record.get("p99_ms").unwrap_or("?"),
                    record.get("max_ms").unwrap_or("?"),
                );
            }
        }

        text.push_str(
            "\n| Clients | ctrip create-evm req/s | pgbench create TPS | ctrip / pgbench \
             | pgbench latency avg ms | pgbench failed |\n",
        );
        text.push_str("| ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for &clients in &counts {
            let Some(pgbench) = self.pgbench("create", clients) else {
                problems.push(format!("no pgbench result at {clients} clients"));
                continue;
            };
            check_pgbench(pgbench, problems);
            let create = self.http("create-evm", clients);
            let ratio = ratio(create, pgbench).map_or("?".to_owned(), |r| format!("{r:.2}x"));
            let _ = writeln!(
                text,
                "| {clients} | {} | {} | {ratio} | {} | {} |",
                create.and_then(|r| r.get("rps")).unwrap_or("?"),
                show(pgbench.number("tps").ok(), 1),
                pgbench.get("latency_avg_ms").unwrap_or("?"),
                pgbench.get("failed").unwrap_or("?"),
            );
        }
        for audited in self
            .of_kind("pgbench")
            .filter(|r| r.get("script") == Some("audited"))
        {
            check_pgbench(audited, problems);
            let clients = audited.get("clients").unwrap_or("?");
            let create = clients
                .parse()
                .ok()
                .and_then(|clients| self.http("create-evm", clients));
            let ratio = ratio(create, audited).map_or("?".to_owned(), |r| format!("{r:.2}x"));
            let _ = writeln!(
                text,
                "| {clients} (with audit row) | {} | {} | {ratio} | {} | {} |",
                create.and_then(|r| r.get("rps")).unwrap_or("?"),
                show(audited.number("tps").ok(), 1),
                audited.get("latency_avg_ms").unwrap_or("?"),
                audited.get("failed").unwrap_or("?"),
            );
        }

        text.push_str("\n| Audit cost run | Clients | Requests/s | p50 ms | p99 ms | Errors |\n");
        text.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
        for record in self.of_kind("http").filter(|record| {
            matches!(
                record.get("scenario"),
                Some(WITH_AUDIT) | Some(WITHOUT_AUDIT)
            )
        }) {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} |",
                record.get("scenario").unwrap_or("?"),
                record.get("clients").unwrap_or("?"),
                record.get("rps").unwrap_or("?"),
                record.get("p50_ms").unwrap_or("?"),
                record.get("p99_ms").unwrap_or("?"),
                record.get("errors").unwrap_or("?"),
            );
        }

        text.push('\n');
        match self.of_kind("rss").next() {
            Some(rss) => {
                let mib = |key| {
                    rss.number(key)
                        .map_or("?".to_owned(), |kib| format!("{:.1}", kib / 1024.0))
                };
                let _ = writeln!(
                    text,
                    "- Peak resident memory of `ctrip serve` (VmHWM): {} MiB (VmRSS at the end: {} MiB)",
                    mib("vmhwm_kib"),
                    mib("vmrss_kib")
                );
            }
            None => problems.push("no memory record of ctrip serve".to_owned()),
        }
        for family in ["evm", "solana"] {
            match self.find("derive", &[("family", family)]) {
                Some(derive) => {
                    let _ = writeln!(
                        text,
                        "- Address derivation, {family}: {} µs per address over {} indexes",
                        derive.get("us_per_address").unwrap_or("?"),
                        derive.get("count").unwrap_or("?")
                    );
                }
                None => problems.push(format!("no derivation result for {family}")),
            }
        }
        match self.of_kind("startup").next() {
            Some(startup) => {
                let _ = writeln!(
                    text,
                    "- Start-up of `ctrip serve` to the first 200 from /ready, migrations current: \
                     median {} ms, min {} ms, max {} ms over {} runs",
                    startup.get("median_ms").unwrap_or("?"),
                    startup.get("min_ms").unwrap_or("?"),
                    startup.get("max_ms").unwrap_or("?"),
                    startup.get("runs").unwrap_or("?"),
                );
            }
            None => problems.push("no start-up result".to_owned()),
        }
        text
    }

    fn targets(&self, problems: &mut Vec<String>) -> Vec<Target> {
        let clients = TARGET_CLIENTS;
        let number = |record: Option<&Record>, key: &str| -> Option<f64> {
            record.and_then(|record| record.number(key).ok())
        };
        let create = self.http("create-evm", clients);
        let create_solana = self.http("create-solana", clients);
        let get = self.http("get", clients);
        let pgbench = self.pgbench("create", clients);
        let mut targets = Vec::new();

        let ratio = create.zip(pgbench).and_then(|(c, p)| ratio(Some(c), p));
        targets.push(Target {
            name: format!(
                "create-evm at {clients} clients >= {MIN_CREATE_TO_PGBENCH}x pgbench create TPS"
            ),
            passed: ratio.map(|r| r >= MIN_CREATE_TO_PGBENCH),
            measured: match ratio {
                Some(r) => format!(
                    "{r:.2}x ({} req/s / {} TPS)",
                    show(number(create, "rps"), 1),
                    show(number(pgbench, "tps"), 1)
                ),
                None => "missing".to_owned(),
            },
        });

        let with = self.mean_rps(WITH_AUDIT);
        let without = self.mean_rps(WITHOUT_AUDIT);
        let audit_ratio = with
            .zip(without)
            .and_then(|((with, _), (without, _))| (without > 0.0).then_some(with / without));
        targets.push(Target {
            name: format!(
                "create-evm at {clients} clients with audit >= {MIN_AUDITED_TO_UNAUDITED}x \
                 without audit"
            ),
            passed: audit_ratio.map(|r| r >= MIN_AUDITED_TO_UNAUDITED),
            measured: match (audit_ratio, with, without) {
                (Some(r), Some((with, runs)), Some((without, _))) => format!(
                    "{r:.2}x ({with:.1} req/s / {without:.1} req/s, mean of {runs} runs each)"
                ),
                _ => "missing".to_owned(),
            },
        });

        let p99_evm = number(create, "p99_ms");
        let p99_solana = number(create_solana, "p99_ms");
        targets.push(Target {
            name: format!("create p99 at {clients} clients <= {MAX_CREATE_P99_MS} ms"),
            passed: p99_evm
                .zip(p99_solana)
                .map(|(evm, solana)| evm.max(solana) <= MAX_CREATE_P99_MS),
            measured: format!(
                "evm {} ms, solana {} ms",
                show(p99_evm, 2),
                show(p99_solana, 2)
            ),
        });

        let error_total: f64 = self
            .of_kind("http")
            .filter_map(|record| record.number("errors").ok())
            .sum::<f64>()
            + self
                .of_kind("pgbench")
                .filter_map(|record| record.number("failed").ok())
                .sum::<f64>();
        targets.push(Target {
            name: "zero errors (HTTP and pgbench)".to_owned(),
            passed: Some(error_total == 0.0),
            measured: format!("{error_total} errors"),
        });

        let get_rps = number(get, "rps");
        let create_rps = number(create, "rps");
        targets.push(Target {
            name: format!("get at {clients} clients >= create-evm requests/s"),
            passed: get_rps.zip(create_rps).map(|(get, create)| get >= create),
            measured: format!(
                "get {} req/s, create-evm {} req/s",
                show(get_rps, 1),
                show(create_rps, 1)
            ),
        });

        let rss_mib = self
            .of_kind("rss")
            .next()
            .and_then(|rss| rss.number("vmhwm_kib").ok())
            .map(|kib| kib / 1024.0);
        targets.push(Target {
            name: format!("peak RSS of ctrip serve <= {MAX_PEAK_RSS_MIB} MiB"),
            passed: rss_mib.map(|mib| mib <= MAX_PEAK_RSS_MIB),
            measured: format!("{} MiB", show(rss_mib, 1)),
        });

        for family in ["evm", "solana"] {
            let micros = number(self.find("derive", &[("family", family)]), "us_per_address");
            targets.push(Target {
                name: format!("derivation {family} <= {MAX_DERIVE_US} µs per address"),
                passed: micros.map(|us| us <= MAX_DERIVE_US),
                measured: format!("{} µs", show(micros, 1)),
            });
        }

        let startup_max = number(self.of_kind("startup").next(), "max_ms");
        targets.push(Target {
            name: format!("start-up to first ready <= {MAX_STARTUP_MS} ms (slowest run)"),
            passed: startup_max.map(|ms| ms <= MAX_STARTUP_MS),
            measured: format!("{} ms", show(startup_max, 1)),
        });

        for target in &targets {
            if target.passed.is_none() {
                problems.push(format!("target without a result: {}", target.name));
            }
        }
        targets
    }

    fn markdown(&self, tables: &str, targets: &[Target], notes: &str) -> String {
        let mut text = String::new();
        text.push_str("# Benchmarks\n\n");
        text.push_str(
            "Written by `make bench` (scripts/bench.sh), which refreshes the numbers. Other \
             work on the same machine changes them from run to run, so compare runs made \
             under the same load.\n\n",
        );

        text.push_str("## Latest run\n\n");
        let _ = writeln!(text, "- Date: {}", self.field("facts", "date"));
        let _ = writeln!(text, "- Commit: {}", self.field("facts", "commit"));
        let _ = writeln!(
            text,
            "- CPU: {} cores, {}",
            self.field("facts", "cores"),
            self.field("facts", "cpu")
        );
        let _ = writeln!(text, "- PostgreSQL: {}", self.field("facts", "postgres"));
        let _ = writeln!(
            text,
            "- Each HTTP scenario: {} s warm-up, then {} s measured; pgbench: {} s per client count\n",
            self.field("facts", "warmup_s"),
            self.field("facts", "duration_s"),
            self.field("facts", "duration_s"),
        );

        text.push_str(tables);

        text.push_str("\n## Targets\n\n```text\n");
        for target in targets {
            let _ = writeln!(text, "{}", target.line());
        }
        text.push_str("```\n\n");

        text.push_str(METHOD);
        text.push('\n');
        text.push_str(NOTES_MARKER);
        text.push_str("\n\n");
        text.push_str(notes);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

/// Returns ctrip's create requests/s divided by pgbench's TPS.
fn ratio(create: Option<&Record>, pgbench: &Record) -> Option<f64> {
    let rps = create?.number("rps").ok()?;
    let tps = pgbench.number("tps").ok()?;
    (tps > 0.0).then_some(rps / tps)
}

/// Adds a problem when pgbench failed transactions or exited with an error.
fn check_pgbench(record: &Record, problems: &mut Vec<String>) {
    let script = record.get("script").unwrap_or("?");
    let clients = record.get("clients").unwrap_or("?");
    if record.get("failed") != Some("0") {
        problems.push(format!(
            "pgbench {script} at {clients} clients failed {} transactions",
            record.get("failed").unwrap_or("?")
        ));
    }
    if record.get("exit") != Some("0") {
        problems.push(format!(
            "pgbench {script} at {clients} clients exited with {}",
            record.get("exit").unwrap_or("?")
        ));
    }
}

fn show(value: Option<f64>, decimals: usize) -> String {
    value.map_or("?".to_owned(), |value| format!("{value:.decimals$}"))
}

const METHOD: &str = "## Method

- PostgreSQL is a throw-away cluster from `scripts/pg-cluster.sh init --fast` on loopback:
  TLS on, scram-sha-256, and fsync, synchronous_commit and full_page_writes off, so the
  numbers show CPU and round trips rather than this machine's disk.
- `ctrip serve` runs the release build with `config.toml` as shipped (8 workers, a pool of
  8, log level info to a file), changed only to `environment = \"testing\"` and the bench
  cluster's port. It connects as `ctrip_runtime` with sslmode verify-full and the client
  certificate, as in production.
- The load comes from `ctrip-bench load` (examples/ctrip-bench) on the same two cores: one
  thread and one keep-alive HTTP/1.1 connection per client, each sending its next request
  as soon as the previous response arrives. Clients connect one after another during the
  warm-up, because tiny_http 0.12 can leave a connection unserved when several arrive at once.
  Latency is per request, from writing the request to reading the whole response.
  Percentiles are nearest-rank over every measured request. Errors count any non-2xx status
  or I/O error, warm-up included.
- get reads payments created by the create-evm scenario at the same client count. list reads
  the first page (20 payments) of a merchant that by then has tens of thousands of payments.
  Both run after `VACUUM ANALYZE`, so the planner sees current statistics, as it would on a
  server that has run for a while.
- pgbench (`-M prepared`, over TLS with verify-full and the client certificate, as
  `ctrip_runtime`) runs bench/create_payment.sql: open the merchant context with
  `ctrip.begin_request` (row-level security requires it), `nextval`, insert the deposit
  address, insert the payment, commit. The row \"with audit row\" runs
  bench/create_payment_audited.sql, which also inserts the audit event as ctrip does.
- Audit cost: after the other scenarios, create-evm runs at 32 clients four times with the
  audit row (A) and four times without (B), in the order ABBA BAAB, so that a steady drift in
  the machine's load falls on both equally. Without means a BEFORE INSERT trigger, added as
  the superuser for those runs only, discards every audit row before ctrip's own triggers.
  The server and its requests are otherwise the same. The target compares the means.
- Memory is VmHWM from /proc/PID/status of `ctrip serve` after all HTTP scenarios.
  Derivation uses the public test mnemonic. Start-up is timed from spawning `ctrip serve` to
  its first 200 from /ready, with migrations already applied.
";
