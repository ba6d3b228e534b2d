//! The runtime pool: session settings, exhaustion and recovery from lost sessions.

use std::time::{Duration, Instant};

use crate::harness::{cluster, set, TestApp};

#[test]
fn sessions_carry_limits_and_name() {
    let app = TestApp::start();
    let mut conn = app.running().app.pool.get().unwrap();
    let (client, _) = conn.parts();

    let row = client
        .query_one(
            "SELECT current_setting('application_name'), current_setting('statement_timeout'),
                    current_setting('idle_in_transaction_session_timeout'), current_user,
                    current_setting('search_path')",
            &[],
        )
        .unwrap();

    assert_eq!(row.get::<_, String>(0), "ctrip");
    assert_eq!(row.get::<_, String>(1), "5s");
    assert_eq!(row.get::<_, String>(2), "10s");
    assert_eq!(row.get::<_, String>(3), "ctrip_runtime");
    assert_eq!(row.get::<_, String>(4), "ctrip");
}

#[test]
fn pooled_session_is_verified_tls() {
    let app = TestApp::start();
    let mut conn = app.running().app.pool.get().unwrap();
    let (client, _) = conn.parts();

    let row = client
        .query_one(
            "SELECT ssl, version, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap();

    assert!(row.get::<_, bool>(0));
    let version: String = row.get(1);
    assert!(version == "TLSv1.2" || version == "TLSv1.3", "{version}");
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("/CN=ctrip")
    );
}

#[test]
fn exhausted_pool_gives_503_quickly() {
    let app = TestApp::start_with(|config| {
        set(config, "pool", "max_size", 1);
        set(config, "pool", "min_idle", 0);
        set(config, "pool", "connection_timeout_ms", 300);
    });
    let held = app.running().app.pool.get().unwrap();
    let started = Instant::now();

    let reply = app.get("/api/v1/payments");

    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.error().0, "database_unavailable");
    assert_eq!(reply.header("Retry-After"), Some("1"));
    drop(held);
    assert_eq!(app.get("/api/v1/payments").status, 200);
}

#[test]
fn terminated_sessions_are_replaced() {
    let app = TestApp::start();
    assert_eq!(app.get("/api/v1/payments").status, 200);
    let killed = terminate_runtime_sessions(&app);
    assert!(killed >= 1);
    std::thread::sleep(Duration::from_millis(200));

    let statuses: Vec<u16> = (0..5).map(|_| app.get("/api/v1/payments").status).collect();

    assert_eq!(statuses, [200; 5]);
}

#[test]
fn request_settings_do_not_leak() {
    let app = TestApp::start_with(|config| {
        set(config, "pool", "max_size", 1);
        set(config, "pool", "min_idle", 1);
    });
    {
        let mut conn = app.running().app.pool.get().unwrap();
        let (mut transaction, _) = conn.transaction().unwrap();
        transaction.batch_execute("SET LOCAL statement_timeout = '1ms'; SELECT set_config('ctrip.merchant_id', 'abc', true)").unwrap();
        transaction.commit().unwrap();
    }

    let mut conn = app.running().app.pool.get().unwrap();
    let (client, _) = conn.parts();
    let row = client
        .query_one("SELECT current_setting('statement_timeout'), current_setting('ctrip.merchant_id', true)", &[])
        .unwrap();

    assert_eq!(row.get::<_, String>(0), "5s");
    assert_eq!(row.get::<_, Option<String>>(1).unwrap_or_default(), "");
}

#[test]
fn connection_failures_summarized_in_audit() {
    let app = TestApp::start();
    let mut owner = app.db.owner();
    let revoke = format!("REVOKE CONNECT ON DATABASE {} FROM ctrip_app", app.db.name);
    let grant = format!("GRANT CONNECT ON DATABASE {} TO ctrip_app", app.db.name);
    let mut config = ctrip::config::PoolConfig::default();
    config.max_size = 2;
    config.min_idle = 0;
    config.connection_timeout_ms = 500;
    let params = ctrip::db::ConnectParams::runtime(
        &crate::harness::parse_config(&crate::harness::base_config(&app.db)).unwrap(),
    )
    .unwrap();
    let tls = std::sync::Arc::new(
        ctrip::db::SharedTls::from_config(
            &crate::harness::parse_config(&crate::harness::base_config(&app.db)).unwrap(),
        )
        .unwrap(),
    );
    let pool = ctrip::db::pool::build(
        &config,
        ctrip::db::pool::Manager::new(params, tls, Duration::ZERO),
    );

    owner.batch_execute(&revoke).unwrap();
    let refused = pool.get().is_err();
    owner.batch_execute(&grant).unwrap();
    let recovered = pool.get_timeout(Duration::from_secs(10)).is_ok();

    assert!(refused);
    assert!(recovered);
    let details: String = owner
        .query_one("SELECT details->>'failed_attempts' FROM ctrip.audit_events WHERE action = 'database.connection_failures'", &[])
        .unwrap()
        .get(0);
    assert!(details.parse::<u32>().unwrap() >= 1, "{details}");
}

#[test]
fn every_dead_session_replaced_within_one_create() {
    let app = TestApp::start_with(|config| {
        set(config, "pool", "max_size", 2);
        set(config, "pool", "min_idle", 2);
    });
    let body = r#"{"chain": "ethereum", "amount": "1"}"#;
    assert_eq!(app.post("/api/v1/payments", body).status, 201);
    assert_eq!(app.post("/api/v1/payments", body).status, 201);
    let killed = terminate_runtime_sessions(&app);
    std::thread::sleep(Duration::from_millis(50));

    let reply = app.post("/api/v1/payments", body);

    assert!(killed >= 2, "{killed}");
    assert_eq!(reply.status, 201, "{}", reply.text);
    let payments: i64 = app
        .db
        .owner()
        .query_one("SELECT count(*) FROM ctrip.payments", &[])
        .unwrap()
        .get(0);
    assert_eq!(payments, 3);
}

/// Ends every runtime session of the app's database from the server side, as a restart does,
/// and returns how many there were.
fn terminate_runtime_sessions(app: &TestApp) -> i64 {
    let mut admin = cluster().connect("ctrip_admin", "postgres");
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND usename = 'ctrip_runtime'",
            &[&app.db.name],
        )
        .unwrap()
        .get(0)
}
