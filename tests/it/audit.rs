//! The audit log: rows written with their change, the chain, tamper detection, checkpoints.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};

use ctrip::audit::checkpoint;
use ctrip::audit::verify::{self, Report};

use crate::cli::{ctrip, stderr, stdout, write_config, ServerProcess};
use crate::harness::{base_config, cluster, set, TestApp, TestDb};

fn app_with_events(payments: usize) -> TestApp {
    let app = TestApp::start();
    for amount in 1..=payments {
        let reply = app.post(
            "/api/v1/payments",
            &format!(r#"{{"chain": "ethereum", "amount": {amount}}}"#),
        );
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    app.db.chain_audit();
    app
}

fn verify_db(db: &TestDb, checkpoints: &[checkpoint::Checkpoint]) -> Report {
    verify::verify(&mut db.owner(), checkpoints).unwrap()
}

/// Runs `sql` as the owner with the audit triggers off, as an attacker with owner rights would.
fn tamper(db: &TestDb, sql: &str) {
    db.owner()
        .batch_execute(&format!(
            "BEGIN;
             ALTER TABLE ctrip.audit_events DISABLE TRIGGER USER;
             {sql};
             ALTER TABLE ctrip.audit_events ENABLE TRIGGER USER;
             COMMIT;"
        ))
        .unwrap();
}

fn first_problem(report: &Report) -> (i64, String) {
    let problem = report
        .problems
        .iter()
        .min_by_key(|p| p.id)
        .expect("a problem must be reported");
    (problem.id, problem.message.clone())
}

#[test]
fn clean_log_verifies() {
    let app = app_with_events(3);

    let report = verify_db(&app.db, &[]);

    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.rows >= 6, "{}", report.rows);
    let actions: Vec<String> = app
        .db
        .owner()
        .query("SELECT action FROM ctrip.audit_events ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        actions.contains(&"migration.applied".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"merchant.created".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"api_key.created".to_owned()),
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "payment.created").count(),
        3
    );
}

#[test]
fn created_payment_has_audit_row() {
    let app = TestApp::start();

    let reply = app.post(
        "/api/v1/payments",
        r#"{"chain": "solana", "amount": "9", "reference": "order-9"}"#,
    );

    let row = app
        .db
        .owner()
        .query_one(
            "SELECT actor_type, merchant_id = (SELECT id FROM ctrip.merchants WHERE name = 'test'),
                    object_id, request_id, details::text
             FROM ctrip.audit_events WHERE action = 'payment.created'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "api_key");
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, String>(2), reply.json["id"].as_str().unwrap());
    assert_eq!(
        row.get::<_, String>(3),
        reply.header("X-Request-Id").unwrap()
    );
    let details: String = row.get(4);
    assert!(
        !details.contains("order-9"),
        "personal data in the audit row: {details}"
    );
}

#[test]
fn rolled_back_change_leaves_no_row() {
    let app = TestApp::start();
    let before = app.db.count("audit_events");
    let mut owner = app.db.owner();

    let mut transaction = owner.transaction().unwrap();
    ctrip::audit::record(
        &mut transaction,
        &ctrip::audit::Event::new(
            ctrip::audit::ActorType::System,
            "test.rolled_back",
            ctrip::audit::Outcome::Success,
        ),
    )
    .unwrap();
    transaction.rollback().unwrap();
    app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );

    assert_eq!(app.db.count("audit_events"), before + 1);
    assert!(
        verify_db(&app.db, &[]).is_ok(),
        "the chain must skip the rolled-back row"
    );
}

