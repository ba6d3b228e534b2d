//! The `ctrip` binary: migrate, api-key, serve start-up and shutdown, config errors.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{base_config, cluster, TestDb};

pub fn write_config(table: &toml::Table) -> PathBuf {
    cluster().write_file("config.toml", &toml::to_string(table).unwrap(), 0o600)
}

pub fn ctrip(config: &PathBuf, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ctrip"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `ctrip serve` child process on port 0; its stderr goes to the run's log directory.
pub struct ServerProcess {
    child: Child,
    pub base: String,
    pub log_path: PathBuf,
}

impl ServerProcess {
    pub fn start(db: &TestDb) -> ServerProcess {
        ServerProcess::start_with(db, &base_config(db))
    }

    /// Starts `ctrip serve` with the config `table`.
    pub fn start_with(_db: &TestDb, table: &toml::Table) -> ServerProcess {
        let config = write_config(table);
        let log_path = cluster()
            .dir
            .join("logs")
            .join(format!("serve-{}.log", uuid::Uuid::new_v4().simple()));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ctrip"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("RUST_LOG")
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let base = wait_for_listen(&log_path);
        ServerProcess {
            child,
            base,
            log_path,
        }
    }

    pub fn signal(&self, name: &str) {
        Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap().code()
    }
}

fn wait_for_listen(log_path: &PathBuf) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let file = std::fs::File::open(log_path).unwrap();
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("ctrip started listen=").nth(1) {
                return format!("http://{}", rest.split_whitespace().next().unwrap());
            }
            if line.contains("error:") {
                panic!("ctrip serve failed: {line}");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "ctrip serve did not start within 30 s; see {}",
        log_path.display()
    );
}

#[test]
fn migrate_applies_then_reports_current() {
    let db = TestDb::create();
    let config = write_config(&base_config(&db));

    let first = ctrip(&config, &["migrate"]);
    let second = ctrip(&config, &["migrate"]);
    let status = ctrip(&config, &["migrate", "status"]);

    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("applied 0001_payments"),
        "{}",
        stdout(&first)
    );
    assert!(
        stdout(&second).contains("migrations are current"),
        "{}",
        stdout(&second)
    );
    assert!(
        stdout(&status).contains("0001     applied  payments"),
        "{}",
        stdout(&status)
    );
}

#[test]
fn edited_migration_stops_startup() {
    let db = TestDb::create();
    let config = write_config(&base_config(&db));
    assert!(ctrip(&config, &["migrate"]).status.success());
    db.owner()
        .execute(
            "UPDATE ctrip.schema_migrations SET checksum = 'f00d' WHERE version = 1",
            &[],
        )
        .unwrap();

    let serve = ctrip(&config, &["serve"]);
    let status = ctrip(&config, &["migrate", "status"]);

    assert_eq!(serve.status.code(), Some(1));
    let message = stderr(&serve);
    let error_lines: Vec<&str> = message
        .lines()
        .filter(|line| line.starts_with("error: "))
        .collect();
    assert_eq!(error_lines.len(), 1, "{message}");
    assert!(
        error_lines[0].contains("migration 0001 (payments) was edited"),
        "{message}"
    );
    assert_eq!(status.status.code(), Some(1));
    assert!(stdout(&status).contains("DRIFTED"), "{}", stdout(&status));
}

#[test]
fn api_key_create_list_revoke() {
    let db = TestDb::create();
    let config = write_config(&base_config(&db));
    assert!(ctrip(&config, &["migrate"]).status.success());

    let created = ctrip(&config, &["api-key", "create", "--name", "shop"]);
    let text = stdout(&created);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (id, key) = (field("id:"), field("key:"));
    crate::harness::record_api_key(&key);
    let revoked = ctrip(&config, &["api-key", "revoke", &id]);
    let listed = stdout(&ctrip(&config, &["api-key", "list"]));
    let bad_id = ctrip(&config, &["api-key", "revoke", "nope"]);

    assert!(created.status.success(), "{}", stderr(&created));
    assert!(key.starts_with("ctrip_"), "{text}");
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let row = listed.lines().find(|line| line.starts_with(&id)).unwrap();
    assert!(row.contains(&key[..14]), "{row}");
    assert!(!listed.contains(&key), "list must not print the key");
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_ne!(columns[6], "-", "revoked time missing: {row}");
    assert_eq!(bad_id.status.code(), Some(1));
    assert!(
        stderr(&bad_id).contains("\"nope\" is not an API key id"),
        "{}",
        stderr(&bad_id)
    );
}

#[test]
fn unknown_config_key_named() {
    let db = TestDb::create();
    let mut table = base_config(&db);
    crate::harness::set(&mut table, "pool", "max_sise", 4);
    let config = write_config(&table);

    let output = ctrip(&config, &["migrate"]);

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains(&config.display().to_string()), "{message}");
    assert!(message.contains("max_sise"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[test]
fn help_available_everywhere() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["api-key", "create", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_ctrip"))
            .args(&args)
            .output()
            .unwrap();

        assert!(output.status.success(), "{args:?}");
        assert!(
            stdout(&output).contains("Usage: ctrip"),
            "{args:?}: {}",
            stdout(&output)
        );
    }
}

#[test]
fn sigterm_stops_cleanly() {
    let db = TestDb::create();
    let server = ServerProcess::start(&db);
    let health = crate::harness::send(&server.base, "GET", "/health", None, &[]);

    let code = server.stop();

    assert_eq!(health.status, 200);
    assert_eq!(code, Some(0));
}

#[test]
fn sighup_reloads_without_restart() {
    let db = TestDb::create();
    let server = ServerProcess::start(&db);

    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let health = crate::harness::send(&server.base, "GET", "/health", None, &[]);
    let log = std::fs::read_to_string(&server.log_path).unwrap();
    let code = server.stop();

    assert_eq!(health.status, 200);
    assert!(
        log.contains("SIGHUP received: reloading the TLS files and the log level"),
        "{log}"
    );
    assert!(
        log.contains("TLS reload requested: the files are unchanged"),
        "{log}"
    );
    assert!(log.contains("log level set to debug"), "{log}");
    assert_eq!(code, Some(0));
}

#[test]
fn other_seed_refused_at_start() {
    let db = TestDb::create();
    let first = ServerProcess::start(&db);
    assert_eq!(first.stop(), Some(0));
    let mut table = base_config(&db);
    let other = cluster().write_file(
        "mnemonic",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about\n",
        0o600,
    );
    crate::harness::set(
        &mut table,
        "wallet",
        "mnemonic_file",
        other.display().to_string(),
    );
    let config = write_config(&table);

    let output = ctrip(&config, &["serve"]);

    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("seed fingerprint in the database"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn serve_without_migrating_needs_current_schema() {
    let db = TestDb::create();
    let mut table = base_config(&db);
    crate::harness::set(&mut table, "server", "migrate_on_start", false);
    table["database"]
        .as_table_mut()
        .unwrap()
        .remove("migration");
    let runtime_only = write_config(&table);
    let full = write_config(&base_config(&db));

    let before = ctrip(&runtime_only, &["serve"]);
    let migrated = ctrip(&full, &["migrate"]);

    assert_eq!(before.status.code(), Some(1));
    assert!(
        stderr(&before).contains("run `ctrip migrate`"),
        "{}",
        stderr(&before)
    );
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let started = ServerProcess::start_with(&db, &table);
    assert_eq!(started.stop(), Some(0));
}
