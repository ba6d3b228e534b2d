//! What the runtime role may not do, shown against the real schema over TLS.

use postgres::error::SqlState;

use crate::harness::{create_key_for, create_merchant, TestApp, TestDb};

/// Runs `sql` as the runtime role and returns the SQLSTATE it failed with.
fn refused(db: &TestDb, sql: &str) -> SqlState {
    let mut client = db.runtime();
    match client.batch_execute(sql) {
        Ok(()) => panic!("the runtime role was allowed to run: {sql}"),
        Err(err) => err
            .code()
            .cloned()
            .unwrap_or_else(|| panic!("{sql}: {err}")),
    }
}

#[test]
fn runtime_role_cannot_change_schema() {
    let app = TestApp::start();
    let cases = [
        "DROP TABLE ctrip.payments",
        "ALTER TABLE ctrip.payments ADD COLUMN note text",
        "TRUNCATE ctrip.payments",
        "TRUNCATE ctrip.audit_events",
        "CREATE TABLE public.stolen (id int)",
        "CREATE TABLE ctrip.stolen (id int)",
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "ALTER POLICY app_own_merchant ON ctrip.payments USING (true)",
        "DROP POLICY app_own_merchant ON ctrip.payments",
        "ALTER TABLE ctrip.payments DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE ctrip.payments NO FORCE ROW LEVEL SECURITY",
        "SET ROLE ctrip_owner",
        "SET ROLE ctrip_migrator",
        "DELETE FROM ctrip.payments",
        "DELETE FROM ctrip.audit_events",
        "UPDATE ctrip.audit_events SET action = 'nothing'",
        "SELECT set_config('ctrip.audit_chaining', 'on', false);
         UPDATE ctrip.audit_events SET action = 'nothing' WHERE id < 0",
        "UPDATE ctrip.audit_chain_head SET last_id = 0",
        "INSERT INTO ctrip.api_keys (id, merchant_id, name, prefix, key_hash) VALUES (gen_random_uuid(), gen_random_uuid(), 'x', 'ctrip_x', '\\x00')",
        "UPDATE ctrip.api_keys SET revoked_at = NULL",
        "SELECT key_hash FROM ctrip.api_keys",
        "INSERT INTO ctrip.merchants (id, name) VALUES (gen_random_uuid(), 'mine')",
        "CREATE TEMPORARY TABLE scratch (id int)",
        "SELECT * FROM pg_temp.ctrip_request_context",
    ];

    for sql in cases {
        let code = refused(&app.db, sql);

        assert!(
            code == SqlState::INSUFFICIENT_PRIVILEGE || code == SqlState::UNDEFINED_TABLE,
            "{sql}: SQLSTATE {}",
            code.code()
        );
    }
}

