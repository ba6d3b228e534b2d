//! Routing, health, readiness, request ids and the OpenAPI document.

use crate::harness::TestApp;

#[test]
fn health_and_ready_are_ok() {
    let app = TestApp::start();

    let health = app.request("GET", "/health", None, &[]);
    let ready = app.request("GET", "/ready", None, &[]);

    assert_eq!(health.status, 200);
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["migrations"], "current");
    assert_eq!(
        ready.json["tls"]["ca"][0]["sha256"].as_str().unwrap().len(),
        64
    );
    assert_eq!(ready.json["tls"]["client"]["subject"], "ctrip");
    assert!(
        ready.json["tls"]["client"]["days_until_expiry"]
            .as_i64()
            .unwrap()
            > 3000
    );
    assert_eq!(ready.json["tls"]["generation"], 1);
}

#[test]
fn listener_sends_without_nagle_delay() {
    let app = TestApp::start();

    let nodelay = ctrip::http::listener_nodelay(app.running().server.addr).unwrap();

    assert!(
        nodelay,
        "TCP_NODELAY is off, so long responses wait for delayed ACKs"
    );
}

#[test]
fn ready_is_503_when_migrations_missing() {
    let app = TestApp::start();
    app.db
        .owner()
        .execute("DELETE FROM ctrip.schema_migrations", &[])
        .unwrap();

    let ready = app.request("GET", "/ready", None, &[]);

    assert_eq!(ready.status, 503);
    assert!(ready.json["reason"]
        .as_str()
        .unwrap()
        .contains("ctrip migrate"));
}

#[test]
fn unknown_route_is_404_and_wrong_method_405() {
    let app = TestApp::start();
    let auth = format!("Bearer {}", app.key);

    let missing = app.request("GET", "/api/v1/refunds", None, &[("Authorization", &auth)]);
    let delete = app.request(
        "DELETE",
        "/api/v1/payments",
        None,
        &[("Authorization", &auth)],
    );

    assert_eq!(missing.status, 404);
    assert_eq!(missing.error().0, "not_found");
    assert_eq!(delete.status, 405);
    assert_eq!(delete.header("Allow"), Some("GET, POST"));
    assert_eq!(delete.error().0, "method_not_allowed");
}

#[test]
fn request_id_echoed_or_generated() {
    let app = TestApp::start();

    let given = app.request("GET", "/health", None, &[("X-Request-Id", "abc-123")]);
    let long_id = "x".repeat(200);
    let unsafe_id = app.request("GET", "/health", None, &[("X-Request-Id", "bad id")]);
    let too_long = app.request("GET", "/health", None, &[("X-Request-Id", &long_id)]);
    let generated = app.request("GET", "/health", None, &[]);

    assert_eq!(given.header("X-Request-Id"), Some("abc-123"));
    assert_eq!(unsafe_id.header("X-Request-Id").unwrap().len(), 36);
    assert_eq!(too_long.header("X-Request-Id").unwrap().len(), 36);
    assert_eq!(generated.header("X-Request-Id").unwrap().len(), 36);
}

#[test]
fn request_logged_once_with_id() {
    let app = TestApp::start();
    let request_id = format!("log-check-{}", uuid::Uuid::new_v4().simple());

    app.request("GET", "/health", None, &[("X-Request-Id", &request_id)]);

    let log = crate::harness::captured_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(&request_id))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("method=GET path=/health status=200 elapsed_ms="),
        "{}",
        lines[0]
    );
}

#[test]
fn openapi_document_uses_schemars_schemas() {
    let app = TestApp::start();

    let reply = app.request("GET", "/api/v1/openapi.json", None, &[]);

    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["openapi"], "3.1.0");
    let request_schema = &reply.json["components"]["schemas"]["CreatePaymentRequest"];
    assert_eq!(request_schema["additionalProperties"], false);
    let required: Vec<&str> = request_schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["chain", "amount"]);
    assert!(
        reply.json["components"]["schemas"]["Payment"]["properties"]["derivation_path"].is_object()
    );
    assert!(reply.json["paths"]["/api/v1/payments"]["post"].is_object());
}

#[test]
fn unknown_and_repeated_query_rejected() {
    let app = TestApp::start();

    let typo = app.get("/api/v1/payments?staus=pending");
    let repeated = app.get("/api/v1/payments?limit=10&limit=1");
    let on_get = app.get("/api/v1/payments/0190f3c4-0000-7000-8000-000000000000?expand=all");

    assert_eq!(typo.status, 400);
    assert_eq!(typo.error(), ("invalid_query", Some("staus")));
    assert!(typo.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expected status, limit, starting_after"));
    assert_eq!(repeated.status, 400);
    assert!(repeated.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("repeated"));
    assert_eq!(on_get.status, 400);
}

#[test]
fn oversized_target_is_414() {
    let app = TestApp::start();
    let path = format!("/nope/{}", "a".repeat(10_000));

    let reply = app.request("GET", &path, None, &[]);

    assert_eq!(reply.status, 414);
    assert_eq!(reply.error().0, "uri_too_long");
    assert!(reply.text.len() < 500);
    let log = crate::harness::captured_log();
    assert!(
        !log.contains(&"a".repeat(1000)),
        "the whole path reached the log"
    );
}

#[test]
fn conflicting_content_length_is_400() {
    use std::io::{Read, Write};
    let app = TestApp::start();
    let mut stream = std::net::TcpStream::connect(app.base.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();

    stream
        .write_all(
            b"POST /api/v1/payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 2\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{}",
        )
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);

    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains("conflicting Content-Length"),
        "{response}"
    );
}

