//! Merchant isolation and key scopes through the API.

use crate::harness::{create_key_for, create_merchant, send, Reply, TestApp};

fn request_as(app: &TestApp, key: &str, method: &str, path: &str, body: Option<&str>) -> Reply {
    let auth = format!("Bearer {key}");
    send(
        &app.base,
        method,
        path,
        body,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
    )
}

fn audit_actions(app: &TestApp, action: &str) -> i64 {
    app.db
        .owner()
        .query_one(
            "SELECT count(*) FROM ctrip.audit_events WHERE action = $1",
            &[&action],
        )
        .unwrap()
        .get(0)
}

#[test]
fn other_merchant_cannot_read_list_or_guess() {
    let app = TestApp::start();
    let created = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "7"}"#,
    );
    let id = created.json["id"].as_str().unwrap();
    let rival = create_merchant(&app.db, "rival");
    let rival_key = create_key_for(&app.db, rival, &["payments:read", "payments:write"]);

    let read = request_as(
        &app,
        &rival_key,
        "GET",
        &format!("/api/v1/payments/{id}"),
        None,
    );
    let list = request_as(&app, &rival_key, "GET", "/api/v1/payments", None);
    let unknown = request_as(
        &app,
        &rival_key,
        "GET",
        "/api/v1/payments/0190f3c4-0000-7000-8000-000000000000",
        None,
    );
    let cursor = request_as(
        &app,
        &rival_key,
        "GET",
        &format!("/api/v1/payments?starting_after={id}"),
        None,
    );

    assert_eq!(read.status, 404);
    assert_eq!(
        read.json["error"]["message"],
        unknown.json["error"]["message"]
            .as_str()
            .unwrap()
            .replace("0190f3c4-0000-7000-8000-000000000000", id)
    );
    assert_eq!(list.status, 200);
    assert_eq!(list.json["data"].as_array().unwrap().len(), 0);
    assert_eq!(cursor.status, 400);
    assert_eq!(audit_actions(&app, "payment.cross_merchant_attempt"), 1);
}

#[test]
fn merchants_get_their_own_addresses() {
    let app = TestApp::start();
    let rival = create_merchant(&app.db, "rival");
    let rival_key = create_key_for(&app.db, rival, &["payments:read", "payments:write"]);

    let first = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );
    let second = request_as(
        &app,
        &rival_key,
        "POST",
        "/api/v1/payments",
        Some(r#"{"chain": "ethereum", "amount": "1"}"#),
    );
    let own_list = request_as(&app, &rival_key, "GET", "/api/v1/payments", None);

    assert_eq!(first.json["derivation_path"], "m/44'/60'/0'/0/0");
    assert_eq!(second.json["derivation_path"], "m/44'/60'/0'/0/1");
    assert_ne!(first.json["address"], second.json["address"]);
    assert_eq!(own_list.json["data"][0]["id"], second.json["id"]);
    assert_eq!(own_list.json["data"].as_array().unwrap().len(), 1);
}

#[test]
fn read_scope_cannot_create() {
    let app = TestApp::start();
    let merchant: uuid::Uuid = app
        .db
        .owner()
        .query_one("SELECT id FROM ctrip.merchants", &[])
        .unwrap()
        .get(0);
    let reader = create_key_for(&app.db, merchant, &["payments:read"]);

    let reply = request_as(
        &app,
        &reader,
        "POST",
        "/api/v1/payments",
        Some(r#"{"chain": "ethereum", "amount": "1"}"#),
    );
    let list = request_as(&app, &reader, "GET", "/api/v1/payments", None);

    assert_eq!(reply.status, 403);
    assert_eq!(reply.error().0, "forbidden");
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("payments:write"),
        "{}",
        reply.text
    );
    assert_eq!(list.status, 200);
    assert_eq!(app.db.count("payments"), 0);
    assert_eq!(audit_actions(&app, "auth.scope_denied"), 1);
}

#[test]
fn write_scope_cannot_read() {
    let app = TestApp::start();
    let merchant: uuid::Uuid = app
        .db
        .owner()
        .query_one("SELECT id FROM ctrip.merchants", &[])
        .unwrap()
        .get(0);
    let writer = create_key_for(&app.db, merchant, &["payments:write"]);

    let created = request_as(
        &app,
        &writer,
        "POST",
        "/api/v1/payments",
        Some(r#"{"chain": "ethereum", "amount": "1"}"#),
    );
    let read = request_as(
        &app,
        &writer,
        "GET",
        &format!("/api/v1/payments/{}", created.json["id"].as_str().unwrap()),
        None,
    );

    assert_eq!(created.status, 201);
    assert_eq!(read.status, 403);
    assert!(read.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("payments:read"));
}

#[test]
fn failed_authentication_audited() {
    let app = TestApp::start();

    request_as(
        &app,
        "ctrip_AAAAAAAA_notakey",
        "GET",
        "/api/v1/payments",
        None,
    );

    let row = app
        .db
        .owner()
        .query_one(
            "SELECT actor_id, outcome, source_address, merchant_id IS NULL FROM ctrip.audit_events
             WHERE action = 'auth.failed'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "ctrip_AAAAAAAA");
    assert_eq!(row.get::<_, String>(1), "denied");
    assert_eq!(row.get::<_, String>(2), "127.0.0.1");
    assert!(row.get::<_, bool>(3));
}

#[test]
fn unknown_scope_rejected() {
    let err = ctrip::apikeys::parse_scopes("payments:read,payments:delete")
        .unwrap_err()
        .to_string();

    assert!(err.contains("\"payments:delete\""), "{err}");
    assert!(err.contains("payments:read, payments:write"), "{err}");
}
