//! Concurrent creates, in one process and across two processes, never share an index.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use crate::cli::ServerProcess;
use crate::harness::{create_api_key, send, TestApp, TestDb};

pub fn create_many(
    base: &str,
    key: &str,
    count: usize,
    barrier: Arc<Barrier>,
) -> Vec<std::thread::JoinHandle<u16>> {
    (0..count)
        .map(|i| {
            let (base, key, barrier) = (base.to_owned(), key.to_owned(), barrier.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {key}");
                let chain = if i % 4 == 0 { "solana" } else { "ethereum" };
                let body = format!(r#"{{"chain": "{chain}", "amount": "{}"}}"#, i + 1);
                barrier.wait();
                send(
                    &base,
                    "POST",
                    "/api/v1/payments",
                    Some(&body),
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                )
                .status
            })
        })
        .collect()
}

fn assert_all_distinct(db: &TestDb, expected: i64) {
    let mut owner = db.owner();
    let row = owner
        .query_one(
            "SELECT count(*), count(DISTINCT (a.family, a.derivation_index)), count(DISTINCT a.address)
             FROM ctrip.payments p JOIN ctrip.deposit_addresses a ON a.id = p.deposit_address_id",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), expected, "payments");
    assert_eq!(row.get::<_, i64>(1), expected, "distinct indexes");
    assert_eq!(row.get::<_, i64>(2), expected, "distinct addresses");
}

#[test]
fn parallel_creates_get_distinct_addresses() {
    let app = TestApp::start();
    let barrier = Arc::new(Barrier::new(64));

    let statuses: Vec<u16> = create_many(&app.base, &app.key, 64, barrier)
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();

    assert!(statuses.iter().all(|&s| s == 201), "{statuses:?}");
    assert_all_distinct(&app.db, 64);
    let max_evm: i32 = app
        .db
        .owner()
        .query_one(
            "SELECT max(derivation_index) FROM ctrip.deposit_addresses WHERE family = 'evm'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(max_evm, 47);
}

#[test]
fn two_processes_share_one_index_space() {
    let db = TestDb::create();
    let first = ServerProcess::start(&db);
    let second = ServerProcess::start(&db);
    let key = create_api_key(&db, "two-processes");
    let barrier = Arc::new(Barrier::new(64));

    let mut handles = create_many(&first.base, &key, 32, barrier.clone());
    handles.extend(create_many(&second.base, &key, 32, barrier));
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    assert!(statuses.iter().all(|&s| s == 201), "{statuses:?}");
    assert_all_distinct(&db, 64);
    let addresses: HashSet<String> = db
        .owner()
        .query("SELECT address FROM ctrip.deposit_addresses", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(addresses.contains("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"));
    assert_eq!(first.stop(), Some(0));
    assert_eq!(second.stop(), Some(0));
    // Both servers chained audit rows, and the log is still one chain, numbered without gaps.
    let report = ctrip::audit::verify::verify(&mut db.owner(), &[]).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.pending, 0);
    let (rows, last): (i64, i64) = {
        let row = db
            .owner()
            .query_one("SELECT count(*), max(id) FROM ctrip.audit_events", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(rows, last);
}
