//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`.
//!
//! Component schemas come from schemars, from the same Rust types that parse requests and
//! build responses, so the document cannot drift from what the server accepts.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};

use crate::payments::{CreatePaymentRequest, ErasedPayment, Payment, PaymentList};

/// The error body every non-2xx response carries.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, such as validation_failed or unauthorized.
    pub code: String,
    /// Description of the problem and its fix.
    pub message: String,
    /// The request field or query parameter at fault, when there is one.
    pub field: Option<String>,
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

/// Builds the whole document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.definitions_path = "/components/schemas".into();
            settings.meta_schema = None;
        })
        .into_generator();
    generator.subschema_for::<CreatePaymentRequest>();
    generator.subschema_for::<Payment>();
    generator.subschema_for::<PaymentList>();
    generator.subschema_for::<ErasedPayment>();
    generator.subschema_for::<ErrorBody>();
    let schemas = generator.take_definitions(true);

    let id_parameter = json!({
        "name": "id", "in": "path", "required": true,
        "schema": {"type": "string", "format": "uuid"}
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ctrip payments API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Create payment requests, each with its own deposit address, and read them back."
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/api/v1/payments": {
                "post": {
                    "summary": "Create a payment with a fresh deposit address",
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/CreatePaymentRequest"}}}},
                    "responses": {
                        "201": json_response("The payment; Location names its URL", "Payment"),
                        "400": error_response("The body is not valid JSON"),
                        "401": error_response("Missing, unknown or revoked API key"),
                        "413": error_response("The body is larger than the limit"),
                        "415": error_response("The body is not application/json"),
                        "422": error_response("The body breaks the schema or a rule; field names it"),
                        "503": error_response("The database is unavailable; see Retry-After")
                    }
                },
                "get": {
                    "summary": "List payments, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": crate::payments::STATUSES}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": crate::payments::MAX_PAGE_SIZE, "default": crate::payments::DEFAULT_PAGE_SIZE}},
                        {"name": "starting_after", "in": "query", "description": "Id of the last payment of the previous page", "schema": {"type": "string", "format": "uuid"}}
                    ],
                    "responses": {
                        "200": json_response("One page of payments", "PaymentList"),
                        "400": error_response("A query parameter is invalid; field names it"),
                        "401": error_response("Missing, unknown or revoked API key"),
                        "503": error_response("The database is unavailable; see Retry-After")
                    }
                }
            },
            "/api/v1/payments/{id}": {
                "get": {
                    "summary": "Read one payment",
                    "parameters": [id_parameter.clone()],
                    "responses": {
                        "200": json_response("The payment", "Payment"),
                        "401": error_response("Missing, unknown or revoked API key"),
                        "404": error_response("No payment with this id"),
                        "503": error_response("The database is unavailable; see Retry-After")
                    }
                }
            },
            "/api/v1/payments/{id}/erase": {
                "post": {
                    "summary": "Erase the payment's personal fields (reference, metadata); needs the scope payments:erase",
                    "parameters": [id_parameter],
                    "responses": {
                        "200": json_response("Erased now or before; amount, address, status and times remain", "ErasedPayment"),
                        "401": error_response("Missing, unknown or revoked API key"),
                        "403": error_response("The key lacks the scope payments:erase"),
                        "404": error_response("No payment with this id"),
                        "503": error_response("The database is unavailable; see Retry-After")
                    }
                }
            },
            "/api/v1/openapi.json": {
                "get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1 document"}}}
            },
            "/health": {
                "get": {"summary": "Liveness: the process serves HTTP", "security": [], "responses": {"200": {"description": "Alive"}}}
            },
            "/ready": {
                "get": {"summary": "Readiness: database reachable and migrations current", "security": [],
                        "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready; the body says why"}}}
            }
        }
    })
}