#[test]
fn status_change_audited() {
    let app = app_with_events(1);

    app.db
        .owner()
        .execute("UPDATE ctrip.payments SET status = 'detected'", &[])
        .unwrap();

    let details: String = app
        .db
        .owner()
        .query_one(
            "SELECT details::text FROM ctrip.audit_events WHERE action = 'payment.status_changed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(details, r#"{"to": "detected", "from": "pending"}"#);
    assert!(verify_db(&app.db, &[]).is_ok());
}

#[test]
fn edited_middle_row_named() {
    let app = app_with_events(4);

    tamper(
        &app.db,
        "UPDATE ctrip.audit_events SET outcome = 'failed' WHERE id = 5",
    );

    let (id, message) = first_problem(&verify_db(&app.db, &[]));
    assert_eq!(id, 5);
    assert!(message.contains("edited"), "{message}");
}

#[test]
fn deleted_middle_row_named() {
    let app = app_with_events(4);

    tamper(&app.db, "DELETE FROM ctrip.audit_events WHERE id = 4");

    let (id, message) = first_problem(&verify_db(&app.db, &[]));
    assert_eq!(id, 5);
    assert!(message.contains("rows 4 to 4 are missing"), "{message}");
}

#[test]
fn swapped_rows_named() {
    let app = app_with_events(4);

    tamper(
        &app.db,
        "UPDATE ctrip.audit_events a SET action = b.action, object_id = b.object_id,
                details = b.details, request_id = b.request_id, hash = b.hash, prev_hash = b.prev_hash
         FROM ctrip.audit_events b
         WHERE (a.id, b.id) IN ((5, 6), (6, 5))",
    );

    let (id, message) = first_problem(&verify_db(&app.db, &[]));
    assert_eq!(id, 5);
    assert!(
        message.contains("prev_hash") || message.contains("edited"),
        "{message}"
    );
}

#[test]
fn forged_row_named() {
    let app = app_with_events(4);

    tamper(
        &app.db,
        "UPDATE ctrip.audit_events SET action = 'payment.refunded' WHERE id = 5;
         UPDATE ctrip.audit_events e SET hash = sha256(e.prev_hash || ctrip.audit_encoding(e))
         WHERE id = 5",
    );

    let (id, message) = first_problem(&verify_db(&app.db, &[]));
    assert_eq!(
        id, 6,
        "a forged row with a recomputed hash breaks the next link"
    );
    assert!(
        message.contains("prev_hash does not match the hash of row 5"),
        "{message}"
    );
}

#[test]
fn rebuilt_chain_caught_by_checkpoint() {
    let app = app_with_events(4);
    let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let file = cluster().write_file("checkpoints", "", 0o644);
    checkpoint::write(&mut app.db.owner(), &key, &file)
        .unwrap()
        .unwrap();
    let points = checkpoint::read(&file, &key.verifying_key()).unwrap();
    let last = points[0].id;

    // Rewrite row 5 and re-link every later row, so the chain alone verifies.
    let mut owner = app.db.owner();
    owner
        .batch_execute("ALTER TABLE ctrip.audit_events DISABLE TRIGGER USER")
        .unwrap();
    owner
        .execute(
            "UPDATE ctrip.audit_events SET action = 'forged' WHERE id = 5",
            &[],
        )
        .unwrap();
    for id in 5..=last {
        owner
            .execute(
                "UPDATE ctrip.audit_events e SET
                     prev_hash = (SELECT hash FROM ctrip.audit_events WHERE id = $1 - 1)
                 WHERE id = $1",
                &[&id],
            )
            .unwrap();
        owner
            .execute("UPDATE ctrip.audit_events e SET hash = sha256(prev_hash || ctrip.audit_encoding(e)) WHERE id = $1", &[&id])
            .unwrap();
    }
    owner.batch_execute("UPDATE ctrip.audit_chain_head SET last_hash = (SELECT hash FROM ctrip.audit_events ORDER BY id DESC LIMIT 1); ALTER TABLE ctrip.audit_events ENABLE TRIGGER USER").unwrap();

    let without = verify_db(&app.db, &[]);
    let with = verify_db(&app.db, &points);

    assert!(without.is_ok(), "{:?}", without.problems);
    let (id, message) = first_problem(&with);
    assert_eq!(id, last);
    assert!(message.contains("rebuilt"), "{message}");
}

#[test]
fn cut_tail_caught_by_checkpoint() {
    let app = app_with_events(4);
    let key = ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]);
    let file = cluster().write_file("checkpoints", "", 0o644);
    checkpoint::write(&mut app.db.owner(), &key, &file)
        .unwrap()
        .unwrap();
    let points = checkpoint::read(&file, &key.verifying_key()).unwrap();
    let last = points[0].id;

    tamper(
        &app.db,
        &format!(
            "DELETE FROM ctrip.audit_events WHERE id > {cut};
             UPDATE ctrip.audit_chain_head SET last_id = {cut},
                 last_hash = (SELECT hash FROM ctrip.audit_events WHERE id = {cut})",
            cut = last - 2
        ),
    );

    let without = verify_db(&app.db, &[]);
    let with = verify_db(&app.db, &points);

    assert!(
        without.is_ok(),
        "the chain alone cannot show a cut tail: {:?}",
        without.problems
    );
    let (id, message) = first_problem(&with);
    assert_eq!(id, last);
    assert!(message.contains("tail was cut"), "{message}");
}

