//! Erasure of personal fields, the retention run, and audited pruning of old audit events.

use std::time::{Duration, Instant};

use ctrip::audit::checkpoint;
use uuid::Uuid;

use crate::cli::{ctrip, stderr, stdout, write_config};
use crate::harness::{
    base_config, captured_log, cluster, create_key_for, create_merchant, send, set, TestApp, TestDb,
};

const ERASE_SCOPES: &[&str] = &["payments:read", "payments:write", "payments:erase"];

fn test_merchant(db: &TestDb) -> Uuid {
    db.owner()
        .query_one("SELECT id FROM ctrip.merchants WHERE name = 'test'", &[])
        .unwrap()
        .get(0)
}

/// Creates a payment with a unique reference and e-mail in its metadata; returns its id and
/// the two personal values.
fn personal_payment(app: &TestApp, key: &str) -> (String, String, String) {
    let tag = Uuid::new_v4().simple().to_string();
    let reference = format!("order-{tag}");
    let email = format!("person-{tag}@example.com");
    let body = format!(
        r#"{{"chain": "ethereum", "token": "USDC", "amount": "1500000",
            "reference": "{reference}", "metadata": {{"email": "{email}", "cart": 7}}}}"#
    );
    let reply = send(
        &app.base,
        "POST",
        "/api/v1/payments",
        Some(&body),
        &[
            ("Authorization", &format!("Bearer {key}")),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    (
        reply.json["id"].as_str().unwrap().to_owned(),
        reference,
        email,
    )
}

fn erase_request(app: &TestApp, key: &str, id: &str) -> crate::harness::Reply {
    send(
        &app.base,
        "POST",
        &format!("/api/v1/payments/{id}/erase"),
        None,
        &[("Authorization", &format!("Bearer {key}"))],
    )
}

/// Counts audit rows whose text, every column included, contains `value`.
fn audit_rows_containing(db: &TestDb, value: &str) -> i64 {
    db.owner()
        .query_one(
            "SELECT count(*) FROM ctrip.audit_events e WHERE strpos(e::text, $1) > 0",
            &[&value],
        )
        .unwrap()
        .get(0)
}

fn personal_fields(db: &TestDb, id: &str) -> (Option<String>, String, bool) {
    let row = db
        .owner()
        .query_one(
            "SELECT reference, metadata::text, erased_at IS NOT NULL FROM ctrip.payments
             WHERE id = $1::text::uuid",
            &[&id],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[test]
fn erase_endpoint_removes_personal_values() {
    let app = TestApp::start();
    let key = create_key_for(&app.db, test_merchant(&app.db), ERASE_SCOPES);
    let (id, reference, email) = personal_payment(&app, &key);
    let before = app.get(&format!("/api/v1/payments/{id}"));

    let first = erase_request(&app, &key, &id);
    let second = erase_request(&app, &key, &id);
    let after = app.get(&format!("/api/v1/payments/{id}"));

    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["already_erased"], false);
    assert_eq!(
        first.json["erased_fields"],
        serde_json::json!(["reference", "metadata"])
    );
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.json["already_erased"], true);
    assert_eq!(second.json["erased_at"], first.json["erased_at"]);
    assert_eq!(after.json["reference"], serde_json::Value::Null);
    assert_eq!(after.json["metadata"], serde_json::json!({}));
    for field in [
        "amount",
        "address",
        "chain",
        "token",
        "status",
        "created_at",
        "expires_at",
    ] {
        assert_eq!(after.json[field], before.json[field], "{field} changed");
    }
    assert_eq!(personal_fields(&app.db, &id), (None, "{}".to_owned(), true));
    assert_eq!(audit_rows_containing(&app.db, &reference), 0);
    assert_eq!(audit_rows_containing(&app.db, &email), 0);
    let erasures: Vec<String> = app
        .db
        .owner()
        .query(
            "SELECT details::text FROM ctrip.audit_events
             WHERE action = 'payment.erased' AND object_id = $1 ORDER BY id",
            &[&id],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(erasures.len(), 2);
    assert!(
        erasures[0].contains(r#""fields": ["reference", "metadata"]"#),
        "{}",
        erasures[0]
    );
    assert!(
        erasures[1].contains(r#""already_erased": true"#),
        "{}",
        erasures[1]
    );
    let log = captured_log();
    assert!(!log.contains(&reference), "the reference reached the log");
    assert!(!log.contains(&email), "the e-mail reached the log");
    let report = ctrip::audit::verify::verify(&mut app.db.owner(), &[]).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn erase_endpoint_needs_its_scope() {
    let app = TestApp::start();
    let (id, reference, _) = personal_payment(&app, &app.key);

    let reply = erase_request(&app, &app.key, &id);

    assert_eq!(reply.status, 403, "{}", reply.text);
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("payments:erase"),
        "{}",
        reply.text
    );
    assert_eq!(personal_fields(&app.db, &id).0, Some(reference));
}

#[test]
fn erase_endpoint_hides_other_merchants() {
    let app = TestApp::start();
    let (id, reference, _) = personal_payment(&app, &app.key);
    let other = create_merchant(&app.db, "other");
    let other_key = create_key_for(&app.db, other, ERASE_SCOPES);

    let reply = erase_request(&app, &other_key, &id);
    let malformed = erase_request(&app, &other_key, "not-an-id");
    let get = app.request("GET", &format!("/api/v1/payments/{id}/erase"), None, &[]);

    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(malformed.status, 404, "{}", malformed.text);
    assert_eq!(get.status, 405, "{}", get.text);
    assert_eq!(personal_fields(&app.db, &id).0, Some(reference));
    let attempts: i64 = app
        .db
        .owner()
        .query_one(
            "SELECT count(*) FROM ctrip.audit_events
             WHERE action = 'payment.cross_merchant_attempt' AND object_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1);
}

#[test]
fn runtime_role_updates_only_personal_columns() {
    let app = TestApp::start();
    let (id, _, _) = personal_payment(&app, &app.key);
    let mut runtime = app.db.runtime();

    let amount = runtime
        .batch_execute(&format!(
            "UPDATE ctrip.payments SET amount = 1 WHERE id = '{id}'"
        ))
        .unwrap_err();
    let erased_at = runtime
        .batch_execute(&format!(
            "UPDATE ctrip.payments SET erased_at = NULL WHERE id = '{id}'"
        ))
        .unwrap_err();
    let unscoped = runtime
        .execute(
            "UPDATE ctrip.payments SET reference = NULL WHERE id = $1::text::uuid",
            &[&id],
        )
        .unwrap();

    for err in [amount, erased_at] {
        assert_eq!(
            err.code(),
            Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{err}"
        );
    }
    assert_eq!(unscoped, 0, "without a request context no row is visible");
}

#[test]
fn insert_sets_final_at_for_final_states() {
    let app = TestApp::start();
    let (first, _, _) = personal_payment(&app, &app.key);
    let mut owner = app.db.owner();
    let insert = "WITH original AS (SELECT * FROM ctrip.payments WHERE id = $1::text::uuid),
                       address AS (
                      INSERT INTO ctrip.deposit_addresses
                          (merchant_id, family, derivation_index, derivation_path, address)
                      SELECT merchant_id, 'evm', $2::integer, 'm/44''/60''/0''/0/' || $2::integer,
                             '0x' || $2::integer
                      FROM original RETURNING id)
                  INSERT INTO ctrip.payments (id, merchant_id, chain, deposit_address_id, amount,
                                              expires_at, status, final_at)
                  SELECT gen_random_uuid(), o.merchant_id, o.chain, address.id, 5, o.expires_at,
                         $3, $4::text::timestamptz
                  FROM original o, address
                  RETURNING status, final_at IS NOT NULL";
    let cases = [
        (900001, "expired", None, true),
        (900002, "pending", Some("2020-01-01 00:00:00+00"), false),
        (900003, "pending", None, false),
    ];

    let mut rows = Vec::new();
    for (index, status, final_at, _) in cases {
        let row = owner
            .query_one(insert, &[&first, &index, &status, &final_at])
            .unwrap();
        rows.push((row.get::<_, String>(0), row.get::<_, bool>(1)));
    }

    for ((_, status, _, expected), (stored, has_final_at)) in cases.iter().zip(&rows) {
        assert_eq!(stored, status);
        assert_eq!(has_final_at, expected, "status {status}");
    }
}

#[test]
fn cli_erase_by_reference_and_id() {
    let app = TestApp::start();
    let (first, reference, email) = personal_payment(&app, &app.key);
    let config = write_config(&base_config(&app.db));
    app.db
        .owner()
        .execute(
            "WITH original AS (SELECT * FROM ctrip.payments WHERE id = $1::text::uuid),
                  address AS (
                 INSERT INTO ctrip.deposit_addresses
                     (merchant_id, family, derivation_index, derivation_path, address)
                 SELECT merchant_id, 'evm', 900000, 'm/44''/60''/0''/0/900000', '0xabc'
                 FROM original RETURNING id)
             INSERT INTO ctrip.payments (id, merchant_id, chain, deposit_address_id, amount,
                                         expires_at, reference, metadata)
             SELECT gen_random_uuid(), o.merchant_id, o.chain, address.id, 5, o.expires_at,
                    o.reference, o.metadata
             FROM original o, address",
            &[&first],
        )
        .unwrap();
    let (untouched, untouched_reference, _) = personal_payment(&app, &app.key);

    let by_reference = ctrip(&config, &["erase", "--reference", &reference]);
    let again = ctrip(&config, &["erase", "--reference", &reference]);
    let by_id = ctrip(&config, &["erase", "--payment", &first]);
    let unknown = ctrip(&config, &["erase", "--payment", &Uuid::nil().to_string()]);
    let neither = ctrip(&config, &["erase"]);

    assert!(by_reference.status.success(), "{}", stderr(&by_reference));
    assert_eq!(
        stdout(&by_reference)
            .lines()
            .filter(|l| l.starts_with("erased reference and metadata"))
            .count(),
        2,
        "{}",
        stdout(&by_reference)
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing to erase"),
        "{}",
        stdout(&again)
    );
    assert!(by_id.status.success(), "{}", stderr(&by_id));
    assert!(
        stdout(&by_id).contains("was already erased"),
        "{}",
        stdout(&by_id)
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no payment with id"),
        "{}",
        stderr(&unknown)
    );
    assert_eq!(neither.status.code(), Some(2));
    let remaining: i64 = app
        .db
        .owner()
        .query_one(
            "SELECT count(*) FROM ctrip.payments WHERE reference = $1",
            &[&reference],
        )
        .unwrap()
        .get(0);
    assert_eq!(remaining, 0);
    assert_eq!(
        personal_fields(&app.db, &untouched).0,
        Some(untouched_reference)
    );
    for output in [&by_reference, &again, &by_id] {
        assert!(!stdout(output).contains(&reference), "reference printed");
        assert!(!stderr(output).contains(&reference), "reference printed");
    }
    assert_eq!(audit_rows_containing(&app.db, &reference), 0);
    assert_eq!(audit_rows_containing(&app.db, &email), 0);
}

#[test]
fn cli_erase_reference_of_two_merchants_refused() {
    let app = TestApp::start();
    let (_, reference, _) = personal_payment(&app, &app.key);
    let other = create_merchant(&app.db, "other");
    let other_key = create_key_for(&app.db, other, ERASE_SCOPES);
    let body = format!(r#"{{"chain": "solana", "amount": "1", "reference": "{reference}"}}"#);
    let reply = send(
        &app.base,
        "POST",
        "/api/v1/payments",
        Some(&body),
        &[
            ("Authorization", &format!("Bearer {other_key}")),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    let config = write_config(&base_config(&app.db));

    let refused = ctrip(&config, &["erase", "--reference", &reference]);
    let chosen = ctrip(
        &config,
        &[
            "erase",
            "--reference",
            &reference,
            "--merchant",
            &other.to_string(),
        ],
    );

    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("used by payments of 2 merchants: pass --merchant ID"),
        "{}",
        stderr(&refused)
    );
    assert!(!stderr(&refused).contains(&reference), "reference printed");
    assert!(chosen.status.success(), "{}", stderr(&chosen));
    let left: i64 = app
        .db
        .owner()
        .query_one(
            "SELECT count(*) FROM ctrip.payments WHERE reference = $1",
            &[&reference],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
}

/// Creates a payment and moves it to `status`, with `final_days` days since it became final
/// or, for a pending one, `expired_days` days since it expired (negative: in the future).
fn aged_payment(app: &TestApp, status: &str, final_days: Option<i32>, expired_days: i32) -> String {
    let (id, _, _) = personal_payment(app, &app.key);
    let mut owner = app.db.owner();
    owner
        .execute(
            "UPDATE ctrip.payments SET created_at = now() - interval '400 days',
                    expires_at = now() - make_interval(days => $2)
             WHERE id = $1::text::uuid",
            &[&id, &expired_days],
        )
        .unwrap();
    if status != "pending" {
        owner
            .execute(
                "UPDATE ctrip.payments SET status = $2 WHERE id = $1::text::uuid",
                &[&id, &status],
            )
            .unwrap();
    }
    if let Some(days) = final_days {
        owner
            .execute(
                "UPDATE ctrip.payments SET final_at = now() - make_interval(days => $2)
                 WHERE id = $1::text::uuid",
                &[&id, &days],
            )
            .unwrap();
    }
    id
}

#[test]
fn retention_picks_exactly_expired_rows() {
    let app = TestApp::start();
    let past = [
        aged_payment(&app, "paid", Some(31), -1),
        aged_payment(&app, "settled", Some(45), -1),
        aged_payment(&app, "failed", Some(31), -1),
        aged_payment(&app, "expired", Some(31), 31),
        aged_payment(&app, "pending", None, 31),
    ];
    let within = [
        aged_payment(&app, "paid", Some(29), -1),
        aged_payment(&app, "confirmed", None, 100),
        aged_payment(&app, "detected", None, 100),
        aged_payment(&app, "pending", None, 29),
        aged_payment(&app, "pending", None, -1),
    ];
    let mut table = base_config(&app.db);
    set(&mut table, "retention", "payment_personal_data_days", 30);
    let config = write_config(&table);
    let mut expected: Vec<String> = past.to_vec();
    expected.sort();
    let listed = |output: &std::process::Output, verb: &str| -> Vec<String> {
        let mut ids: Vec<String> = stdout(output)
            .lines()
            .filter_map(|l| l.trim().strip_prefix(verb).map(str::to_owned))
            .collect();
        ids.sort();
        ids
    };

    let dry = ctrip(&config, &["retention", "run", "--dry-run"]);
    let untouched_by_dry: Vec<Option<String>> = past
        .iter()
        .map(|id| personal_fields(&app.db, id).0)
        .collect();
    let run = ctrip(&config, &["retention", "run"]);
    let rerun = ctrip(&config, &["retention", "run"]);

    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(listed(&dry, "would erase payment "), expected);
    assert!(untouched_by_dry.iter().all(Option::is_some));
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(listed(&run, "erased payment "), expected);
    assert!(
        stdout(&run).contains("erased personal fields of 5 payments final before"),
        "{}",
        stdout(&run)
    );
    assert!(
        stdout(&rerun).contains("erased personal fields of 0 payments"),
        "{}",
        stdout(&rerun)
    );
    for id in &past {
        assert_eq!(
            personal_fields(&app.db, id),
            (None, "{}".to_owned(), true),
            "{id}"
        );
    }
    for id in &within {
        let (reference, metadata, erased) = personal_fields(&app.db, id);
        assert!(reference.is_some(), "{id} lost its reference");
        assert_ne!(metadata, "{}", "{id} lost its metadata");
        assert!(!erased, "{id}");
    }
    let runs: Vec<String> = app
        .db
        .owner()
        .query(
            "SELECT details::text FROM ctrip.audit_events WHERE action = 'retention.run'
             ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(runs.len(), 3);
    assert!(runs[0].contains(r#""dry_run": true"#), "{}", runs[0]);
    assert!(runs[1].contains(r#""payments_erased": 5"#), "{}", runs[1]);
}

#[test]
fn retention_lock_allows_one_run() {
    let app = TestApp::start();
    let mut table = base_config(&app.db);
    set(&mut table, "retention", "payment_personal_data_days", 30);
    let config = write_config(&table);
    let mut holder = app.db.owner();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x6374_7269_7072_6574_i64])
        .unwrap();

    let busy = ctrip(&config, &["retention", "run"]);
    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&0x6374_7269_7072_6574_i64],
        )
        .unwrap();
    let free = ctrip(&config, &["retention", "run"]);

    assert_eq!(busy.status.code(), Some(1));
    assert!(
        stderr(&busy).contains("another ctrip process is running retention now"),
        "{}",
        stderr(&busy)
    );
    assert!(free.status.success(), "{}", stderr(&free));
}

#[test]
fn serve_runs_retention_job() {
    let app = TestApp::start_with(|table| {
        set(table, "retention", "payment_personal_data_days", 1);
        set(table, "retention", "interval_s", 10);
    });
    let id = aged_payment(&app, "paid", Some(2), -1);

    let deadline = Instant::now() + Duration::from_secs(60);
    while personal_fields(&app.db, &id).0.is_some() {
        assert!(
            Instant::now() < deadline,
            "the retention job did not erase the payment within 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    assert!(personal_fields(&app.db, &id).2, "erased_at is not set");
    let system_runs: i64 = app
        .db
        .owner()
        .query_one(
            "SELECT count(*) FROM ctrip.audit_events
             WHERE action = 'retention.run' AND actor_type = 'system'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(system_runs >= 2, "{system_runs}");
}

/// Moves rows 1 to `through` of the audit log `months` months into the past and rebuilds the
/// chain from there, as a log that old would be.
fn age_audit_rows(db: &TestDb, through: i64, months: i32) {
    db.chain_audit();
    let mut owner = db.owner();
    owner
        .batch_execute("ALTER TABLE ctrip.audit_events DISABLE TRIGGER USER")
        .unwrap();
    owner
        .execute(
            "UPDATE ctrip.audit_events
             SET occurred_at = now() - make_interval(months => $2) + make_interval(secs => id)
             WHERE id <= $1",
            &[&through, &months],
        )
        .unwrap();
    let last: i64 = owner
        .query_one("SELECT max(id) FROM ctrip.audit_events", &[])
        .unwrap()
        .get(0);
    for id in 1..=last {
        owner
            .execute(
                "UPDATE ctrip.audit_events e SET
                     prev_hash = coalesce((SELECT hash FROM ctrip.audit_events WHERE id = $1 - 1),
                                          decode(repeat('00', 32), 'hex'))
                 WHERE id = $1",
                &[&id],
            )
            .unwrap();
        owner
            .execute(
                "UPDATE ctrip.audit_events e SET hash = sha256(prev_hash || ctrip.audit_encoding(e))
                 WHERE id = $1",
                &[&id],
            )
            .unwrap();
    }
    owner
        .batch_execute(
            "UPDATE ctrip.audit_chain_head SET last_hash =
                 (SELECT hash FROM ctrip.audit_events ORDER BY id DESC LIMIT 1);
             ALTER TABLE ctrip.audit_events ENABLE TRIGGER USER",
        )
        .unwrap();
}

fn audit_key_config(db: &TestDb) -> (toml::Table, std::path::PathBuf, std::path::PathBuf) {
    let files = cluster().dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let key = files.join(format!("audit-{}.key", Uuid::new_v4().simple()));
    checkpoint::generate_key(&key).unwrap();
    let checkpoints = files.join(format!("checkpoints-{}", Uuid::new_v4().simple()));
    let mut table = base_config(db);
    set(&mut table, "audit", "key_file", key.display().to_string());
    set(
        &mut table,
        "audit",
        "checkpoint_file",
        checkpoints.display().to_string(),
    );
    set(&mut table, "retention", "audit_events_months", 12);
    (table, key, checkpoints)
}

#[test]
fn audit_prune_keeps_twelve_months() {
    let app = TestApp::start();
    for amount in 1..=6 {
        app.post(
            "/api/v1/payments",
            &format!(r#"{{"chain": "ethereum", "amount": {amount}}}"#),
        );
    }
    let (table, key, checkpoints) = audit_key_config(&app.db);
    let config = write_config(&table);
    assert!(ctrip(&config, &["audit", "checkpoint"]).status.success());
    // Rows 1-5 are 13 months old, 6-8 are 11 months old, the rest are recent.
    age_audit_rows(&app.db, 8, 11);
    age_audit_rows(&app.db, 5, 13);
    let stale = ctrip(
        &config,
        &[
            "audit",
            "verify",
            "--checkpoints",
            checkpoints.to_str().unwrap(),
        ],
    );
    std::fs::write(&checkpoints, "").unwrap();

    let dry = ctrip(&config, &["retention", "run", "--dry-run"]);
    let run = ctrip(&config, &["retention", "run"]);
    let verified = ctrip(
        &config,
        &[
            "audit",
            "verify",
            "--checkpoints",
            checkpoints.to_str().unwrap(),
        ],
    );

    assert_eq!(stale.status.code(), Some(1), "the aged log was rebuilt");
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("would prune 5 audit events (rows 1 to 5)"),
        "{}",
        stdout(&dry)
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stdout(&run).contains("pruned 5 audit events (rows 1 to 5)"),
        "{}",
        stdout(&run)
    );
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(
        stdout(&verified).contains("rows 1 to 5 were pruned"),
        "{}",
        stdout(&verified)
    );
    assert!(
        stdout(&verified).contains("1 prune ranges signature-checked"),
        "{}",
        stdout(&verified)
    );
    let mut owner = app.db.owner();
    let first: i64 = owner
        .query_one("SELECT min(id) FROM ctrip.audit_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(first, 6);
    let signing = checkpoint::load_key(&key).unwrap();
    let points = checkpoint::read(&checkpoints, &signing.verifying_key()).unwrap();
    assert_eq!(points.len(), 1, "one checkpoint, written before the prune");
    assert_eq!(points[0].id, 5);
    let pruned: String = owner
        .query_one(
            "SELECT details::text FROM ctrip.audit_events WHERE action = 'audit.pruned'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(pruned.contains(r#""rows": 5"#), "{pruned}");
    let direct = owner
        .batch_execute("DELETE FROM ctrip.audit_events WHERE id = 6")
        .unwrap_err();
    assert!(
        crate::harness::error_text(&direct).contains("append-only"),
        "{direct}"
    );
    let too_recent = owner
        .query_one(
            "SELECT ctrip.audit_prune(6, (SELECT hash FROM ctrip.audit_events WHERE id = 6),
                                      now() - interval '11 months', 'x', '\\x00'::bytea, 'cli', 'x')",
            &[],
        )
        .unwrap_err();
    assert!(
        crate::harness::error_text(&too_recent).contains("kept at least 12 months"),
        "{too_recent}"
    );
}

#[test]
fn audit_prune_leaves_pending_rows() {
    let db = TestDb::migrated();
    let (table, _, _) = audit_key_config(&db);
    let config = write_config(&table);
    age_audit_rows(&db, 3, 13);
    // A row committed but not yet chained, as old as the pruned ones.
    db.owner()
        .batch_execute(
            "INSERT INTO ctrip.audit_events
                 (occurred_at, actor_type, actor_id, action, outcome, details)
             VALUES (now() - interval '13 months', 'system', 'test', 'test.pending',
                     'success', '{}')",
        )
        .unwrap();

    let run = ctrip(&config, &["retention", "run"]);
    let verified = ctrip(&config, &["audit", "verify"]);

    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stdout(&run).contains("pruned 3 audit events (rows 1 to 3)"),
        "{}",
        stdout(&run)
    );
    assert!(verified.status.success(), "{}", stderr(&verified));
    let id: i64 = db
        .owner()
        .query_one(
            "SELECT id FROM ctrip.audit_events WHERE action = 'test.pending'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        id > 3,
        "the pending row was kept and chained after the prune: {id}"
    );
}

#[test]
fn forged_prune_record_detected() {
    let app = TestApp::start();
    let (table, key, _) = audit_key_config(&app.db);
    let config = write_config(&table);
    age_audit_rows(&app.db, 3, 13);
    assert!(ctrip(&config, &["retention", "run"]).status.success());

    // An owner hides more deleted rows by moving the recorded range.
    let mut owner = app.db.owner();
    owner
        .batch_execute(
            "ALTER TABLE ctrip.audit_events DISABLE TRIGGER USER;
             DELETE FROM ctrip.audit_events WHERE id = 4;
             ALTER TABLE ctrip.audit_events ENABLE TRIGGER USER;
             UPDATE ctrip.audit_prunes SET last_id = 4,
                 last_hash = (SELECT prev_hash FROM ctrip.audit_events WHERE id = 5);",
        )
        .unwrap();
    // Plain verify reads the configured checkpoint file, so it checks the prune's signature.
    // A config without audit files shows what verify can tell without the key.
    let without_key = ctrip(&write_config(&base_config(&app.db)), &["audit", "verify"]);
    let plain = ctrip(&config, &["audit", "verify"]);
    let with_key = ctrip(
        &config,
        &["audit", "verify", "--key", key.to_str().unwrap()],
    );

    assert!(
        without_key.status.success(),
        "without the key the forged range anchors the chain: {}",
        stderr(&without_key)
    );
    assert_eq!(plain.status.code(), Some(1), "{}", stdout(&plain));
    assert_eq!(with_key.status.code(), Some(1));
    assert!(
        stdout(&with_key).contains("is not signed by the audit key"),
        "{}",
        stdout(&with_key)
    );
}

#[test]
fn audit_retention_below_twelve_months_rejected() {
    let db = TestDb::create();
    let (mut table, _, _) = audit_key_config(&db);
    set(&mut table, "retention", "audit_events_months", 11);
    let config = write_config(&table);

    let output = ctrip(&config, &["retention", "run"]);

    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("retention.audit_events_months = 11 is out of range"),
        "{}",
        stderr(&output)
    );
}
