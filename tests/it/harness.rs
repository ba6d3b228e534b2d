//! Test harness: one shared TLS cluster started by `make test`, a fresh database per test,
//! and a ctrip server on port 0 with typed request helpers.
//!
//! The cluster's port and files come from `CTRIP_TEST_*` variables set by scripts/test.sh.
//! Every log line of the test binary goes to `$CTRIP_TEST_DIR/logs/tests.log` (and to stderr
//! when `TEST_LOG` is set), and every API key created is recorded in `$CTRIP_TEST_DIR/api-keys`
//! so the script can prove no key reached a log.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use ctrip::config::Config;
use ctrip::db::tls::{SslMode, TlsConnector, TlsFiles, TlsMaterial};
use ctrip::db::ConnectParams;
use ctrip::secret::Secret;
use ctrip::serve::{self, Running};
use serde_json::Value;

pub const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";

/// The shared cluster of this test run.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub plain_port: u16,
    pub certs: PathBuf,
    pub secrets: PathBuf,
}

impl Cluster {
    pub fn password(&self, login: &str) -> Secret {
        let text = fs::read_to_string(self.secrets.join(format!("{login}.password"))).unwrap();
        Secret::new(text.trim_end().to_owned())
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.certs.join(name)
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("logs").join("tests.log")
    }

    /// Returns connection parameters for `login` on database `dbname`.
    pub fn params(&self, login: &str, dbname: &str) -> ConnectParams {
        ConnectParams {
            host: "localhost".to_owned(),
            port: self.port,
            dbname: dbname.to_owned(),
            user: login.to_owned(),
            password: self.password(login),
            role: None,
            application_name: "ctrip-tests".to_owned(),
            connect_timeout: Duration::from_secs(10),
            statement_timeout_ms: 30_000,
            idle_in_transaction_session_timeout_ms: 30_000,
        }
    }

    /// Returns a verify-full connector with the run's CA and client certificate.
    pub fn connector(&self, mode: SslMode) -> TlsConnector {
        let files = TlsFiles {
            rootcert: self.cert("ca.crt"),
            cert: Some(self.cert("client.crt")),
            key: Some(self.cert("client.key")),
        };
        TlsConnector::build(mode, &TlsMaterial::load(&files).unwrap()).unwrap()
    }

    /// Opens a verify-full session as `login`.
    pub fn connect(&self, login: &str, dbname: &str) -> postgres::Client {
        ctrip::db::connect(
            &self.params(login, dbname),
            Some(&self.connector(SslMode::VerifyFull)),
        )
        .unwrap_or_else(|err| panic!("{err}"))
    }

    /// Writes `text` to a new file in the run directory with `mode`, returning its path.
    pub fn write_file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self
            .dir
            .join("files")
            .join(format!("{}-{name}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

/// Returns the cluster, setting up log capture on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests with `make test`, which starts PostgreSQL")
            })
        };
        let dir = PathBuf::from(var("CTRIP_TEST_DIR"));
        let cluster = Cluster {
            port: var("CTRIP_TEST_PGPORT").parse().unwrap(),
            plain_port: var("CTRIP_TEST_PLAIN_PORT").parse().unwrap(),
            certs: dir.join("certs"),
            secrets: dir.join("secrets"),
            dir,
        };
        let echo = std::env::var_os("TEST_LOG").is_some();
        // The test HTTP client logs whole requests, Authorization header included, at debug.
        let filter = ctrip::logging::LogFilter::parse("debug,ureq=warn").unwrap();
        ctrip::logging::init_capture(&cluster.log_file(), &filter, echo).unwrap();
        cluster
    })
}

/// A database of its own for one test, dropped (with its sessions) at the end.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        let cluster = cluster();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = cluster.connect("ctrip_admin", "postgres");
        // CREATE DATABASE cannot share a batch (an implicit transaction) with other statements.
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER ctrip_owner"))
            .unwrap();
        admin
            .batch_execute(&format!(
                "REVOKE ALL ON DATABASE {name} FROM PUBLIC;
                 GRANT CONNECT ON DATABASE {name} TO ctrip_owner, ctrip_app, ctrip_readonly;"
            ))
            .unwrap();
        TestDb { name }
    }

    /// Creates a database and migrates it with `ctrip migrate`, with no server running, so
    /// audit rows a test inserts stay pending until the test chains them.
    pub fn migrated() -> TestDb {
        let db = TestDb::create();
        let config = crate::cli::write_config(&base_config(&db));
        let migrated = crate::cli::ctrip(&config, &["migrate"]);
        assert!(
            migrated.status.success(),
            "{}",
            crate::cli::stderr(&migrated)
        );
        db
    }

    /// Opens a session as the schema owner (the migration login after SET ROLE).
    pub fn owner(&self) -> postgres::Client {
        let cluster = cluster();
        let mut params = cluster.params("ctrip_migrator", &self.name);
        params.role = Some("ctrip_owner".to_owned());
        ctrip::db::connect(&params, Some(&cluster.connector(SslMode::VerifyFull))).unwrap()
    }

    /// Opens a session as the runtime login, the role the server runs as.
    pub fn runtime(&self) -> postgres::Client {
        cluster().connect("ctrip_runtime", &self.name)
    }

    /// Chains the pending audit rows now instead of waiting for the server's chainer, so a
    /// test can address rows by id.
    pub fn chain_audit(&self) -> u64 {
        ctrip::audit::chain_pending(&mut self.owner(), true).unwrap()
    }

    pub fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM ctrip.{table}");
        self.owner().query_one(sql.as_str(), &[]).unwrap().get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let mut admin = cluster().connect("ctrip_admin", "postgres");
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(err) = admin.batch_execute(&sql) {
            eprintln!("cannot drop test database {}: {err}", self.name);
        }
    }
}