#[test]
fn cut_tail_caught_by_head() {
    let app = app_with_events(3);

    tamper(
        &app.db,
        "DELETE FROM ctrip.audit_events WHERE id = (SELECT max(id) FROM ctrip.audit_events)",
    );

    let (_, message) = first_problem(&verify_db(&app.db, &[]));
    assert!(message.contains("cut from the tail"), "{message}");
}

#[test]
fn database_and_verifier_encode_alike() {
    let db = TestDb::migrated();
    // NULLs, empty strings, multi-byte text and JSON that must round-trip through text.
    db.owner()
        .batch_execute(
            "INSERT INTO ctrip.audit_events
                 (occurred_at, actor_type, actor_id, merchant_id, action, object_type,
                  object_id, outcome, source_address, request_id, details)
             VALUES ('1969-12-31 23:59:59.999999+00', 'cli', 'zoë', gen_random_uuid(),
                     'test.encoding', NULL, '', 'success', NULL, '€-1',
                     '{\"note\": \"naïve ☃ 𝄞\", \"n\": 1.50}'),
                    ('2026-12-04 12:00:00.000001+00', 'system', '', NULL, 'test.encoding',
                     'x', NULL, 'failed', '::1', NULL, '{}')",
        )
        .unwrap();

    let chained = db.chain_audit();

    assert_eq!(chained, 2);
    let report = verify_db(&db, &[]);
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn tail_chains_pending_rows_first() {
    let db = TestDb::migrated();
    let config = write_config(&base_config(&db));
    db.owner()
        .batch_execute(
            "INSERT INTO ctrip.audit_events (actor_type, actor_id, action, outcome, details)
             VALUES ('system', 'test', 'test.first', 'success', '{}');
             INSERT INTO ctrip.audit_events (actor_type, actor_id, action, outcome, details)
             VALUES ('system', 'test', 'test.second', 'success', '{}');",
        )
        .unwrap();

    let tail = ctrip(&config, &["audit", "tail", "--limit", "2"]);

    assert!(tail.status.success(), "{}", stderr(&tail));
    let lines: Vec<String> = stdout(&tail).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("test.first"), "{lines:?}");
    assert!(lines[1].contains("test.second"), "{lines:?}");
    let first_id: i64 = lines[0].split(' ').next().unwrap().parse().unwrap();
    assert!(
        first_id > 0,
        "the row was chained before it was shown: {first_id}"
    );
}

