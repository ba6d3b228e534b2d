//! Route handlers for `/api/v1/payments`.

use rouille::{Request, Response};
use uuid::Uuid;

use super::body;
use super::error::ApiError;
use super::App;
use crate::apikeys::{self, AuthenticatedKey};
use crate::db::pool::PgConn;
use crate::payments::store::{self, StoreError};
use crate::payments::{CreatePaymentRequest, FieldError, ListQuery, NewPayment};

/// Checks the request's API key on `conn`.
fn authenticate(conn: &mut PgConn, request: &Request) -> Result<AuthenticatedKey, ApiError> {
    let (client, statements) = conn.parts();
    apikeys::authenticate(client, statements, request.header("Authorization"))?
        .map_err(ApiError::Unauthorized)
}

/// `POST /api/v1/payments`: 201 with the payment and its Location.
pub fn create(app: &App, request: &Request) -> Result<Response, ApiError> {
    let bytes = body::read_json_bytes(request, app.max_body_bytes)?;
    let mut conn = app.pool.get()?;
    authenticate(&mut conn, request)?;

    let new_payment = parse_create(app, &bytes)?;
    let payment = store::create(&mut conn, &app.wallet, &new_payment).map_err(store_error)?;

    let location = format!("/api/v1/payments/{}", payment.id);
    Ok(Response::json(&payment)
        .with_status_code(201)
        .with_additional_header("Location", location))
}

fn parse_create(app: &App, bytes: &[u8]) -> Result<NewPayment, ApiError> {
    let value = body::parse_json(bytes)?;
    app.create_payment_schema
        .validate(&value)
        .map_err(ApiError::Validation)?;
    let amount_json = value.get("amount").cloned().unwrap_or_default();
    let parsed: CreatePaymentRequest = serde_json::from_value(value)
        .map_err(|err| ApiError::Validation(FieldError::new("", err.to_string())))?;
    NewPayment::parse(parsed, &amount_json, &app.chains, &app.payments)
        .map_err(ApiError::Validation)
}

/// `GET /api/v1/payments/{id}`: 200, or 404 for an unknown or malformed id.
pub fn get(app: &App, request: &Request, id: &str) -> Result<Response, ApiError> {
    let mut conn = app.pool.get()?;
    authenticate(&mut conn, request)?;

    let not_found = || ApiError::NotFound(format!("no payment with id {id:?}"));
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    match store::get(&mut conn, id).map_err(store_error)? {
        Some(payment) => Ok(Response::json(&payment)),
        None => Err(not_found()),
    }
}

/// `GET /api/v1/payments?status=&limit=&starting_after=`: one page, newest first.
pub fn list(app: &App, request: &Request) -> Result<Response, ApiError> {
    let mut conn = app.pool.get()?;
    authenticate(&mut conn, request)?;

    let query = ListQuery::parse(
        request.get_param("status").as_deref(),
        request.get_param("limit").as_deref(),
        request.get_param("starting_after").as_deref(),
    )
    .map_err(ApiError::InvalidQuery)?;
    let page = store::list(&mut conn, &query).map_err(store_error)?;
    Ok(Response::json(&page))
}

fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::Database(err) => err.into(),
        StoreError::CursorNotFound(id) => ApiError::InvalidQuery(FieldError::new(
            "starting_after",
            format!("no payment with id {id}: pass the id of a payment from the previous page"),
        )),
        StoreError::Derive(err) => ApiError::Internal(err.to_string()),
    }
}