#[test]
fn runtime_role_attributes_are_minimal() {
    let app = TestApp::start();

    let row = app
        .db
        .runtime()
        .query_one(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication,
                    rolconnlimit, current_setting('search_path')
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap();

    assert!(!row.get::<_, bool>(0), "superuser");
    assert!(!row.get::<_, bool>(1), "bypassrls");
    assert!(!row.get::<_, bool>(2), "createrole");
    assert!(!row.get::<_, bool>(3), "createdb");
    assert!(!row.get::<_, bool>(4), "replication");
    assert!(row.get::<_, i32>(5) > 0, "no connection limit");
    assert_eq!(row.get::<_, String>(6), "ctrip");
}

#[test]
fn public_has_nothing() {
    let app = TestApp::start();

    let row = app
        .db
        .owner()
        .query_one(
            "SELECT has_database_privilege('public', current_database(), 'CONNECT'),
                    has_database_privilege('public', current_database(), 'TEMPORARY'),
                    has_schema_privilege('public', 'public', 'CREATE'),
                    has_schema_privilege('public', 'ctrip', 'USAGE'),
                    has_table_privilege('public', 'ctrip.payments', 'SELECT'),
                    has_function_privilege('public', 'ctrip.begin_request(text, bytea)', 'EXECUTE')",
            &[],
        )
        .unwrap();

    for (index, what) in [
        "CONNECT",
        "TEMPORARY",
        "CREATE on public",
        "USAGE on ctrip",
        "SELECT",
        "EXECUTE",
    ]
    .iter()
    .enumerate()
    {
        assert!(!row.get::<_, bool>(index), "PUBLIC has {what}");
    }
}

#[test]
fn every_merchant_table_forces_rls() {
    let app = TestApp::start();

    let rows = app
        .db
        .owner()
        .query(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
             WHERE relnamespace = 'ctrip'::regnamespace
               AND relname IN ('merchants', 'api_keys', 'deposit_addresses', 'payments', 'audit_events')",
            &[],
        )
        .unwrap();

    assert_eq!(rows.len(), 5);
    for row in rows {
        let table: String = row.get(0);
        assert!(row.get::<_, bool>(1), "{table}: RLS not enabled");
        assert!(row.get::<_, bool>(2), "{table}: RLS not forced");
    }
}

#[test]
fn readonly_role_sees_reports_only() {
    let app = TestApp::start();
    app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1", "reference": "secret-order"}"#,
    );

    let row = app
        .db
        .owner()
        .query_one(
            "SELECT has_table_privilege('ctrip_readonly', 'ctrip.payments_report', 'SELECT'),
                    has_table_privilege('ctrip_readonly', 'ctrip.payments', 'SELECT'),
                    has_table_privilege('ctrip_readonly', 'ctrip.audit_events', 'SELECT'),
                    (SELECT count(*) FROM ctrip.payments_report),
                    (SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
                     WHERE r.rolname = 'ctrip_readonly' AND s.setdatabase = 0)",
            &[],
        )
        .unwrap();
    let columns: Vec<String> = app
        .db
        .owner()
        .query("SELECT column_name::text FROM information_schema.columns WHERE table_name = 'payments_report'", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();

    assert!(row.get::<_, bool>(0));
    assert!(!row.get::<_, bool>(1));
    assert!(!row.get::<_, bool>(2));
    assert_eq!(row.get::<_, i64>(3), 1);
    assert_eq!(
        row.get::<_, Vec<String>>(4),
        ["default_transaction_read_only=on"]
    );
    assert!(!columns.contains(&"reference".to_owned()), "{columns:?}");
    assert!(!columns.contains(&"metadata".to_owned()), "{columns:?}");
}

fn visible_payments(client: &mut postgres::Transaction<'_>) -> i64 {
    client
        .query_one("SELECT count(*) FROM ctrip.payments", &[])
        .unwrap()
        .get(0)
}

#[test]
fn merchant_context_fails_closed() {
    let app = TestApp::start();
    app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );
    let other = create_merchant(&app.db, "other");
    let other_key = create_key_for(&app.db, other, &["payments:read", "payments:write"]);
    let auth = format!("Bearer {other_key}");
    crate::harness::send(
        &app.base,
        "POST",
        "/api/v1/payments",
        Some(r#"{"chain": "ethereum", "amount": "2"}"#),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
    );
    let test_merchant: uuid::Uuid = app
        .db
        .owner()
        .query_one("SELECT id FROM ctrip.merchants WHERE name = 'test'", &[])
        .unwrap()
        .get(0);
    let mut runtime = app.db.runtime();

    let mut unset = runtime.transaction().unwrap();
    let unset_count = visible_payments(&mut unset);
    unset.rollback().unwrap();

    let mut empty = runtime.transaction().unwrap();
    empty
        .execute("SELECT set_config('ctrip.merchant_id', '', true)", &[])
        .unwrap();
    let empty_count = visible_payments(&mut empty);
    empty.rollback().unwrap();

    let mut forged_alone = runtime.transaction().unwrap();
    forged_alone
        .execute(
            "SELECT set_config('ctrip.merchant_id', $1, true)",
            &[&other.to_string()],
        )
        .unwrap();
    let forged_alone_count = visible_payments(&mut forged_alone);
    forged_alone.rollback().unwrap();

    let mut request = runtime.transaction().unwrap();
    let key_hash = sha2_of(&app.key);
    let prefix = &app.key[..14];
    let began = request
        .query(
            "SELECT merchant_id FROM ctrip.begin_request($1, $2)",
            &[&prefix, &key_hash],
        )
        .unwrap();
    let own_count = visible_payments(&mut request);
    request
        .execute(
            "SELECT set_config('ctrip.merchant_id', $1, true)",
            &[&other.to_string()],
        )
        .unwrap();
    let forged_in_request = visible_payments(&mut request);
    let second_begin = request.query(
        "SELECT merchant_id FROM ctrip.begin_request($1, $2)",
        &[&&other_key[..14], &sha2_of(&other_key)],
    );
    request.rollback().unwrap();

    assert_eq!(unset_count, 0);
    assert_eq!(empty_count, 0);
    assert_eq!(forged_alone_count, 0);
    assert_eq!(began[0].get::<_, uuid::Uuid>(0), test_merchant);
    assert_eq!(own_count, 1);
    assert_eq!(forged_in_request, 0);
    assert!(
        second_begin.is_err(),
        "a second context in one transaction must be refused"
    );
}

#[test]
fn merchant_context_ends_with_its_transaction() {
    let app = TestApp::start();
    app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );
    let prefix = &app.key[..14];
    let key_hash = sha2_of(&app.key);
    let begin = "SELECT merchant_id FROM ctrip.begin_request($1, $2)";
    let mut runtime = app.db.runtime();

    let mut first = runtime.transaction().unwrap();
    let merchant: uuid::Uuid = first
        .query_one(begin, &[&prefix, &key_hash])
        .unwrap()
        .get(0);
    let in_first = visible_payments(&mut first);
    first.commit().unwrap();
    // The next transaction on the same session forges the setting and writes, so it has a
    // transaction id of its own, which the stored context does not carry.
    let mut later = runtime.transaction().unwrap();
    later
        .execute(
            "SELECT set_config('ctrip.merchant_id', $1, true), pg_current_xact_id()",
            &[&merchant.to_string()],
        )
        .unwrap();
    let in_later = visible_payments(&mut later);
    later.rollback().unwrap();
    // The context table exists in this session now, and still belongs to ctrip_owner.
    let restamp = runtime
        .batch_execute(
            "UPDATE pg_temp.ctrip_request_context SET transaction_id = pg_current_xact_id()",
        )
        .unwrap_err();
    let mut rolled_back = runtime.transaction().unwrap();
    rolled_back.batch_execute("SAVEPOINT before").unwrap();
    rolled_back.query_one(begin, &[&prefix, &key_hash]).unwrap();
    rolled_back
        .batch_execute("ROLLBACK TO SAVEPOINT before")
        .unwrap();
    rolled_back
        .execute(
            "SELECT set_config('ctrip.merchant_id', $1, true), pg_current_xact_id()",
            &[&merchant.to_string()],
        )
        .unwrap();
    let after_rollback = visible_payments(&mut rolled_back);
    let began_again = rolled_back.query(begin, &[&prefix, &key_hash]).unwrap();
    let after_second_begin = visible_payments(&mut rolled_back);
    rolled_back.rollback().unwrap();

    assert_eq!(in_first, 1);
    assert_eq!(in_later, 0);
    assert_eq!(
        restamp.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{restamp}"
    );
    assert_eq!(after_rollback, 0);
    assert_eq!(began_again.len(), 1);
    assert_eq!(after_second_begin, 1);
}

