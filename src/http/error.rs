//! The one error type at the HTTP edge and the JSON shape every error takes.
//!
//! Each variant maps to one status in [`ApiError::status`]. Client errors name the field or
//! value and the fix; server errors state only the kind of failure, and the cause goes
//! to the log with the request id.

use rouille::Response;
use serde_json::json;

use crate::apikeys::AuthFailure;
use crate::payments::FieldError;

#[derive(Debug)]
pub enum ApiError {
    /// A request the HTTP layer cannot trust, such as conflicting Content-Length headers.
    BadRequest(String),
    /// A request line longer than the server accepts.
    UriTooLong(usize),
    MalformedJson(String),
    InvalidQuery(FieldError),
    Unauthorized(AuthFailure),
    /// The key is valid but lacks this scope.
    Forbidden(&'static str),
    NotFound(String),
    MethodNotAllowed(&'static str),
    PayloadTooLarge(usize),
    UnsupportedMediaType(String),
    Validation(FieldError),
    /// The database is unreachable or overloaded; the text is for the log only.
    Unavailable(String),
    /// A bug or an unexpected database error; the text is for the log only.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) | ApiError::MalformedJson(_) | ApiError::InvalidQuery(_) => 400,
            ApiError::UriTooLong(_) => 414,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Validation(_) => 422,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Validation(_) => "validation_failed",
            ApiError::Internal(_) => "internal_error",
            ApiError::Unavailable(_) => "database_unavailable",
        }
    }

    fn message_and_field(&self) -> (String, Option<&str>) {
        match self {
            ApiError::BadRequest(detail) => (detail.clone(), None),
            ApiError::UriTooLong(limit) => (
                format!(
                    "the request target is longer than {limit} bytes: shorten the path and query"
                ),
                None,
            ),
            ApiError::MalformedJson(detail) => {
                (format!("request body is not valid JSON: {detail}"), None)
            }
            ApiError::InvalidQuery(err) | ApiError::Validation(err) => {
                let field = (!err.field.is_empty()).then_some(err.field.as_str());
                (err.message.clone(), field)
            }
            ApiError::Unauthorized(failure) => (failure.message().to_owned(), None),
            ApiError::Forbidden(scope) => (
                format!(
                    "this API key lacks the scope {scope}: create a key with --scopes {scope} \
                     (ctrip api-key create)"
                ),
                None,
            ),
            ApiError::NotFound(what) => (what.clone(), None),
            ApiError::MethodNotAllowed(allowed) => {
                (format!("method not allowed here: use {allowed}"), None)
            }
            ApiError::PayloadTooLarge(limit) => (
                format!("request body is larger than the limit of {limit} bytes"),
                None,
            ),
            ApiError::UnsupportedMediaType(got) if got.is_empty() => (
                "the Content-Type header is missing: send Content-Type: application/json"
                    .to_owned(),
                None,
            ),
            ApiError::UnsupportedMediaType(got) => (
                format!(
                    "content type {got:?} is not supported: send Content-Type: application/json"
                ),
                None,
            ),
            ApiError::Internal(_) => (
                "internal error: the server logged the cause with this request's id".to_owned(),
                None,
            ),
            ApiError::Unavailable(_) => (
                "the database is unavailable or busy: retry after the number of seconds in \
                 Retry-After"
                    .to_owned(),
                None,
            ),
        }
    }

    /// Returns the text for the log: the client message, or the hidden cause of a 5xx.
    pub fn log_detail(&self) -> String {
        match self {
            ApiError::Internal(cause) | ApiError::Unavailable(cause) => cause.clone(),
            _ => self.message_and_field().0,
        }
    }

    /// Builds the response: `{"error": {"code", "message", "field"}}` with the headers the
    /// status calls for.
    pub fn response(&self) -> Response {
        let (message, field) = self.message_and_field();
        let body = json!({"error": {"code": self.code(), "message": message, "field": field}});
        let mut response = Response::json(&body).with_status_code(self.status());
        match self {
            ApiError::Unauthorized(AuthFailure::Missing) => {
                // RFC 6750: no error code when the request carried no token at all.
                response =
                    response.with_additional_header("WWW-Authenticate", "Bearer realm=\"ctrip\"");
            }
            ApiError::Unauthorized(_) => {
                response = response.with_additional_header(
                    "WWW-Authenticate",
                    "Bearer realm=\"ctrip\", error=\"invalid_token\"",
                );
            }
            ApiError::MethodNotAllowed(allowed) => {
                response = response.with_additional_header("Allow", *allowed);
            }
            ApiError::Unavailable(_) => {
                response = response.with_additional_header("Retry-After", "1");
            }
            _ => {}
        }
        response
    }
}

impl From<r2d2::Error> for ApiError {
    fn from(err: r2d2::Error) -> Self {
        ApiError::Unavailable(format!(
            "no database connection within the pool timeout: {err}"
        ))
    }
}

impl From<postgres::Error> for ApiError {
    fn from(err: postgres::Error) -> Self {
        let detail = crate::db::error_chain(&err);
        if crate::db::is_unavailable(&err) {
            ApiError::Unavailable(detail)
        } else {
            ApiError::Internal(detail)
        }
    }
}
