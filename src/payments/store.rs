//! SQL for payments. Every statement binds its parameters and is prepared once per session.
//!
//! A create is one transaction: the statement that checks the API key also takes the next
//! index of the family's sequence (`apikeys::Also`), the address is derived in memory, and
//! one statement inserts the address, the payment and the audit row. The sequence, not
//! process memory, hands out indexes, so concurrent requests and several processes never
//! share one.

use postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{format_time, ListQuery, NewPayment, Payment, PaymentList};
use postgres::Transaction;

use crate::audit::Event;
use crate::db::pool::StatementCache;
use crate::wallet::{DeriveError, Wallet};

/// A failure to store or read a payment.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] postgres::Error),
    #[error("cannot derive a deposit address: {0}")]
    Derive(#[from] DeriveError),
    #[error("no payment with id {0}")]
    CursorNotFound(Uuid),
}

/// Inserts the address, the payment and its audit row in one statement, one round trip. The
/// audit row goes in pending, and the server's chainer chains it after the commit.
const INSERT_PAYMENT: &str = "
    WITH address AS (
        INSERT INTO ctrip.deposit_addresses
            (merchant_id, family, derivation_index, derivation_path, address)
        VALUES ($12, $1, $2, $3, $4)
        RETURNING id
    ), payment AS (
        INSERT INTO ctrip.payments
            (id, merchant_id, chain, token, deposit_address_id, amount, expires_at, reference,
             metadata)
        SELECT $5, $12, $6, $7, address.id, $8::text::numeric,
               now() + make_interval(secs => $9), $10, $11
        FROM address
        RETURNING id, created_at, expires_at
    ), event AS (
        INSERT INTO ctrip.audit_events
            (actor_type, actor_id, merchant_id, action, object_type, object_id, outcome,
             source_address, request_id, details)
        SELECT 'api_key', $13, $12, 'payment.created', 'payment', payment.id::text, 'success',
               $14, $15,
               jsonb_build_object('chain', $6::text, 'token', $7::text, 'amount', $8::text,
                                  'address', $4::text)
        FROM payment
    )
    SELECT created_at, expires_at FROM payment";

/// The SELECT list and joins of a payment as the API shows it; a pending payment past its
/// expiry reads as expired. A macro, because `concat!` only takes literals.
macro_rules! select_payment {
    () => {
        "SELECT p.id, p.chain, p.token, COALESCE(t.decimals, c.decimals), a.address,
                a.derivation_path, p.amount::text,
                CASE WHEN p.status = 'pending' AND p.expires_at <= now() THEN 'expired'
                     ELSE p.status END,
                p.confirmations, p.expires_at, p.created_at, p.reference, p.metadata
         FROM ctrip.payments p
         JOIN ctrip.deposit_addresses a ON a.id = p.deposit_address_id
         JOIN ctrip.chains c ON c.name = p.chain
         LEFT JOIN ctrip.tokens t ON t.chain = p.chain AND t.symbol = p.token"
    };
}

const GET_PAYMENT: &str = concat!(select_payment!(), " WHERE p.id = $1");

const LIST_PAYMENTS: &str = concat!(
    select_payment!(),
    " WHERE ($1::text IS NULL
            OR (CASE WHEN p.status = 'pending' AND p.expires_at <= now() THEN 'expired'
                     ELSE p.status END) = $1)
       AND ($2::timestamptz IS NULL OR (p.created_at, p.id) < ($2, $3))
     ORDER BY p.created_at DESC, p.id DESC
     LIMIT $4"
);

const CURSOR_POSITION: &str = "SELECT created_at FROM ctrip.payments WHERE id = $1";

const PAYMENT_MERCHANT: &str = "SELECT ctrip.payment_merchant($1)";