/// Builds the config of a test server for `db`, as a TOML table tests can edit before starting.
pub fn base_config(db: &TestDb) -> toml::Table {
    let cluster = cluster();
    let mnemonic = cluster.dir.join("secrets").join("mnemonic");
    if !mnemonic.exists() {
        let path = cluster.write_file("mnemonic", &format!("{TEST_MNEMONIC}\n"), 0o600);
        let _ = fs::rename(path, &mnemonic);
    }
    let path = |p: PathBuf| p.display().to_string();
    let text = format!(
        r#"
environment = "testing"
[server]
listen = "127.0.0.1:0"
workers = 8
[log]
level = "debug"
[database]
host = "localhost"
port = {port}
dbname = "{dbname}"
sslmode = "verify-full"
sslrootcert = "{ca}"
sslcert = "{cert}"
sslkey = "{key}"
[database.runtime]
user = "ctrip_runtime"
password_file = "{runtime_pw}"
[database.migration]
user = "ctrip_migrator"
password_file = "{migrator_pw}"
role = "ctrip_owner"
[pool]
max_size = 8
min_idle = 1
connection_timeout_ms = 3000
[wallet]
mnemonic_file = "{mnemonic}"
[[chains]]
name = "ethereum"
family = "evm"
symbol = "ETH"
decimals = 18
[[chains.tokens]]
symbol = "USDC"
address = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
decimals = 6
[[chains]]
name = "solana"
family = "solana"
symbol = "SOL"
decimals = 9
"#,
        port = cluster.port,
        dbname = db.name,
        ca = path(cluster.cert("ca.crt")),
        cert = path(cluster.cert("client.crt")),
        key = path(cluster.cert("client.key")),
        runtime_pw = path(cluster.secrets.join("ctrip_runtime.password")),
        migrator_pw = path(cluster.secrets.join("ctrip_migrator.password")),
        mnemonic = path(mnemonic),
    );
    text.parse().unwrap()
}

/// Parses a config table with no environment overrides.
pub fn parse_config(table: &toml::Table) -> Result<Config, ctrip::config::ConfigError> {
    let text = toml::to_string(table).unwrap();
    Config::from_toml_str(&text, &cluster().dir.join("config.toml"), &|_| None)
}

/// Sets `table[section][key] = value`, creating the section when needed.
pub fn set(table: &mut toml::Table, section: &str, key: &str, value: impl Into<toml::Value>) {
    let mut current = table;
    for part in section.split('.').filter(|part| !part.is_empty()) {
        current = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
    }
    current.insert(key.to_owned(), value.into());
}

/// A running test server with its database and an API key.
pub struct TestApp {
    running: Option<Running>,
    pub db: TestDb,
    pub base: String,
    pub key: String,
}

impl TestApp {
    pub fn start() -> TestApp {
        TestApp::start_with(|_| {})
    }

    /// Starts a server after `edit` changes its config table.
    pub fn start_with(edit: impl FnOnce(&mut toml::Table)) -> TestApp {
        let db = TestDb::create();
        let mut table = base_config(&db);
        edit(&mut table);
        let config = parse_config(&table).unwrap_or_else(|err| panic!("{err}"));
        let running = serve::start(&config).unwrap_or_else(|err| panic!("{err:#}"));
        let base = format!("http://{}", running.server.addr);
        let key = create_api_key(&db, "test");
        TestApp {
            running: Some(running),
            db,
            base,
            key,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request(
            "GET",
            path,
            None,
            &[("Authorization", &format!("Bearer {}", self.key))],
        )
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {}", self.key);
        self.request(
            "POST",
            path,
            Some(body),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
        )
    }

    /// Sends any request; never fails on an HTTP error status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        send(&self.base, method, path, body, headers)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.server.stop(Duration::from_secs(10));
            running.tls_watch.stop();
            if let Some(retention) = running.retention {
                retention.stop();
            }
            running.audit_chain.stop();
            if let Some(checkpoints) = running.checkpoints {
                checkpoints.stop();
            }
        }
    }
}

