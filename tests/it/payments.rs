//! Create, read and list payments through the API.

use serde_json::json;

use crate::harness::TestApp;

#[test]
fn create_returns_first_evm_address() {
    let app = TestApp::start();

    let reply = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "token": "USDC", "amount": "1500000", "expires_in": 1800,
            "reference": "order-123", "metadata": {"cart": 7}}"#,
    );

    assert_eq!(reply.status, 201, "{}", reply.text);
    let payment = &reply.json;
    assert_eq!(
        payment["address"],
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    );
    assert_eq!(payment["derivation_path"], "m/44'/60'/0'/0/0");
    assert_eq!(payment["chain"], "ethereum");
    assert_eq!(payment["token"], "USDC");
    assert_eq!(payment["decimals"], 6);
    assert_eq!(payment["amount"], "1500000");
    assert_eq!(payment["status"], "pending");
    assert_eq!(payment["confirmations"], 0);
    assert_eq!(payment["reference"], "order-123");
    assert_eq!(payment["metadata"], json!({"cart": 7}));
    let id = payment["id"].as_str().unwrap();
    assert_eq!(
        reply.header("Location"),
        Some(format!("/api/v1/payments/{id}").as_str())
    );
}

#[test]
fn create_times_are_rfc3339_with_offset() {
    let app = TestApp::start();

    let reply = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": 5, "expires_in": 600}"#,
    );

    assert_eq!(reply.status, 201, "{}", reply.text);
    let created =
        chrono::DateTime::parse_from_rfc3339(reply.json["created_at"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(reply.json["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 600);
    assert!(reply.json["created_at"]
        .as_str()
        .unwrap()
        .ends_with("+00:00"));
}

#[test]
fn addresses_follow_index_per_family() {
    let app = TestApp::start();

    let first = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );
    let solana = app.post("/api/v1/payments", r#"{"chain": "solana", "amount": "1"}"#);
    let second = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );
    let third = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );

    assert_eq!(
        first.json["address"],
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    );
    assert_eq!(
        solana.json["address"],
        "oeYf6KAJkLYhBuR8CiGc6L4D4Xtfepr85fuDgA9kq96"
    );
    assert_eq!(solana.json["derivation_path"], "m/44'/501'/0'/0'");
    assert_eq!(solana.json["decimals"], 9);
    assert_eq!(solana.json["token"], serde_json::Value::Null);
    assert_eq!(
        second.json["address"],
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    );
    assert_eq!(
        third.json["address"],
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    );
}

#[test]
fn get_returns_created_payment() {
    let app = TestApp::start();
    let created = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "token": "USDC", "amount": "42"}"#,
    );
    let id = created.json["id"].as_str().unwrap();

    let reply = app.get(&format!("/api/v1/payments/{id}"));

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json, created.json);
}

#[test]
fn get_unknown_id_is_404() {
    let app = TestApp::start();

    let unknown = app.get("/api/v1/payments/0190f3c4-0000-7000-8000-000000000000");
    let malformed = app.get("/api/v1/payments/not-a-uuid");

    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error().0, "not_found");
    assert_eq!(malformed.status, 404);
}

#[test]
fn huge_amount_round_trips_exactly() {
    let app = TestApp::start();
    let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";

    let created = app.post(
        "/api/v1/payments",
        &format!(r#"{{"chain": "ethereum", "amount": "{max}"}}"#),
    );
    let read = app.get(&format!(
        "/api/v1/payments/{}",
        created.json["id"].as_str().unwrap()
    ));

    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(read.json["amount"], max);
}

#[test]
fn pending_past_expiry_reads_expired() {
    let app = TestApp::start();
    let created = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": "1"}"#,
    );
    let id = created.json["id"].as_str().unwrap();
    let uuid = uuid::Uuid::parse_str(id).unwrap();
    app.db
        .owner()
        .execute(
            "UPDATE ctrip.payments SET created_at = now() - interval '2 hours',
                 expires_at = now() - interval '1 hour' WHERE id = $1",
            &[&uuid],
        )
        .unwrap();

    let read = app.get(&format!("/api/v1/payments/{id}"));
    let expired = app.get("/api/v1/payments?status=expired");
    let pending = app.get("/api/v1/payments?status=pending");

    assert_eq!(read.json["status"], "expired");
    assert_eq!(expired.json["data"].as_array().unwrap().len(), 1);
    assert_eq!(pending.json["data"].as_array().unwrap().len(), 0);
}

#[test]
fn list_pages_newest_first() {
    let app = TestApp::start();
    let mut ids = Vec::new();
    for amount in 1..=5 {
        let reply = app.post(
            "/api/v1/payments",
            &format!(r#"{{"chain": "ethereum", "amount": {amount}}}"#),
        );
        ids.push(reply.json["id"].as_str().unwrap().to_owned());
    }
    ids.reverse();

    let first = app.get("/api/v1/payments?limit=2");
    let last_id = first.json["data"][1]["id"].as_str().unwrap().to_owned();
    let second = app.get(&format!(
        "/api/v1/payments?limit=2&starting_after={last_id}"
    ));
    let last_id = second.json["data"][1]["id"].as_str().unwrap().to_owned();
    let third = app.get(&format!(
        "/api/v1/payments?limit=2&starting_after={last_id}"
    ));

    let page_ids = |reply: &crate::harness::Reply| -> Vec<String> {
        reply.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(page_ids(&first), ids[0..2]);
    assert_eq!(first.json["has_more"], true);
    assert_eq!(page_ids(&second), ids[2..4]);
    assert_eq!(second.json["has_more"], true);
    assert_eq!(page_ids(&third), ids[4..5]);
    assert_eq!(third.json["has_more"], false);
}

#[test]
fn list_rejects_bad_query() {
    let app = TestApp::start();
    let cases = [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=101", "limit"),
        ("starting_after=xyz", "starting_after"),
        (
            "starting_after=0190f3c4-0000-7000-8000-000000000000",
            "starting_after",
        ),
    ];

    for (query, field) in cases {
        let reply = app.get(&format!("/api/v1/payments?{query}"));

        assert_eq!(reply.status, 400, "{query}: {}", reply.text);
        assert_eq!(reply.error(), ("invalid_query", Some(field)), "{query}");
    }
}
