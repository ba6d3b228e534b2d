//! Payments: the request and response types, their parsing into domain values, and storage.
//!
//! A create request becomes a [`NewPayment`] only after the JSON Schema check (done at the
//! HTTP edge with the schema generated from [`CreatePaymentRequest`]) and the rules here:
//! a known chain and token, an amount inside the uint256 range, an expiry inside the
//! configured bounds and small metadata. Nothing touches the database before that.

pub mod store;

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chains::{Chain, ChainRegistry};
use crate::config::PaymentsConfig;

/// 2^256 - 1, the largest amount a uint256 token balance can hold.
pub const MAX_AMOUNT: &str =
    "115792089237316195423570985008687907853269984665640564039457584007913129639935";

/// Serialized size limit of `metadata`, in bytes.
pub const MAX_METADATA_BYTES: usize = 8192;

/// A rule broken by a request, with the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Body of `POST /api/v1/payments`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentRequest {
    /// Chain name from the server's configuration, such as "ethereum" or "solana".
    #[schemars(length(min = 1, max = 32))]
    pub chain: String,
    /// Token symbol on that chain, such as "USDC"; omit it or send null for the native coin.
    #[schemars(length(min = 1, max = 16))]
    pub token: Option<String>,
    /// Amount in base units (wei, lamports, token units) as a decimal string, or as a JSON
    /// integer when it fits in 64 bits. Must be 1 to 2^256-1.
    #[schemars(schema_with = "amount_schema")]
    pub amount: serde_json::Value,
    /// Seconds until the payment expires; the server's default applies when omitted.
    #[serde(default)]
    #[schemars(schema_with = "expires_in_schema")]
    pub expires_in: Option<serde_json::Value>,
    /// The merchant's own identifier for this payment, such as an order number.
    #[schemars(length(min = 1, max = 255))]
    pub reference: Option<String>,
    /// Small JSON object stored with the payment and returned as given (at most 8 KiB).
    #[schemars(extend("maxProperties" = 50))]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

fn amount_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Base units as a decimal string of 1 to 78 digits, or a JSON integer",
        "anyOf": [
            {"type": "string", "pattern": "^[0-9]+$"},
            {"type": "integer", "minimum": 1}
        ]
    })
}

fn expires_in_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Seconds until the payment expires; the server's default applies when omitted",
        "type": ["integer", "null"]
    })
}

/// Shortens `text` to at most 60 characters for an error message, so a huge bad value is not
/// echoed back whole.
pub fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    if text.chars().count() <= MAX_CHARS {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(MAX_CHARS).collect();
    format!("{head:?}... ({} characters)", text.chars().count())
}

/// An amount in base units, between 1 and 2^256-1, stored without leading zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount(String);

impl Amount {
    /// Parses a decimal string of base units.
    pub fn parse(text: &str) -> Result<Amount, FieldError> {
        let invalid = |why: &str| FieldError::new("amount", format!("{} {why}", excerpt(text)));
        if text.is_empty() {
            return Err(invalid(
                "is empty: send the amount in base units, such as \"1500000\"",
            ));
        }
        if text.starts_with('-') {
            return Err(invalid("is negative: amounts are 1 or more base units"));
        }
        if text.contains(['.', 'e', 'E'])
            && text
                .chars()
                .all(|c| c.is_ascii_digit() || ".eE+".contains(c))
        {
            return Err(invalid(
                "is not a whole number: send base units (wei, lamports, token units) without a \
                 decimal point",
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "is not a number: send base units as decimal digits",
            ));
        }
        let digits = text.trim_start_matches('0');
        if digits.is_empty() {
            return Err(invalid("is zero: amounts are 1 or more base units"));
        }
        if digits.len() > MAX_AMOUNT.len()
            || (digits.len() == MAX_AMOUNT.len() && digits > MAX_AMOUNT)
        {
            return Err(invalid(
                "is above 2^256-1, the largest amount a token can hold",
            ));
        }
        Ok(Amount(digits.to_owned()))
    }

