//! Route handlers for `/api/v1/payments`.
//!
//! Every handler runs in one transaction: [`authorize`] checks the API key and its scope,
//! which also sets the merchant context that row-level security filters on, and the handler's
//! queries then see only that merchant's rows. A denied request commits only its audit row.

use postgres::Transaction;
use rouille::{Request, Response};
use serde_json::json;
use uuid::Uuid;

use super::error::ApiError;
use super::{body, App, RequestContext};
use crate::apikeys::{self, Also, AuthenticatedKey};
use crate::audit::{self, ActorType, Event, Outcome};
use crate::db::pool::StatementCache;
use crate::payments::store::{self, StoreError};
use crate::payments::{
    parse_expires_in, Amount, CreatePaymentRequest, ErasedPayment, FieldError, ListQuery,
    NewPayment,
};
use crate::retention;

const READ: &str = "payments:read";
const WRITE: &str = "payments:write";
const ERASE: &str = "payments:erase";

/// Authenticates the request and checks `scope`.
///
/// The outer error is a database failure. The inner one is a denial (401 or 403) whose audit
/// row is already inserted, so the caller commits the transaction before returning it.
fn authorize(
    app: &App,
    transaction: &mut Transaction<'_>,
    statements: &mut StatementCache,
    request: &Request,
    context: &RequestContext,
    scope: &'static str,
    also: Also,
) -> Result<Result<AuthenticatedKey, ApiError>, ApiError> {
    let header = request.header("Authorization");
    let key = match apikeys::authenticate(transaction, statements, header, also)? {
        Ok(key) => key,
        Err(failure) => {
            let client = request.remote_addr().ip();
            let reason = failure.message().split(':').next().unwrap_or_default();
            if app.auth_failures.admit(client, reason, failure.prefix()) {
                log::warn!(
                    "request_id={} authentication failed: key_prefix={} client={client} \
                     reason={} (further failures from this address this minute are counted \
                     in one summary row)",
                    context.request_id,
                    failure.prefix(),
                    failure.message()
                );
                let details = json!({"reason": reason});
                let event = Event::new(ActorType::ApiKey, "auth.failed", Outcome::Denied)
                    .actor(failure.prefix())
                    .source(context.client_ip.clone())
                    .request(context.request_id.clone())
                    .details(details);
                audit::record_cached(transaction, statements, &event)?;
            }
            return Ok(Err(ApiError::Unauthorized(failure)));
        }
    };
    if !key.has_scope(scope) {
        let event = context
            .event(&key, "auth.scope_denied", Outcome::Denied)
            .details(json!({"scope": scope, "path": context.path}));
        audit::record_cached(transaction, statements, &event)?;
        return Ok(Err(ApiError::Forbidden(scope)));
    }
    Ok(Ok(key))
}

/// Borrows a session, opens the request's transaction, authorizes it for `scope`, and runs
/// `handler` in it. A denial commits its audit row and returns the 401 or 403.
///
/// A session that the server ended while it sat in the pool fails at BEGIN, because the pool
/// skips its check for sessions returned moments ago. Nothing has run in it then, so the
/// request retries on another session, as long as the failed one is closed.
fn with_transaction<T>(
    app: &App,
    request: &Request,
    context: &RequestContext,
    scope: &'static str,
    also: Also,
    handler: impl FnOnce(Transaction<'_>, &mut StatementCache, AuthenticatedKey) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let proceed = |mut transaction: Transaction<'_>,
                   statements: &mut StatementCache|
     -> Result<T, ApiError> {
        match authorize(
            app,
            &mut transaction,
            statements,
            request,
            context,
            scope,
            also,
        )? {
            Ok(key) => handler(transaction, statements, key),
            Err(denied) => {
                transaction.commit()?;
                Err(denied)
            }
        }
    };

    // A database restart ends every pooled session at once, and each is found out only by
    // its BEGIN, so a request may go through every session in the pool before a new one.
    let mut retries_left = app.pool.max_size();
    loop {
        let mut conn = app.pool.get()?;
        let lost = match conn.transaction() {
            Ok((transaction, statements)) => return proceed(transaction, statements),
            Err(err) => err,
        };
        if !conn.is_closed() || retries_left == 0 {
            return Err(lost.into());
        }
        retries_left -= 1;
        log::warn!(
            "request_id={} a pooled session was closed by the server ({}), so the request \
             continues on another session",
            context.request_id,
            crate::db::error_chain(&lost)
        );
    }
}

/// Parses a payment id from the path; a malformed one is 404, like an unknown one.
fn payment_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found(id))
}

/// Checks a request for one payment: no query parameters, and an id in the path. Handlers
/// call it before taking a session and return its error only after authentication.
fn path_payment_id(request: &Request, id: &str) -> Result<Uuid, ApiError> {
    super::strict_query(request, &[])?;
    payment_id(id)
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no payment with id {}",
        crate::payments::excerpt(id)
    ))
}