#[test]
fn server_chains_committed_rows() {
    let app = TestApp::start();

    let reply = app.post("/api/v1/payments", r#"{"chain": "ethereum", "amount": 1}"#);

    assert_eq!(reply.status, 201, "{}", reply.text);
    let mut owner = app.db.owner();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (pending, created_id) = loop {
        let row = owner
            .query_one(
                "SELECT count(*) FILTER (WHERE id < 0),
                        max(id) FILTER (WHERE action = 'payment.created')
                 FROM ctrip.audit_events",
                &[],
            )
            .unwrap();
        let (pending, created_id): (i64, Option<i64>) = (row.get(0), row.get(1));
        if pending == 0 || std::time::Instant::now() > deadline {
            break (pending, created_id);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(pending, 0, "the server left rows unchained");
    assert!(created_id.unwrap() > 0, "{created_id:?}");
}

#[test]
fn parallel_creates_keep_one_chain() {
    let app = TestApp::start();
    let barrier = Arc::new(Barrier::new(64));

    let handles = crate::concurrency::create_many(&app.base, &app.key, 64, barrier);
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    assert!(statuses.iter().all(|&s| s == 201), "{statuses:?}");
    let report = verify_db(&app.db, &[]);
    assert!(report.is_ok(), "{:?}", report.problems);
    let (rows, first, last): (i64, i64, i64) = {
        let row = app
            .db
            .owner()
            .query_one(
                "SELECT count(*), min(id), max(id) FROM ctrip.audit_events",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!((first, last), (1, rows), "ids run 1 to {rows} without gaps");
    let created: i64 = app
        .db
        .owner()
        .query_one(
            "SELECT count(*) FROM ctrip.audit_events WHERE action = 'payment.created'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(created, 64);
}

#[test]
fn cli_verify_tail_and_checkpoint() {
    let app = app_with_events(2);
    let (table, key_path, checkpoints) = with_audit_files(&app.db);
    let config = write_config(&table);

    let keygen = ctrip(
        &config,
        &["audit", "keygen", "--out", key_path.to_str().unwrap()],
    );
    let again = ctrip(
        &config,
        &["audit", "keygen", "--out", key_path.to_str().unwrap()],
    );
    let point = ctrip(&config, &["audit", "checkpoint"]);
    let clean = ctrip(
        &config,
        &[
            "audit",
            "verify",
            "--checkpoints",
            checkpoints.to_str().unwrap(),
        ],
    );
    let tail = ctrip(&config, &["audit", "tail", "--since", "1h"]);
    tamper(
        &app.db,
        "UPDATE ctrip.audit_events SET actor_id = 'someone else' WHERE id = 3",
    );
    let broken = ctrip(&config, &["audit", "verify"]);

    assert!(keygen.status.success(), "{}", stderr(&keygen));
    assert_eq!(
        std::fs::metadata(&key_path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );
    assert!(point.status.success(), "{}", stderr(&point));
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert!(
        stdout(&clean).contains("1 checkpoints"),
        "{}",
        stdout(&clean)
    );
    assert!(
        stdout(&tail).contains("payment.created"),
        "{}",
        stdout(&tail)
    );
    let reads: i64 = app
        .db
        .owner()
        .query_one(
            "SELECT count(*) FROM ctrip.audit_events WHERE action = 'audit.read'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(reads, 1);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stderr(&broken).contains("verification failed at row 3"),
        "{}",
        stderr(&broken)
    );
}

#[test]
fn serve_writes_checkpoint_on_stop() {
    let db = TestDb::create();
    let (table, key_path, checkpoints) = with_audit_files(&db);
    checkpoint::generate_key(&key_path).unwrap();
    let server = ServerProcess::start_with(&db, &table);

    let code = server.stop();

    assert_eq!(code, Some(0));
    let key = checkpoint::load_key(&key_path).unwrap();
    let points = checkpoint::read(&checkpoints, &key.verifying_key()).unwrap();
    assert_eq!(points.len(), 1);
    assert!(verify_db(&db, &points).is_ok());
}

#[test]
fn verify_and_doctor_read_configured_checkpoints() {
    let app = app_with_events(1);
    let (table, key_path, _) = with_audit_files(&app.db);
    let config = write_config(&table);
    checkpoint::generate_key(&key_path).unwrap();
    let point = ctrip(&config, &["audit", "checkpoint"]);
    assert!(point.status.success(), "{}", stderr(&point));

    let verified = ctrip(&config, &["audit", "verify"]);
    let doctor = ctrip(&config, &["doctor", "--json"]);

    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(
        stdout(&verified).contains(", 1 checkpoints"),
        "{}",
        stdout(&verified)
    );
    assert!(
        stdout(&doctor).contains("1 checkpoints"),
        "{}",
        stdout(&doctor)
    );
}

#[test]
fn loose_audit_key_rejected() {
    let path = cluster().write_file("audit.key", &format!("{}\n", "11".repeat(32)), 0o644);

    let err = checkpoint::load_key(&path).unwrap_err().to_string();

    assert!(err.contains("chmod 600"), "{err}");
}

/// Returns a config for `db` with an audit key path and checkpoint file of its own.
fn with_audit_files(db: &TestDb) -> (toml::Table, PathBuf, PathBuf) {
    let files = cluster().dir.join("files");
    let key_path = files.join(format!("audit-{}.key", uuid::Uuid::new_v4().simple()));
    let checkpoints = files.join(format!("checkpoints-{}", uuid::Uuid::new_v4().simple()));
    let mut table = base_config(db);
    set(
        &mut table,
        "audit",
        "key_file",
        key_path.display().to_string(),
    );
    set(
        &mut table,
        "audit",
        "checkpoint_file",
        checkpoints.display().to_string(),
    );
    (table, key_path, checkpoints)
}