    /// Parses the `amount` field as JSON: a string, or a whole number up to 2^64-1.
    pub fn from_json(value: &serde_json::Value) -> Result<Amount, FieldError> {
        match value {
            serde_json::Value::String(text) => Amount::parse(text),
            serde_json::Value::Number(number) => {
                if number.as_u64() == Some(0) {
                    return Err(FieldError::new(
                        "amount",
                        "0 is zero: amounts are 1 or more base units",
                    ));
                }
                if let Some(unsigned) = number.as_u64() {
                    return Amount::parse(&unsigned.to_string());
                }
                if number.as_i64().is_some_and(|signed| signed < 0) {
                    return Err(FieldError::new(
                        "amount",
                        format!("{number} is negative: amounts are 1 or more base units"),
                    ));
                }
                let problem = if number.as_f64().is_some_and(|value| value.fract() != 0.0) {
                    "is not a whole number"
                } else {
                    "is not a plain JSON integer up to 2^64-1"
                };
                Err(FieldError::new(
                    "amount",
                    format!(
                        "{number} {problem}: send base units as a decimal string, such as \
                         \"1500000\""
                    ),
                ))
            }
            serde_json::Value::Null => Err(FieldError::new(
                "amount",
                "amount is required: send base units as a decimal string, such as \"1500000\"",
            )),
            other => Err(FieldError::new(
                "amount",
                format!(
                    "must be a decimal string or an integer, not {}",
                    json_type(other)
                ),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Names the JSON type of `value` as JSON Schema does.
pub fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A validated request to create a payment.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub chain: Chain,
    /// Token symbol and its decimals; `None` for the native coin.
    pub token: Option<(String, u8)>,
    pub amount: Amount,
    pub expires_in_s: u32,
    pub reference: Option<String>,
    pub metadata: serde_json::Value,
}

impl NewPayment {
    /// Applies the domain rules to a schema-valid request.
    pub fn parse(
        request: CreatePaymentRequest,
        chains: &ChainRegistry,
        limits: &PaymentsConfig,
    ) -> Result<NewPayment, FieldError> {
        let chain = chains.get(&request.chain).ok_or_else(|| {
            FieldError::new(
                "chain",
                format!(
                    "unknown chain {}: expected one of {}",
                    excerpt(&request.chain),
                    chains.names().join(", ")
                ),
            )
        })?;
        let token = match &request.token {
            None => None,
            Some(symbol) => {
                let token = chain.token(symbol).ok_or_else(|| {
                    FieldError::new(
                        "token",
                        format!(
                            "unknown token {} on chain {}: expected one of {}, or omit \
                             token for the native {}",
                            excerpt(symbol),
                            chain.name,
                            chain.token_symbols().join(", "),
                            chain.symbol
                        ),
                    )
                })?;
                Some((token.symbol.clone(), token.decimals))
            }
        };
        let amount = Amount::from_json(&request.amount)?;
        let expires_in_s = parse_expires_in(request.expires_in.as_ref(), limits)?;
        let reference = request.reference.map(parse_reference).transpose()?;
        let metadata = parse_metadata(request.metadata)?;
        Ok(NewPayment {
            chain: chain.clone(),
            token,
            amount,
            expires_in_s,
            reference,
            metadata,
        })
    }

    /// Returns the decimals of the asset paid in: the token's, or the native coin's.
    pub fn decimals(&self) -> u8 {
        self.token
            .as_ref()
            .map_or(self.chain.decimals, |(_, decimals)| *decimals)
    }
}

/// Parses `expires_in`: whole seconds within the configured range, or the default when absent.
pub fn parse_expires_in(
    value: Option<&serde_json::Value>,
    limits: &PaymentsConfig,
) -> Result<u32, FieldError> {
    let range = format!(
        "{} to {} seconds",
        limits.min_expires_in_s, limits.max_expires_in_s
    );
    let seconds = match value {
        None | Some(serde_json::Value::Null) => u64::from(limits.default_expires_in_s),
        Some(serde_json::Value::Number(number)) => match number.as_u64() {
            Some(seconds) => seconds,
            None => {
                let message = if number.as_i64().is_some() {
                    format!("{number} is negative: expected {range}")
                } else if number.as_f64().is_some_and(|value| value.fract() != 0.0) {
                    format!("{number} is not a whole number of seconds: expected {range}")
                } else {
                    format!(
                        "{number} is not a plain integer: expected {range}, written without a \
                         decimal point or exponent"
                    )
                };
                return Err(FieldError::new("expires_in", message));
            }
        },
        Some(other) => {
            return Err(FieldError::new(
                "expires_in",
                format!(
                    "must be a whole number of seconds, not {}",
                    json_type(other)
                ),
            ))
        }
    };
    let seconds = u32::try_from(seconds).unwrap_or(u32::MAX);
    if seconds < limits.min_expires_in_s || seconds > limits.max_expires_in_s {
        return Err(FieldError::new(
            "expires_in",
            format!(
                "{seconds} is out of range: expected {} to {} seconds",
                limits.min_expires_in_s, limits.max_expires_in_s
            ),
        ));
    }
    Ok(seconds)
}

/// True for characters that change how text displays without being visible: bidirectional
/// overrides and isolates, zero-width characters and the byte order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn parse_reference(reference: String) -> Result<String, FieldError> {
    if reference.chars().any(char::is_control) {
        return Err(FieldError::new(
            "reference",
            "contains control characters: use printable text",
        ));
    }
    if reference.chars().any(is_invisible_format) {
        return Err(FieldError::new(
            "reference",
            "contains invisible formatting characters (such as bidirectional overrides or \
             zero-width spaces): use plain printable text",
        ));
    }
    if reference.trim().is_empty() {
        return Err(FieldError::new(
            "reference",
            "is blank: omit it or send a non-empty identifier",
        ));
    }
    Ok(reference)
}

fn parse_metadata(
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<serde_json::Value, FieldError> {
    let value = serde_json::Value::Object(metadata.unwrap_or_default());
    if contains_nul(&value) {
        return Err(FieldError::new(
            "metadata",
            "contains the NUL character (\\u0000), which PostgreSQL cannot store: remove it",
        ));
    }
    let size = value.to_string().len();
    if size > MAX_METADATA_BYTES {
        return Err(FieldError::new(
            "metadata",
            format!("is {size} bytes as JSON, above the limit of {MAX_METADATA_BYTES}: keep only small identifiers here"),
        ));
    }
    Ok(value)
}

/// True when any key or string value in `value` contains U+0000.
fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || contains_nul(item)),
        _ => false,
    }
}

/// Lifecycle state of a payment.
pub const STATUSES: &[&str] = &[
    "pending",
    "detected",
    "confirmed",
    "paid",
    "expired",
    "failed",
    "settled",
];

/// A payment as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Payment {
    pub id: Uuid,
    pub chain: String,
    /// Token symbol, or null for the chain's native coin.
    pub token: Option<String>,
    /// Decimals of the asset, to turn base units into a display amount.
    pub decimals: u8,
    /// Deposit address for this payment alone.
    pub address: String,
    /// BIP32 / SLIP-0010 path the address was derived at.
    pub derivation_path: String,
    /// Amount in base units, as a decimal string.
    pub amount: String,
    /// pending, detected, confirmed, paid, expired, failed or settled. A pending payment past
    /// expires_at reads as expired.
    pub status: String,
    pub confirmations: i32,
    /// RFC 3339 time with offset.
    pub expires_at: String,
    /// RFC 3339 time with offset.
    pub created_at: String,
    pub reference: Option<String>,
    pub metadata: serde_json::Value,
}