/// Creates a merchant named `name` in `db` and returns its id.
pub fn create_merchant(db: &TestDb, name: &str) -> uuid::Uuid {
    ctrip::merchants::create(&mut db.owner(), name).unwrap().id
}

/// Creates an API key for `merchant` with `scopes`, recorded for the end-of-run secret scan.
pub fn create_key_for(db: &TestDb, merchant: uuid::Uuid, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|scope| (*scope).to_owned()).collect();
    let (_, secret) = ctrip::apikeys::create(&mut db.owner(), merchant, "test", &scopes).unwrap();
    record_api_key(secret.expose());
    secret.expose().to_owned()
}

/// Creates a read-write API key for the merchant named "test", creating it when missing.
pub fn create_api_key(db: &TestDb, name: &str) -> String {
    let existing = ctrip::merchants::list(&mut db.owner()).unwrap();
    let merchant = match existing.iter().find(|merchant| merchant.name == "test") {
        Some(merchant) => merchant.id,
        None => create_merchant(db, "test"),
    };
    let scopes = vec!["payments:read".to_owned(), "payments:write".to_owned()];
    let (_, secret) = ctrip::apikeys::create(&mut db.owner(), merchant, name, &scopes).unwrap();
    record_api_key(secret.expose());
    secret.expose().to_owned()
}

/// Records a key for the end-of-run scan that proves no key reached a log.
pub fn record_api_key(key: &str) {
    let mut record = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cluster().dir.join("api-keys"))
        .unwrap();
    // One write per line, so concurrent tests cannot interleave a key and its newline.
    record.write_all(format!("{key}\n").as_bytes()).unwrap();
}

/// An HTTP response, with the body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Returns `error.code`, `error.field` of an error body.
    pub fn error(&self) -> (&str, Option<&str>) {
        let error = &self.json["error"];
        (
            error["code"].as_str().unwrap_or("<no code>"),
            error["field"].as_str(),
        )
    }
}

/// Sends one request to `base`.
pub fn send(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let mut request = agent.request(method, &format!("{base}{path}"));
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("{method} {path} failed: {err}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = response.header(&name).unwrap_or("").to_owned();
            (name, value)
        })
        .collect();
    let text = response.into_string().unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        json,
    }
}

/// Returns the captured log text of this test binary so far.
pub fn captured_log() -> String {
    fs::read_to_string(cluster().log_file()).unwrap_or_default()
}

/// Returns a database error's message with its server-side detail.
pub fn error_text(err: &postgres::Error) -> String {
    ctrip::db::error_chain(err)
}

/// A PostgreSQL cluster of one test's own, for faults that would disturb the shared one.
pub struct PrivateCluster {
    pub dir: PathBuf,
    pub pgdata: PathBuf,
    pub port: u16,
}

fn cluster_script(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster.sh");
    let output = std::process::Command::new(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pg-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl PrivateCluster {
    /// Creates and starts a TLS cluster on a free port with the ctrip roles and database `ctrip`.
    pub fn start() -> PrivateCluster {
        let shared = cluster();
        let dir = shared
            .dir
            .join(format!("private-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let pgdata = dir.join("pgdata");
        let port: u16 = cluster_script(&["free-port"]).parse().unwrap();
        let (data, certs) = (
            pgdata.display().to_string(),
            shared.certs.display().to_string(),
        );
        cluster_script(&["init", &data, &port.to_string(), &certs, "--fast"]);
        cluster_script(&["start", &data]);
        cluster_script(&["roles", &data, &dir.join("secrets").display().to_string()]);
        cluster_script(&["createdb", &data, "ctrip"]);
        PrivateCluster { dir, pgdata, port }
    }

    pub fn stop(&self) {
        cluster_script(&["stop", &self.pgdata.display().to_string()]);
    }

    pub fn restart(&self) {
        cluster_script(&["start", &self.pgdata.display().to_string()]);
    }

    /// Returns a server config for database `ctrip` of this cluster.
    pub fn config(&self, shared_db: &TestDb) -> toml::Table {
        let mut table = base_config(shared_db);
        let secret = |login: &str| {
            self.dir
                .join("secrets")
                .join(format!("{login}.password"))
                .display()
                .to_string()
        };
        set(&mut table, "database", "port", i64::from(self.port));
        set(&mut table, "database", "dbname", "ctrip");
        set(
            &mut table,
            "database.runtime",
            "password_file",
            secret("ctrip_runtime"),
        );
        set(
            &mut table,
            "database.migration",
            "password_file",
            secret("ctrip_migrator"),
        );
        table
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster.sh");
        let _ = std::process::Command::new(script)
            .args(["stop", &self.pgdata.display().to_string()])
            .output();
    }
}