/// Creates the payment, its deposit address at derivation `index` and its audit row in
/// `transaction`, which must carry the merchant context of `audit` (see
/// `apikeys::authenticate`). `index` must be newly taken from the family's sequence.
pub fn create(
    transaction: &mut Transaction<'_>,
    statements: &mut StatementCache,
    wallet: &Wallet,
    new: &NewPayment,
    index: i32,
    audit: &Event,
) -> Result<Payment, StoreError> {
    let id = Uuid::now_v7();
    let family = new.chain.family;

    let derived = wallet.derive(family, index as u32)?;

    let insert = statements.get(transaction, INSERT_PAYMENT)?;
    let token = new.token.as_ref().map(|(symbol, _)| symbol.as_str());
    let row = transaction.query_one(
        &insert,
        &[
            &family.as_str(),
            &index,
            &derived.path,
            &derived.address,
            &id,
            &new.chain.name,
            &token,
            &new.amount.as_str(),
            &f64::from(new.expires_in_s),
            &new.reference,
            &new.metadata,
            &audit.merchant_id,
            &audit.actor_id,
            &audit.source_address,
            &audit.request_id,
        ],
    )?;

    Ok(Payment {
        id,
        chain: new.chain.name.clone(),
        token: token.map(str::to_owned),
        decimals: new.decimals(),
        address: derived.address,
        derivation_path: derived.path,
        amount: new.amount.as_str().to_owned(),
        status: "pending".to_owned(),
        confirmations: 0,
        created_at: format_time(row.get(0)),
        expires_at: format_time(row.get(1)),
        reference: new.reference.clone(),
        metadata: new.metadata.clone(),
    })
}

/// Returns the payment with `id` if the current merchant may see it.
pub fn get<C: GenericClient>(
    client: &mut C,
    statements: &mut StatementCache,
    id: Uuid,
) -> Result<Option<Payment>, StoreError> {
    let statement = statements.get(client, GET_PAYMENT)?;
    let row = client.query_opt(&statement, &[&id])?;
    Ok(row.as_ref().map(payment_from_row))
}

/// Returns the merchant owning payment `id`, whatever the current merchant is.
pub fn owner_of<C: GenericClient>(
    client: &mut C,
    statements: &mut StatementCache,
    id: Uuid,
) -> Result<Option<Uuid>, StoreError> {
    let statement = statements.get(client, PAYMENT_MERCHANT)?;
    Ok(client.query_one(&statement, &[&id])?.get(0))
}

/// Returns one page of the current merchant's payments, newest first.
pub fn list<C: GenericClient>(
    client: &mut C,
    statements: &mut StatementCache,
    query: &ListQuery,
) -> Result<PaymentList, StoreError> {
    let cursor: Option<chrono::DateTime<chrono::Utc>> = match query.starting_after {
        None => None,
        Some(id) => {
            let statement = statements.get(client, CURSOR_POSITION)?;
            let row = client.query_opt(&statement, &[&id])?;
            Some(row.ok_or(StoreError::CursorNotFound(id))?.get(0))
        }
    };
    let statement = statements.get(client, LIST_PAYMENTS)?;
    let rows = client.query(
        &statement,
        &[
            &query.status,
            &cursor,
            &query.starting_after,
            &(query.limit + 1),
        ],
    )?;
    let has_more = rows.len() as i64 > query.limit;
    let data = rows
        .iter()
        .take(query.limit as usize)
        .map(payment_from_row)
        .collect();
    Ok(PaymentList { data, has_more })
}

fn payment_from_row(row: &Row) -> Payment {
    let decimals: i16 = row.get(3);
    Payment {
        id: row.get(0),
        chain: row.get(1),
        token: row.get(2),
        decimals: decimals as u8,
        address: row.get(4),
        derivation_path: row.get(5),
        amount: row.get(6),
        status: row.get(7),
        confirmations: row.get(8),
        expires_at: format_time(row.get(9)),
        created_at: format_time(row.get(10)),
        reference: row.get(11),
        metadata: row.get(12),
    }
}

/// Counts payments; used by tests and the CLI.
pub fn count(client: &mut impl GenericClient) -> Result<i64, postgres::Error> {
    Ok(client
        .query_one("SELECT count(*) FROM ctrip.payments", &[])?
        .get(0))
}
