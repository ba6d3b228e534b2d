//! Bad request bodies: each gets its status, code and field, and writes nothing.

use crate::harness::TestApp;

struct Case {
    description: &'static str,
    body: String,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
    message_part: &'static str,
}

fn case(
    description: &'static str,
    body: &str,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
    message_part: &'static str,
) -> Case {
    Case {
        description,
        body: body.to_owned(),
        status,
        code,
        field,
        message_part,
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let above_max =
        "115792089237316195423570985008687907853269984665640564039457584007913129639936";
    let big_metadata = format!(
        r#"{{"chain": "ethereum", "amount": "1", "metadata": {{"blob": "{}"}}}}"#,
        "x".repeat(9000)
    );
    vec![
        case(
            "truncated JSON",
            r#"{"chain": "ethereum", "amount": "1""#,
            400,
            "malformed_json",
            None,
            "not valid JSON",
        ),
        case(
            "not JSON at all",
            "chain=ethereum",
            400,
            "malformed_json",
            None,
            "not valid JSON",
        ),
        case("empty body", "", 400, "malformed_json", None, "empty"),
        case(
            "array body",
            r#"[1, 2]"#,
            422,
            "validation_failed",
            None,
            "JSON object",
        ),
        case(
            "missing chain",
            r#"{"amount": "1"}"#,
            422,
            "validation_failed",
            Some("chain"),
            "required",
        ),
        case(
            "missing amount",
            r#"{"chain": "ethereum"}"#,
            422,
            "validation_failed",
            Some("amount"),
            "required",
        ),
        case(
            "unknown chain",
            r#"{"chain": "etherium", "amount": "1"}"#,
            422,
            "validation_failed",
            Some("chain"),
            "expected one of ethereum, solana",
        ),
        case(
            "unknown token",
            r#"{"chain": "ethereum", "token": "DOGE", "amount": "1"}"#,
            422,
            "validation_failed",
            Some("token"),
            "expected one of USDC",
        ),
        case(
            "token of another chain",
            r#"{"chain": "solana", "token": "USDC", "amount": "1"}"#,
            422,
            "validation_failed",
            Some("token"),
            "unknown token",
        ),
        case(
            "amount zero",
            r#"{"chain": "ethereum", "amount": "0"}"#,
            422,
            "validation_failed",
            Some("amount"),
            "is zero",
        ),
        case(
            "amount zero integer",
            r#"{"chain": "ethereum", "amount": 0}"#,
            422,
            "validation_failed",
            Some("amount"),
            "0 is zero: amounts are 1 or more",
        ),
        case(
            "amount negative",
            r#"{"chain": "ethereum", "amount": "-5"}"#,
            422,
            "validation_failed",
            Some("amount"),
            "negative",
        ),
        case(
            "amount negative integer",
            r#"{"chain": "ethereum", "amount": -5}"#,
            422,
            "validation_failed",
            Some("amount"),
            "negative",
        ),
        case(
            "amount fractional",
            r#"{"chain": "ethereum", "amount": "1.5"}"#,
            422,
            "validation_failed",
            Some("amount"),
            "whole number",
        ),
        case(
            "amount fractional number",
            r#"{"chain": "ethereum", "amount": 1.5}"#,
            422,
            "validation_failed",
            Some("amount"),
            "decimal string",
        ),
        case(
            "amount above uint256",
            &format!(r#"{{"chain": "ethereum", "amount": "{above_max}"}}"#),
            422,
            "validation_failed",
            Some("amount"),
            "2^256-1",
        ),
        case(
            "amount not a number",
            r#"{"chain": "ethereum", "amount": "ten"}"#,
            422,
            "validation_failed",
            Some("amount"),
            "not a number",
        ),
        case(
            "amount boolean",
            r#"{"chain": "ethereum", "amount": true}"#,
            422,
            "validation_failed",
            Some("amount"),
            "boolean",
        ),
        case(
            "amount null",
            r#"{"chain": "ethereum", "amount": null}"#,
            422,
            "validation_failed",
            Some("amount"),
            "required",
        ),
        case(
            "unknown field",
            r#"{"chain": "ethereum", "amount": "1", "colour": "red"}"#,
            422,
            "validation_failed",
            Some("colour"),
            "unknown field",
        ),
        case(
            "expires_in too short",
            r#"{"chain": "ethereum", "amount": "1", "expires_in": 5}"#,
            422,
            "validation_failed",
            Some("expires_in"),
            "60 to 604800",
        ),
        case(
            "expires_in too long",
            r#"{"chain": "ethereum", "amount": "1", "expires_in": 999999}"#,
            422,
            "validation_failed",
            Some("expires_in"),
            "60 to 604800",
        ),
        case(
            "expires_in negative",
            r#"{"chain": "ethereum", "amount": "1", "expires_in": -1}"#,
            422,
            "validation_failed",
            Some("expires_in"),
            "-1 is negative: expected 60 to 604800",
        ),
        case(
            "expires_in zero",
            r#"{"chain": "ethereum", "amount": "1", "expires_in": 0}"#,
            422,
            "validation_failed",
            Some("expires_in"),
            "0 is out of range: expected 60 to 604800",
        ),
        case(
            "expires_in exponent",
            r#"{"chain": "ethereum", "amount": "1", "expires_in": 1e20}"#,
            422,
            "validation_failed",
            Some("expires_in"),
            "not a plain integer",
        ),
        case(
            "amount exponent",
            r#"{"chain": "ethereum", "amount": 1e3}"#,
            422,
            "validation_failed",
            Some("amount"),
            "not a plain JSON integer",
        ),
        case(
            "expires_in string",
            r#"{"chain": "ethereum", "amount": "1", "expires_in": "soon"}"#,
            422,
            "validation_failed",
            Some("expires_in"),
            "must be a whole number of seconds, not a string",
        ),
        case(
            "expires_in fraction",
            r#"{"chain": "ethereum", "amount": "1", "expires_in": 100.5}"#,
            422,
            "validation_failed",
            Some("expires_in"),
            "100.5 is not a whole number of seconds: expected 60 to 604800 seconds",
        ),
        case(
            "chain not a string",
            r#"{"chain": 1, "amount": "1"}"#,
            422,
            "validation_failed",
            Some("chain"),
            "chain",
        ),
        case(
            "reference too long",
            &format!(
                r#"{{"chain": "ethereum", "amount": "1", "reference": "{}"}}"#,
                "r".repeat(256)
            ),
            422,
            "validation_failed",
            Some("reference"),
            "reference is 256 characters long, more than the limit of 255",
        ),
        case(
            "reference far too long",
            &format!(
                r#"{{"chain": "ethereum", "amount": "1", "reference": "{}"}}"#,
                "r".repeat(400)
            ),
            422,
            "validation_failed",
            Some("reference"),
            "reference is 400 characters long, more than the limit of 255",
        ),
        case(
            "reference empty",
            r#"{"chain": "ethereum", "amount": "1", "reference": ""}"#,
            422,
            "validation_failed",
            Some("reference"),
            "reference",
        ),
        case(
            "reference with control character",
            r#"{"chain": "ethereum", "amount": "1", "reference": "a\u0007b"}"#,
            422,
            "validation_failed",
            Some("reference"),
            "control",
        ),
        case(
            "metadata not an object",
            r#"{"chain": "ethereum", "amount": "1", "metadata": [1]}"#,
            422,
            "validation_failed",
            Some("metadata"),
            "metadata",
        ),
        case(
            "metadata too large",
            &big_metadata,
            422,
            "validation_failed",
            Some("metadata"),
            "8192",
        ),
        case("metadata with NUL", r#"{"chain": "ethereum", "amount": "1", "metadata": {"a": "x\u0000y"}}"#, 422, "validation_failed", Some("metadata"), "NUL"),
        case("metadata key with NUL", r#"{"chain": "ethereum", "amount": "1", "metadata": {"\u0000": 1}}"#, 422, "validation_failed", Some("metadata"), "NUL"),
        case("duplicate amount key", r#"{"chain": "ethereum", "amount": "1", "amount": "2"}"#, 400, "malformed_json", None, "duplicate key \"amount\""),
        case("duplicate metadata key", r#"{"chain": "ethereum", "amount": "1", "metadata": {"n": 1, "n": 2}}"#, 400, "malformed_json", None, "duplicate key \"n\""),
        case("amount float with zero fraction", r#"{"chain": "ethereum", "amount": 1.0}"#, 422, "validation_failed", Some("amount"), "decimal string"),
        case("amount exponent", r#"{"chain": "ethereum", "amount": 1e3}"#, 422, "validation_failed", Some("amount"), "decimal string"),
        case("amount above u64 as number", r#"{"chain": "ethereum", "amount": 18446744073709551616}"#, 422, "validation_failed", Some("amount"), "decimal string"),
        case("expires_in float", r#"{"chain": "ethereum", "amount": "1", "expires_in": 100.0}"#, 422, "validation_failed", Some("expires_in"), "not a plain integer"),
        case("expires_in above u32", r#"{"chain": "ethereum", "amount": "1", "expires_in": 4294967296}"#, 422, "validation_failed", Some("expires_in"), "60 to 604800"),
        case("reference with bidi override", r#"{"chain": "ethereum", "amount": "1", "reference": "a\u202eb"}"#, 422, "validation_failed", Some("reference"), "invisible"),
        case("reference with zero-width space", r#"{"chain": "ethereum", "amount": "1", "reference": "a\u200bb"}"#, 422, "validation_failed", Some("reference"), "invisible"),
        case("huge unknown chain", &format!(r#"{{"chain": "{}", "amount": "1"}}"#, "c".repeat(5000)), 422, "validation_failed", Some("chain"), "chain is 5000 characters long, more than the limit of 32"),
    ]
}

#[test]
fn bad_bodies_rejected_with_field() {
    let app = TestApp::start();

    for case in cases() {
        let reply = app.post("/api/v1/payments", &case.body);

        assert!(
            reply.text.len() < 2000,
            "{}: the error echoes {} bytes",
            case.description,
            reply.text.len()
        );
        assert_eq!(
            reply.status, case.status,
            "{}: {}",
            case.description, reply.text
        );
        assert_eq!(
            reply.error().0,
            case.code,
            "{}: {}",
            case.description,
            reply.text
        );
        assert_eq!(
            reply.error().1,
            case.field,
            "{}: {}",
            case.description,
            reply.text
        );
        let message = reply.json["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(case.message_part),
            "{}: message {message:?} lacks {:?}",
            case.description,
            case.message_part
        );
    }

    assert_eq!(app.db.count("payments"), 0);
    assert_eq!(app.db.count("deposit_addresses"), 0);
}

#[test]
fn wrong_or_missing_content_type_is_415() {
    let app = TestApp::start();
    let auth = format!("Bearer {}", app.key);
    let cases: [(&[(&str, &str)], &str); 2] = [
        (
            &[("Authorization", &auth), ("Content-Type", "text/plain")],
            "content type \"text/plain\" is not supported",
        ),
        (
            &[("Authorization", &auth)],
            "the Content-Type header is missing",
        ),
    ];

    for (headers, expected) in cases {
        let reply = app.request(
            "POST",
            "/api/v1/payments",
            Some(r#"{"chain": "ethereum", "amount": "1"}"#),
            headers,
        );

        assert_eq!(reply.status, 415, "{}", reply.text);
        assert_eq!(reply.error().0, "unsupported_media_type");
        let message = reply.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{}", reply.text);
    }
    assert_eq!(app.db.count("payments"), 0);
}

#[test]
fn oversized_body_is_413() {
    let app = TestApp::start();
    let body = format!(
        r#"{{"chain": "ethereum", "amount": "1", "reference": "{}"}}"#,
        "x".repeat(70_000)
    );

    let reply = app.post("/api/v1/payments", &body);

    assert_eq!(reply.status, 413);
    assert_eq!(reply.error().0, "payload_too_large");
    assert!(reply.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("65536"));
    assert_eq!(app.db.count("payments"), 0);
}

#[test]
fn json_integer_amount_accepted() {
    let app = TestApp::start();

    let reply = app.post(
        "/api/v1/payments",
        r#"{"chain": "ethereum", "amount": 18446744073709551615}"#,
    );

    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.json["amount"], "18446744073709551615");
}

#[test]
fn zero_padded_amount_accepted() {
    let app = TestApp::start();
    let padded = format!("{}1", "0".repeat(78));

    let reply = app.post(
        "/api/v1/payments",
        &format!(r#"{{"chain": "ethereum", "amount": "{padded}"}}"#),
    );

    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.json["amount"], "1");
}