/// One page of `GET /api/v1/payments`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PaymentList {
    pub data: Vec<Payment>,
    /// True when more payments follow; pass the last id as starting_after to get them.
    pub has_more: bool,
}

/// Response of `POST /api/v1/payments/{id}/erase`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErasedPayment {
    pub id: Uuid,
    /// When the personal fields were first erased.
    pub erased_at: String,
    /// The fields that are now empty: reference (null) and metadata ({}).
    pub erased_fields: Vec<String>,
    /// True when the payment had been erased before this request, which then changed nothing.
    pub already_erased: bool,
}

/// Formats a timestamp as RFC 3339 with an explicit offset and milliseconds.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// Validated query of `GET /api/v1/payments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<String>,
    pub limit: i64,
    pub starting_after: Option<Uuid>,
}

pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

impl ListQuery {
    /// Parses the query parameters; each bad value names its parameter.
    pub fn parse(
        status: Option<&str>,
        limit: Option<&str>,
        starting_after: Option<&str>,
    ) -> Result<ListQuery, FieldError> {
        let status = match status.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) if STATUSES.contains(&s) => Some(s.to_owned()),
            Some(s) => {
                return Err(FieldError::new(
                    "status",
                    format!(
                        "unknown status {s:?}: expected one of {}",
                        STATUSES.join(", ")
                    ),
                ))
            }
        };
        let limit = match limit.filter(|s| !s.is_empty()) {
            None => DEFAULT_PAGE_SIZE,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
                _ => {
                    return Err(FieldError::new(
                        "limit",
                        format!(
                        "{text:?} is invalid: expected a whole number from 1 to {MAX_PAGE_SIZE}"
                    ),
                    ))
                }
            },
        };
        let starting_after = match starting_after.filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => Some(Uuid::parse_str(text).map_err(|_| {
                FieldError::new(
                    "starting_after",
                    format!("{text:?} is not a payment id: pass the id of the last payment of the previous page"),
                )
            })?),
        };
        Ok(ListQuery {
            status,
            limit,
            starting_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_accepts_uint256_range() {
        assert_eq!(Amount::parse("1").unwrap().as_str(), "1");
        assert_eq!(Amount::parse("000120").unwrap().as_str(), "120");
        assert_eq!(Amount::parse(MAX_AMOUNT).unwrap().as_str(), MAX_AMOUNT);
    }

    #[test]
    fn amount_rejects_out_of_range_and_garbage() {
        let above =
            "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        let cases = [
            ("0", "is zero"),
            ("000", "is zero"),
            ("-5", "is negative"),
            ("1.5", "not a whole number"),
            ("1e18", "not a whole number"),
            ("12abc", "not a number"),
            ("", "is empty"),
            (above, "above 2^256-1"),
            (
                "1000000000000000000000000000000000000000000000000000000000000000000000000000000",
                "above 2^256-1",
            ),
        ];
        for (input, expected) in cases {
            let err = Amount::parse(input).unwrap_err();
            assert_eq!(err.field, "amount", "input {input:?}");
            assert!(
                err.message.contains(expected),
                "input {input:?}: message {:?}",
                err.message
            );
        }
    }

    #[test]
    fn amount_from_json_numbers() {
        assert_eq!(
            Amount::from_json(&serde_json::json!(1500000))
                .unwrap()
                .as_str(),
            "1500000"
        );
        assert!(Amount::from_json(&serde_json::json!(-1))
            .unwrap_err()
            .message
            .contains("negative"));
        assert!(Amount::from_json(&serde_json::json!(1.5))
            .unwrap_err()
            .message
            .contains("decimal string"));
        assert!(Amount::from_json(&serde_json::json!(true))
            .unwrap_err()
            .message
            .contains("a boolean"));
    }

    #[test]
    fn list_query_rejects_bad_values() {
        assert_eq!(
            ListQuery::parse(Some("done"), None, None)
                .unwrap_err()
                .field,
            "status"
        );
        assert_eq!(
            ListQuery::parse(None, Some("0"), None).unwrap_err().field,
            "limit"
        );
        assert_eq!(
            ListQuery::parse(None, Some("101"), None).unwrap_err().field,
            "limit"
        );
        assert_eq!(
            ListQuery::parse(None, None, Some("x")).unwrap_err().field,
            "starting_after"
        );
        assert_eq!(
            ListQuery::parse(None, None, None).unwrap().limit,
            DEFAULT_PAGE_SIZE
        );
    }
}