/// `POST /api/v1/payments`: 201 with the payment and its Location.
pub fn create(
    app: &App,
    request: &Request,
    context: &RequestContext,
) -> Result<Response, ApiError> {
    let bytes = body::read_json_bytes(request, app.max_body_bytes)?;
    // Validated before a session is taken, so the session is held only for database work.
    // A validation error is still returned after authentication, as for the other routes.
    let parsed = parse_create(app, &bytes);
    // A valid body also takes its derivation index in the statement that checks the key.
    let also = match &parsed {
        Ok(new_payment) => Also::NextIndex {
            family: new_payment.chain.family,
            scope: WRITE,
        },
        Err(_) => Also::Nothing,
    };
    with_transaction(
        app,
        request,
        context,
        WRITE,
        also,
        |mut transaction, statements, key| {
            let new_payment = parsed?;
            let index = key.next_index.ok_or_else(|| {
                ApiError::Internal("the key check returned no derivation index".to_owned())
            })?;
            let audit = context.event(&key, "payment.created", Outcome::Success);
            let payment = store::create(
                &mut transaction,
                statements,
                &app.wallet,
                &new_payment,
                index,
                &audit,
            )
            .map_err(store_error)?;
            transaction.commit()?;

            let location = format!("/api/v1/payments/{}", payment.id);
            Ok(Response::json(&payment)
                .with_status_code(201)
                .with_additional_header("Location", location))
        },
    )
}

fn parse_create(app: &App, bytes: &[u8]) -> Result<NewPayment, ApiError> {
    let value = body::parse_json(bytes)?;
    let domain = |field: &str| match field {
        "amount" => value.get("amount").map(Amount::from_json)?.err(),
        "expires_in" => parse_expires_in(value.get("expires_in"), &app.payments).err(),
        _ => None,
    };
    app.create_payment_schema
        .validate(&value, domain)
        .map_err(ApiError::Validation)?;
    let parsed: CreatePaymentRequest = serde_json::from_value(value)
        .map_err(|err| ApiError::Validation(FieldError::new("", err.to_string())))?;
    NewPayment::parse(parsed, &app.chains, &app.payments).map_err(ApiError::Validation)
}

/// `GET /api/v1/payments/{id}`: 200, or 404 for an unknown, malformed or other merchant's id.
pub fn get(
    app: &App,
    request: &Request,
    context: &RequestContext,
    id: &str,
) -> Result<Response, ApiError> {
    let requested = path_payment_id(request, id);
    with_transaction(
        app,
        request,
        context,
        READ,
        Also::Nothing,
        |mut transaction, statements, key| {
            let path_id = id;
            let id = requested?;
            let payment = store::get(&mut transaction, statements, id).map_err(store_error)?;
            if payment.is_none() {
                audit_cross_merchant(&mut transaction, statements, context, &key, id)?;
            }
            transaction.commit()?;
            payment
                .map(|payment| Response::json(&payment))
                .ok_or_else(|| not_found(path_id))
        },
    )
}

/// Records a read of another merchant's payment id. The response stays 404, so ids of other
/// merchants cannot be distinguished from ids that do not exist.
fn audit_cross_merchant(
    transaction: &mut Transaction<'_>,
    statements: &mut StatementCache,
    context: &RequestContext,
    key: &AuthenticatedKey,
    id: Uuid,
) -> Result<(), ApiError> {
    let Some(owner) = store::owner_of(transaction, statements, id).map_err(store_error)? else {
        return Ok(());
    };
    if owner == key.merchant_id {
        return Ok(());
    }
    log::warn!(
        "request_id={} cross-merchant read denied: key_prefix={} payment_id={id}",
        context.request_id,
        key.prefix
    );
    let event = context
        .event(key, "payment.cross_merchant_attempt", Outcome::Denied)
        .object("payment", id.to_string());
    audit::record_cached(transaction, statements, &event)?;
    Ok(())
}

/// `GET /api/v1/payments?status=&limit=&starting_after=`: one page, newest first.
pub fn list(app: &App, request: &Request, context: &RequestContext) -> Result<Response, ApiError> {
    let query =
        super::strict_query(request, &["status", "limit", "starting_after"]).and_then(|params| {
            ListQuery::parse(
                params.get("status").map(String::as_str),
                params.get("limit").map(String::as_str),
                params.get("starting_after").map(String::as_str),
            )
            .map_err(ApiError::InvalidQuery)
        });
    with_transaction(
        app,
        request,
        context,
        READ,
        Also::Nothing,
        |mut transaction, statements, _| {
            let query = query?;
            let page = store::list(&mut transaction, statements, &query).map_err(store_error)?;
            transaction.commit()?;
            Ok(Response::json(&page))
        },
    )
}

/// `POST /api/v1/payments/{id}/erase`: erases the payment's personal fields (reference and
/// metadata) in place and returns 200, also when it was erased before. The audit row, in the
/// same transaction, records the erasure and never the erased values. 404 for an unknown,
/// malformed or other merchant's id.
pub fn erase(
    app: &App,
    request: &Request,
    context: &RequestContext,
    id: &str,
) -> Result<Response, ApiError> {
    let requested = path_payment_id(request, id);
    with_transaction(
        app,
        request,
        context,
        ERASE,
        Also::Nothing,
        |mut transaction, statements, key| {
            let path_id = id;
            let id = requested?;
            let Some(erased) = retention::erase_payment(&mut transaction, statements, id)? else {
                audit_cross_merchant(&mut transaction, statements, context, &key, id)?;
                transaction.commit()?;
                return Err(not_found(path_id));
            };
            let event = context
                .event(&key, "payment.erased", Outcome::Success)
                .object("payment", id.to_string())
                .details(retention::erase_details(&erased, "id"));
            audit::record_cached(&mut transaction, statements, &event)?;
            transaction.commit()?;
            Ok(Response::json(&ErasedPayment {
                id,
                erased_at: crate::payments::format_time(erased.erased_at),
                erased_fields: retention::PERSONAL_FIELDS
                    .iter()
                    .map(|f| (*f).to_owned())
                    .collect(),
                already_erased: erased.already_erased,
            }))
        },
    )
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