#[test]
fn bearer_scheme_case_insensitive() {
    let app = TestApp::start();

    let lower = app.request(
        "GET",
        "/api/v1/payments",
        None,
        &[("Authorization", &format!("bearer {}", app.key))],
    );
    let missing = app.request("GET", "/api/v1/payments", None, &[]);
    let wrong = app.request(
        "GET",
        "/api/v1/payments",
        None,
        &[("Authorization", "Bearer ctrip_AAAAAAAA_x")],
    );

    assert_eq!(lower.status, 200, "{}", lower.text);
    assert_eq!(
        missing.header("WWW-Authenticate"),
        Some("Bearer realm=\"ctrip\"")
    );
    assert!(wrong
        .header("WWW-Authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
}

#[test]
fn auth_failures_audited_once_per_minute() {
    let app = TestApp::start();

    for _ in 0..5 {
        app.request(
            "GET",
            "/api/v1/payments",
            None,
            &[("Authorization", "Bearer ctrip_AAAAAAAA_nope")],
        );
    }

    let rows: i64 = app
        .db
        .owner()
        .query_one(
            "SELECT count(*) FROM ctrip.audit_events WHERE action = 'auth.failed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[test]
fn suppressed_auth_failures_summarized_on_stop() {
    let db = crate::harness::TestDb::create();
    let server = crate::cli::ServerProcess::start(&db);
    let revoked = crate::harness::create_api_key(&db, "soon-revoked");
    let mut owner = db.owner();
    owner
        .execute(
            "UPDATE ctrip.api_keys SET revoked_at = now() WHERE name = 'soon-revoked'",
            &[],
        )
        .unwrap();
    let keys = [
        "garbage".to_owned(),
        "ctrip_AAAAAAAA_nope".to_owned(),
        "ctrip_BBBBBBBB_nope".to_owned(),
        revoked.clone(),
        revoked.clone(),
    ];

    for key in &keys {
        let header = format!("Bearer {key}");
        let reply = crate::harness::send(
            &server.base,
            "GET",
            "/api/v1/payments",
            None,
            &[("Authorization", header.as_str())],
        );
        assert_eq!(reply.status, 401, "{}", reply.text);
    }
    assert_eq!(server.stop(), Some(0));

    let rows = owner
        .query(
            "SELECT actor_type, details FROM ctrip.audit_events
             WHERE action = 'auth.failed' ORDER BY id",
            &[],
        )
        .unwrap();
    // One row for the first failure, one summary of the four after it in the same minute,
    // or, when the minute turned during the requests, more rows that still count all five.
    let mut first_rows = 0;
    let mut suppressed = 0;
    let mut revoked_count = 0;
    let mut prefixes = Vec::new();
    for row in &rows {
        let details: serde_json::Value = row.get(1);
        match row.get::<_, String>(0).as_str() {
            "api_key" => first_rows += 1,
            _ => {
                suppressed += details["suppressed"].as_u64().unwrap();
                revoked_count += details["reasons"]["revoked API key"].as_u64().unwrap_or(0);
                for prefix in details["key_prefixes"].as_array().unwrap() {
                    prefixes.push(prefix.as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert_eq!(first_rows + suppressed, 5, "{rows:?}");
    assert!(first_rows >= 1, "{rows:?}");
    if first_rows == 1 {
        assert_eq!(revoked_count, 2, "{rows:?}");
        assert!(prefixes.contains(&revoked[..14].to_owned()), "{prefixes:?}");
        assert!(
            prefixes.contains(&"ctrip_BBBBBBBB".to_owned()),
            "{prefixes:?}"
        );
    }
}

#[test]
fn ready_hides_connection_details() {
    let app = TestApp::start_with(|config| {
        crate::harness::set(config, "pool", "max_size", 1);
        crate::harness::set(config, "pool", "connection_timeout_ms", 200);
    });
    let held = app.running().app.pool.get().unwrap();

    let ready = app.request("GET", "/ready", None, &[]);

    drop(held);
    assert_eq!(ready.status, 503);
    assert!(!ready.text.contains("ctrip_runtime"), "{}", ready.text);
    assert!(!ready.text.contains("localhost"), "{}", ready.text);
}
