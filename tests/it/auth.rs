//! API key authentication: missing, malformed, unknown and revoked keys, and what is logged.

use crate::harness::{captured_log, create_api_key, TestApp};

fn get_with(app: &TestApp, authorization: Option<&str>) -> crate::harness::Reply {
    let headers: Vec<(&str, &str)> = authorization
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    app.request("GET", "/api/v1/payments", None, &headers)
}

#[test]
fn missing_key_is_401_with_challenge() {
    let app = TestApp::start();

    let reply = get_with(&app, None);

    assert_eq!(reply.status, 401);
    assert_eq!(reply.error().0, "unauthorized");
    assert!(reply
        .header("WWW-Authenticate")
        .unwrap()
        .starts_with("Bearer"));
}

#[test]
fn malformed_and_unknown_keys_are_401() {
    let app = TestApp::start();
    let forged = format!("{}{}", &app.key[..15], "x".repeat(app.key.len() - 15));
    let cases = [
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer nonsense", "malformed"),
        ("Bearer ctrip_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBB", "unknown"),
        (forged.as_str(), "unknown"),
    ];

    for (header, kind) in cases {
        let value = if header.starts_with("Basic") || header.starts_with("Bearer") {
            header.to_owned()
        } else {
            format!("Bearer {header}")
        };
        let reply = get_with(&app, Some(&value));

        assert_eq!(reply.status, 401, "{header}");
        assert!(
            reply.json["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(kind),
            "{header}: {}",
            reply.text
        );
    }
}

#[test]
fn revoked_key_is_401() {
    let app = TestApp::start();
    let before = get_with(&app, Some(&format!("Bearer {}", app.key)));
    let id: uuid::Uuid = app
        .db
        .owner()
        .query_one("SELECT id FROM ctrip.api_keys", &[])
        .unwrap()
        .get(0);
    ctrip::apikeys::revoke(&mut app.db.owner(), id).unwrap();

    let after = get_with(&app, Some(&format!("Bearer {}", app.key)));

    assert_eq!(before.status, 200);
    assert_eq!(after.status, 401);
    assert!(after.json["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("revoked"));
}

#[test]
fn revoke_twice_and_unknown_fail() {
    let app = TestApp::start();
    let id: uuid::Uuid = app
        .db
        .owner()
        .query_one("SELECT id FROM ctrip.api_keys", &[])
        .unwrap()
        .get(0);
    ctrip::apikeys::revoke(&mut app.db.owner(), id).unwrap();

    let twice = ctrip::apikeys::revoke(&mut app.db.owner(), id).unwrap_err();
    let unknown = ctrip::apikeys::revoke(&mut app.db.owner(), uuid::Uuid::nil()).unwrap_err();

    assert!(twice.to_string().contains("already revoked"), "{twice}");
    assert!(
        unknown.to_string().contains("no API key with id"),
        "{unknown}"
    );
}

#[test]
fn failure_logged_with_prefix_never_key() {
    let app = TestApp::start();
    let wrong = format!("{}_{}", &app.key[..14], "z".repeat(44));

    get_with(&app, Some(&format!("Bearer {wrong}")));
    get_with(&app, Some(&format!("Bearer {}", app.key)));

    let log = captured_log();
    let prefix = &app.key[..14];
    assert!(
        log.contains(&format!("authentication failed: key_prefix={prefix}")),
        "no warn line with the prefix"
    );
    assert!(!log.contains(&app.key), "the valid key reached the log");
    assert!(!log.contains(&wrong), "the presented key reached the log");
}

#[test]
fn key_stored_as_hash_only() {
    let app = TestApp::start();
    let second = create_api_key(&app.db, "second");

    let rows = app
        .db
        .owner()
        .query("SELECT prefix, key_hash FROM ctrip.api_keys", &[])
        .unwrap();

    assert_eq!(rows.len(), 2);
    for row in rows {
        let hash: Vec<u8> = row.get(1);
        assert_eq!(hash.len(), 32);
        assert!(!String::from_utf8_lossy(&hash).contains(&second[15..]));
    }
}

#[test]
fn last_used_at_set_on_use() {
    let app = TestApp::start();

    get_with(&app, Some(&format!("Bearer {}", app.key)));

    let used: Option<chrono::DateTime<chrono::Utc>> = app
        .db
        .owner()
        .query_one("SELECT last_used_at FROM ctrip.api_keys", &[])
        .unwrap()
        .get(0);
    assert!(used.is_some());
}
