//! Faults: the database stopping under load, a pool held by slow work, and session timeouts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::error::SqlState;

use crate::harness::{parse_config, send, set, PrivateCluster, TestApp, TestDb};

struct Outcome {
    status: u16,
    id: Option<String>,
    elapsed: Duration,
    retry_after: bool,
}

#[test]
fn database_restart_under_load() {
    let private = PrivateCluster::start();
    let unused = TestDb::create();
    let mut table = private.config(&unused);
    set(&mut table, "pool", "connection_timeout_ms", 1000);
    set(&mut table, "pool", "max_size", 8);
    let config = parse_config(&table).unwrap();
    let running = ctrip::serve::start(&config).unwrap();
    let base = format!("http://{}", running.server.addr);
    let owner_db = PrivateDb { cluster: &private };
    let key = owner_db.api_key();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));

    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (base, key, stop, outcomes) =
                (base.clone(), key.clone(), stop.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {key}");
                let headers = [
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/json"),
                ];
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let reply = send(
                        &base,
                        "POST",
                        "/api/v1/payments",
                        Some(r#"{"chain": "ethereum", "amount": "3"}"#),
                        &headers,
                    );
                    let outcome = Outcome {
                        status: reply.status,
                        id: reply.json["id"].as_str().map(str::to_owned),
                        elapsed: started.elapsed(),
                        retry_after: reply.header("Retry-After").is_some()
                            && reply.json["error"]["code"] == "database_unavailable",
                    };
                    outcomes.lock().unwrap().push(outcome);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    private.stop();
    std::thread::sleep(Duration::from_millis(500));
    let ready_down = send(&base, "GET", "/ready", None, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    private.restart();
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    handles
        .into_iter()
        .for_each(|handle| handle.join().unwrap());
    let ready_up = send(&base, "GET", "/ready", None, &[]);
    running.server.stop(Duration::from_secs(10));
    running.tls_watch.stop();

    let outcomes = outcomes.lock().unwrap();
    let created: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.status == 201)
        .filter_map(|o| o.id.as_deref())
        .collect();
    let unavailable: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 503).collect();
    let other: Vec<u16> = outcomes
        .iter()
        .map(|o| o.status)
        .filter(|s| *s != 201 && *s != 503)
        .collect();
    assert!(!unavailable.is_empty(), "no request saw the database down");
    assert!(
        unavailable.iter().all(|o| o.retry_after),
        "a 503 lacked Retry-After or the JSON error"
    );
    assert!(other.is_empty(), "unexpected statuses: {other:?}");
    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap();
    assert!(
        slowest < Duration::from_secs(8),
        "a request hung for {slowest:?}"
    );
    assert_eq!(ready_down.status, 503);
    assert_eq!(ready_up.status, 200, "{}", ready_up.text);
    let tail: Vec<u16> = outcomes.iter().rev().take(8).map(|o| o.status).collect();
    assert!(
        tail.iter().all(|s| *s == 201),
        "service did not resume: {tail:?}"
    );

    let rows: Vec<String> = owner_db
        .owner()
        .query("SELECT id::text FROM ctrip.payments", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let row_ids: HashSet<&str> = rows.iter().map(String::as_str).collect();
    assert_eq!(row_ids.len(), rows.len(), "duplicate payment rows");
    for id in &created {
        assert!(row_ids.contains(id), "a 201 payment is missing: {id}");
    }
    let unconfirmed = rows.len() - created.len();
    assert!(
        unconfirmed <= unavailable.len(),
        "{unconfirmed} rows match no 201 or failed request"
    );
}

/// The private cluster's `ctrip` database, as its owner.
struct PrivateDb<'a> {
    cluster: &'a PrivateCluster,
}

impl PrivateDb<'_> {
    fn owner(&self) -> postgres::Client {
        let shared = crate::harness::cluster();
        let mut params = shared.params("ctrip_migrator", "ctrip");
        params.port = self.cluster.port;
        let password =
            std::fs::read_to_string(self.cluster.dir.join("secrets/ctrip_migrator.password"))
                .unwrap();
        params.password = ctrip::secret::Secret::new(password.trim_end().to_owned());
        params.role = Some("ctrip_owner".to_owned());
        ctrip::db::connect(
            &params,
            Some(&shared.connector(ctrip::db::tls::SslMode::VerifyFull)),
        )
        .unwrap()
    }

    fn api_key(&self) -> String {
        let merchant = ctrip::merchants::create(&mut self.owner(), "faults")
            .unwrap()
            .id;
        let scopes = vec!["payments:read".to_owned(), "payments:write".to_owned()];
        let (_, key) =
            ctrip::apikeys::create(&mut self.owner(), merchant, "faults", &scopes).unwrap();
        crate::harness::record_api_key(key.expose());
        key.expose().to_owned()
    }
}

#[test]
fn slow_transactions_exhaust_then_recover() {
    let app = TestApp::start_with(|config| {
        set(config, "pool", "max_size", 2);
        set(config, "pool", "min_idle", 0);
        set(config, "pool", "connection_timeout_ms", 400);
    });
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let mut conn = app.running().app.pool.get().unwrap();
            std::thread::spawn(move || {
                let (mut transaction, _) = conn.transaction().unwrap();
                transaction.batch_execute("SELECT pg_sleep(1.5)").unwrap();
                transaction.commit().unwrap();
            })
        })
        .collect();

    let during = app.get("/api/v1/payments");
    sleepers
        .into_iter()
        .for_each(|handle| handle.join().unwrap());
    let after = app.get("/api/v1/payments");

    assert_eq!(during.status, 503, "{}", during.text);
    assert_eq!(during.header("Retry-After"), Some("1"));
    assert_eq!(after.status, 200);
}

#[test]
fn session_timeouts_end_stuck_work() {
    let app = TestApp::start_with(|config| {
        set(config, "database", "statement_timeout_ms", 300);
        set(
            config,
            "database",
            "idle_in_transaction_session_timeout_ms",
            300,
        );
        set(config, "pool", "max_size", 2);
    });

    let statement = {
        let mut conn = app.running().app.pool.get().unwrap();
        let (client, _) = conn.parts();
        client.batch_execute("SELECT pg_sleep(2)").unwrap_err()
    };
    let idle = {
        let mut conn = app.running().app.pool.get().unwrap();
        let (mut transaction, _) = conn.transaction().unwrap();
        transaction.batch_execute("SELECT 1").unwrap();
        std::thread::sleep(Duration::from_millis(800));
        transaction.batch_execute("SELECT 1").unwrap_err()
    };
    let after = app.get("/api/v1/payments");

    assert_eq!(
        statement.code(),
        Some(&SqlState::QUERY_CANCELED),
        "{statement}"
    );
    assert!(
        ctrip::db::is_unavailable(&statement),
        "a timed-out statement must answer 503"
    );
    assert!(
        idle.is_closed() || idle.code() == Some(&SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT),
        "{idle}"
    );
    assert_eq!(after.status, 200, "{}", after.text);
}