#[test]
fn runtime_role_cannot_choose_audit_ids_or_hashes() {
    let db = TestDb::migrated();
    let mut runtime = db.runtime();

    let mut rejections = Vec::new();
    for column in ["id", "prev_hash", "hash"] {
        let value = if column == "id" { "1" } else { "sha256('')" };
        let err = runtime
            .batch_execute(&format!(
                "INSERT INTO ctrip.audit_events ({column}, actor_type, action, outcome)
                 VALUES ({value}, 'system', 'test.forged', 'success')"
            ))
            .unwrap_err();
        rejections.push((column, err));
    }
    runtime
        .batch_execute(
            "INSERT INTO ctrip.audit_events (actor_type, action, outcome)
             VALUES ('system', 'test.plain', 'success')",
        )
        .unwrap();
    let pending_id: i64 = db
        .owner()
        .query_one(
            "SELECT id FROM ctrip.audit_events WHERE action = 'test.plain'",
            &[],
        )
        .unwrap()
        .get(0);

    for (column, err) in &rejections {
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{column}: {err}"
        );
        assert!(
            crate::harness::error_text(err).contains("permission denied for table audit_events"),
            "{column}: {err}"
        );
    }
    assert!(pending_id < 0, "{pending_id}");
    assert_eq!(db.chain_audit(), 1);
    assert!(ctrip::audit::verify::verify(&mut db.owner(), &[])
        .unwrap()
        .is_ok());
}

#[test]
fn wrong_key_hash_sets_no_context() {
    let app = TestApp::start();
    app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );
    let mut runtime = app.db.runtime();
    let mut transaction = runtime.transaction().unwrap();

    let rows = transaction
        .query(
            "SELECT * FROM ctrip.begin_request($1, $2)",
            &[&&app.key[..14], &vec![0u8; 32]],
        )
        .unwrap();
    let count = visible_payments(&mut transaction);

    assert!(rows.is_empty());
    assert_eq!(count, 0);
}

#[test]
fn audit_log_append_only_for_owner() {
    let app = TestApp::start();
    app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );
    let mut owner = app.db.owner();

    let delete = owner
        .batch_execute("DELETE FROM ctrip.audit_events")
        .unwrap_err();
    let update = owner
        .batch_execute("UPDATE ctrip.audit_events SET outcome = 'failed'")
        .unwrap_err();
    let truncate = owner
        .batch_execute("TRUNCATE ctrip.audit_events")
        .unwrap_err();

    for err in [delete, update, truncate] {
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
        assert!(
            crate::harness::error_text(&err).contains("append-only"),
            "{err}"
        );
    }
}

/// Returns a migrated database, with no server to chain it, holding one committed pending
/// row with action `test.pending`.
fn database_with_pending_row() -> TestDb {
    let db = TestDb::migrated();
    db.owner()
        .batch_execute(
            "INSERT INTO ctrip.audit_events (actor_type, actor_id, action, outcome, details)
             VALUES ('system', 'test', 'test.pending', 'success', '{}')",
        )
        .unwrap();
    db
}

#[test]
fn owner_cannot_edit_pending_rows() {
    let db = database_with_pending_row();
    let mut owner = db.owner();
    owner
        .batch_execute("SET ctrip.audit_chaining = 'on'")
        .unwrap();

    let edit = owner
        .batch_execute(
            "UPDATE ctrip.audit_events SET outcome = 'denied' WHERE action = 'test.pending'",
        )
        .unwrap_err();
    let chain_with_edit = owner
        .batch_execute(
            "UPDATE ctrip.audit_events
             SET id = 1000, prev_hash = sha256(''), hash = sha256(''), actor_id = 'someone else'
             WHERE action = 'test.pending'",
        )
        .unwrap_err();

    for err in [edit, chain_with_edit] {
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
        assert!(
            crate::harness::error_text(&err).contains("append-only"),
            "{err}"
        );
    }
    assert_eq!(db.chain_audit(), 1);
    let actor: String = owner
        .query_one(
            "SELECT actor_id FROM ctrip.audit_events WHERE action = 'test.pending'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(actor, "test");
}

#[test]
fn owner_cannot_insert_chained_rows() {
    let db = database_with_pending_row();
    let mut owner = db.owner();

    let mut rejections = Vec::new();
    for (columns, values) in [
        ("id", "1"),
        ("id", "0"),
        ("prev_hash", "sha256('')"),
        ("hash", "sha256('')"),
    ] {
        let err = owner
            .batch_execute(&format!(
                "INSERT INTO ctrip.audit_events ({columns}, actor_type, action, outcome)
                 VALUES ({values}, 'system', 'test.forged', 'success')"
            ))
            .unwrap_err();
        rejections.push((columns, values, err));
    }

    for (column, value, err) in &rejections {
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{column} = {value}: {err}"
        );
        assert!(
            crate::harness::error_text(err).contains("audit rows are inserted pending"),
            "{column} = {value}: {err}"
        );
    }
    assert_eq!(db.chain_audit(), 1);
    assert!(ctrip::audit::verify::verify(&mut owner, &[])
        .unwrap()
        .is_ok());
}

#[test]
fn unencodable_time_cannot_stop_chaining() {
    let db = database_with_pending_row();
    let mut runtime = db.runtime();

    let mut rejections = Vec::new();
    for time in ["infinity", "-infinity", "200000-01-01"] {
        let err = runtime
            .execute(
                "INSERT INTO ctrip.audit_events (occurred_at, actor_type, action, outcome)
                 VALUES ($1::text::timestamptz, 'system', 'test.jam', 'success')",
                &[&time],
            )
            .unwrap_err();
        rejections.push((time, err));
    }

    for (time, err) in &rejections {
        assert_eq!(
            err.code(),
            Some(&SqlState::CHECK_VIOLATION),
            "{time}: {err}"
        );
        assert!(
            crate::harness::error_text(err).contains("audit_events_occurred_at_encodable"),
            "{time}: {err}"
        );
    }
    assert_eq!(db.chain_audit(), 1);
    assert!(ctrip::audit::verify::verify(&mut db.owner(), &[])
        .unwrap()
        .is_ok());
}

pub fn sha2_of(key: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).to_vec()
}

#[test]
fn runtime_role_may_chain_pending_rows() {
    let db = database_with_pending_row();
    let mut owner = db.owner();
    let pending: i64 = owner
        .query_one(
            "SELECT id FROM ctrip.audit_events WHERE action = 'test.pending'",
            &[],
        )
        .unwrap()
        .get(0);
    let mut runtime = db.runtime();

    let chained: i32 = runtime
        .query_one("SELECT ctrip.audit_chain_pending(10, true)", &[])
        .unwrap()
        .get(0);

    assert!(pending < 0, "{pending}");
    assert_eq!(chained, 1);
    let (id, head): (i64, i64) = {
        let row = owner
            .query_one(
                "SELECT e.id, h.last_id FROM ctrip.audit_events e, ctrip.audit_chain_head h
                 WHERE e.action = 'test.pending'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(id, head, "the row became the newest link of the chain");
    assert!(ctrip::audit::verify::verify(&mut owner, &[])
        .unwrap()
        .is_ok());
}
