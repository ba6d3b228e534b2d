//! Certificate rotation while serving: good sets swap in with no failed request, bad sets are
//! rejected with the current set kept, and each outcome is logged and audited.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use openssl::x509::{X509NameBuilder, X509};

use crate::harness::{cluster, send, set, TestApp};

const DAY: i64 = 86_400;

fn now() -> i64 {
    ctrip::db::rotation::unix_now()
}

fn read_ca(name: &str) -> (X509, PKey<Private>) {
    let certs = &cluster().certs;
    let cert = X509::from_pem(&fs::read(certs.join(format!("{name}.crt"))).unwrap()).unwrap();
    let key =
        PKey::private_key_from_pem(&fs::read(certs.join(format!("{name}.key"))).unwrap()).unwrap();
    (cert, key)
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// Issues a client certificate for `key`, signed by the CA `ca` ("ca" or "other-ca").
fn issue(ca: &str, key: &PKey<Private>, serial: u32, not_before: i64, not_after: i64) -> String {
    let (ca_cert, ca_key) = read_ca(ca);
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "ctrip").unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder
        .set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(ca_cert.subject_name()).unwrap();
    builder.set_pubkey(key).unwrap();
    builder
        .set_not_before(&Asn1Time::from_unix(not_before).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::from_unix(not_after).unwrap())
        .unwrap();
    builder
        .append_extension(BasicConstraints::new().build().unwrap())
        .unwrap();
    builder
        .append_extension(KeyUsage::new().digital_signature().build().unwrap())
        .unwrap();
    builder
        .append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
        .unwrap();
    builder.sign(&ca_key, MessageDigest::sha256()).unwrap();
    String::from_utf8(builder.build().to_pem().unwrap()).unwrap()
}

fn key_pem(key: &PKey<Private>) -> String {
    String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap()
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// A per-test certificate directory, `live` a symlink to the version in use.
struct Certs {
    root: PathBuf,
}

impl Certs {
    fn new() -> Certs {
        let root = cluster()
            .dir
            .join("files")
            .join(format!("certs-{}", uuid::Uuid::new_v4().simple()));
        let v1 = root.join("v1");
        fs::create_dir_all(&v1).unwrap();
        fs::copy(cluster().cert("ca.crt"), v1.join("ca.crt")).unwrap();
        fs::copy(cluster().cert("client.crt"), v1.join("client.crt")).unwrap();
        write_private(
            &v1.join("client.key"),
            &fs::read_to_string(cluster().cert("client.key")).unwrap(),
        );
        std::os::unix::fs::symlink("v1", root.join("live")).unwrap();
        Certs { root }
    }

    fn live(&self, name: &str) -> PathBuf {
        self.root.join("live").join(name)
    }
}

fn start_app(certs: &Certs) -> TestApp {
    TestApp::start_with(|config| {
        set(
            config,
            "database",
            "sslrootcert",
            certs.live("ca.crt").display().to_string(),
        );
        set(
            config,
            "database",
            "sslcert",
            certs.live("client.crt").display().to_string(),
        );
        set(
            config,
            "database",
            "sslkey",
            certs.live("client.key").display().to_string(),
        );
        set(config, "database", "tls_watch_interval_ms", 100);
        set(config, "pool", "max_size", 12);
    })
}

fn ready_tls(app: &TestApp) -> serde_json::Value {
    app.request("GET", "/ready", None, &[]).json["tls"].clone()
}

/// Waits until `/ready` shows generation `generation`, failing after 15 s.
fn wait_for_generation(app: &TestApp, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if ready_tls(app)["generation"] == generation {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("generation {generation} not reached: {}", ready_tls(app));
}

/// Waits until the last reload failed with a message containing `reason`.
fn wait_for_rejection(app: &TestApp, reason: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let tls = ready_tls(app);
        let last = &tls["last_reload"];
        if last["ok"] == false && last["message"].as_str().is_some_and(|m| m.contains(reason)) {
            return tls;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no rejection containing {reason:?}: {}", ready_tls(app));
}

/// Sends requests from `clients` threads until stopped; returns (ok, failed) counters.
fn load(
    app: &TestApp,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let handles = (0..clients)
        .map(|i| {
            let (base, key) = (app.base.clone(), app.key.clone());
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {key}");
                let headers = [
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/json"),
                ];
                while !stop.load(Ordering::Relaxed) {
                    let reply = if i % 2 == 0 {
                        send(
                            &base,
                            "POST",
                            "/api/v1/payments",
                            Some(r#"{"chain": "ethereum", "amount": "1"}"#),
                            &headers,
                        )
                    } else {
                        send(&base, "GET", "/api/v1/payments?limit=5", None, &headers)
                    };
                    if (200..300).contains(&reply.status) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!(
                            "request failed during rotation: {} {}",
                            reply.status, reply.text
                        );
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (ok, failed, handles)
}

#[test]
fn five_rotations_under_load() {
    let certs = Certs::new();
    let app = start_app(&certs);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handles) = load(&app, 16, stop.clone());
    let live = certs.root.join("v1");

    // 1. Copy: renew the certificate for the same key, written in place.
    let key = PKey::private_key_from_pem(&fs::read(live.join("client.key")).unwrap()).unwrap();
    fs::write(
        live.join("client.crt"),
        issue("ca", &key, 1001, now() - DAY, now() + 400 * DAY),
    )
    .unwrap();
    wait_for_generation(&app, 2);

    // 2. Atomic rename: a new certificate moved over the old one.
    fs::write(
        live.join("client.crt.new"),
        issue("ca", &key, 1002, now() - DAY, now() + 400 * DAY),
    )
    .unwrap();
    fs::rename(live.join("client.crt.new"), live.join("client.crt")).unwrap();
    wait_for_generation(&app, 3);

    // 3. Symlink swap: a whole new directory with a new key, then `live` repointed at it.
    let v2 = certs.root.join("v2");
    fs::create_dir_all(&v2).unwrap();
    let key2 = new_key();
    fs::copy(live.join("ca.crt"), v2.join("ca.crt")).unwrap();
    fs::write(
        v2.join("client.crt"),
        issue("ca", &key2, 1003, now() - DAY, now() + 400 * DAY),
    )
    .unwrap();
    write_private(&v2.join("client.key"), &key_pem(&key2));
    std::os::unix::fs::symlink("v2", certs.root.join("live.new")).unwrap();
    fs::rename(certs.root.join("live.new"), certs.root.join("live")).unwrap();
    wait_for_generation(&app, 4);

    // 4. CA overlap: the bundle gains a second CA while the server's stays valid.
    let bundle = format!(
        "{}{}",
        fs::read_to_string(v2.join("ca.crt")).unwrap(),
        fs::read_to_string(cluster().cert("other-ca.crt")).unwrap()
    );
    fs::write(v2.join("ca.crt.new"), bundle).unwrap();
    fs::rename(v2.join("ca.crt.new"), v2.join("ca.crt")).unwrap();
    wait_for_generation(&app, 5);

    // 5. Client key change in place: new key file and certificate, each renamed over.
    let key3 = new_key();
    write_private(&v2.join("client.key.new"), &key_pem(&key3));
    fs::write(
        v2.join("client.crt.new"),
        issue("ca", &key3, 1005, now() - DAY, now() + 400 * DAY),
    )
    .unwrap();
    fs::rename(v2.join("client.crt.new"), v2.join("client.crt")).unwrap();
    fs::rename(v2.join("client.key.new"), v2.join("client.key")).unwrap();
    wait_for_generation(&app, 6);

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    handles
        .into_iter()
        .for_each(|handle| handle.join().unwrap());

    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    let tls = ready_tls(&app);
    assert_eq!(tls["ca"].as_array().unwrap().len(), 2);
    let mut conn = app.running().app.pool.get().unwrap();
    let (client, _) = conn.parts();
    let serial: String = client
        .query_one(
            "SELECT client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(serial, "1005");
    let reloads: i64 = app
        .db
        .owner()
        .query_one(
            "SELECT count(*) FROM ctrip.audit_events WHERE action = 'tls.reloaded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(reloads, 5);
}

/// A description, a change that breaks the set, and the reason the reload must give.
type BadRotation<'a> = (&'static str, Box<dyn Fn() + 'a>, &'static str);

#[test]
fn bad_rotations_keep_current_set() {
    let certs = Certs::new();
    let app = start_app(&certs);
    let live = certs.root.join("v1");
    let good_cert = fs::read_to_string(live.join("client.crt")).unwrap();
    let good_key = fs::read_to_string(live.join("client.key")).unwrap();
    let stranger = new_key();
    let own_key = PKey::private_key_from_pem(good_key.as_bytes()).unwrap();
    let cases: Vec<BadRotation> = vec![
        (
            "cert without its key",
            Box::new(|| {
                fs::write(
                    live.join("client.crt"),
                    issue("ca", &stranger, 2001, now() - DAY, now() + DAY * 30),
                )
                .unwrap()
            }),
            "does not match",
        ),
        (
            "garbage",
            Box::new(|| fs::write(live.join("client.crt"), "not a certificate\n").unwrap()),
            "contains no certificate",
        ),
        (
            "expired",
            Box::new(|| {
                fs::write(
                    live.join("client.crt"),
                    issue("ca", &own_key, 2003, now() - 10 * DAY, now() - DAY),
                )
                .unwrap()
            }),
            "has expired",
        ),
        (
            "wrong CA",
            Box::new(|| {
                fs::write(
                    live.join("client.crt"),
                    issue("other-ca", &own_key, 2004, now() - DAY, now() + DAY * 30),
                )
                .unwrap()
            }),
            "does not chain",
        ),
        (
            "0644 key",
            Box::new(|| {
                fs::set_permissions(live.join("client.key"), fs::Permissions::from_mode(0o644))
                    .unwrap()
            }),
            "mode 0644",
        ),
    ];

    for (index, (description, break_files, reason)) in cases.iter().enumerate() {
        break_files();

        let tls = wait_for_rejection(&app, reason);
        let reply = app.post(
            "/api/v1/payments",
            r#"{"chain": "ethereum", "amount": "1"}"#,
        );

        assert_eq!(tls["generation"], 1, "{description}");
        assert_eq!(reply.status, 201, "{description}: {}", reply.text);
        // The audit row is written just after /ready shows the rejection, so wait for it.
        let count_rejections = || -> i64 {
            app.db
                .owner()
                .query_one(
                    "SELECT count(*) FROM ctrip.audit_events WHERE action = 'tls.reload_failed'",
                    &[],
                )
                .unwrap()
                .get(0)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while count_rejections() < index as i64 + 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(count_rejections(), index as i64 + 1, "{description}");
        fs::write(live.join("client.crt"), &good_cert).unwrap();
        write_private(&live.join("client.key"), &good_key);
        std::thread::sleep(Duration::from_millis(300));
    }

    let log = crate::harness::captured_log();
    assert!(
        log.contains("TLS reload rejected, generation 1 stays in use"),
        "no error logged"
    );
}

#[test]
fn expired_client_certificate_refused_at_start() {
    let certs = Certs::new();
    let key = PKey::private_key_from_pem(&fs::read(certs.live("client.key")).unwrap()).unwrap();
    fs::write(
        certs.root.join("v1").join("client.crt"),
        issue("ca", &key, 3001, now() - 10 * DAY, now() - DAY),
    )
    .unwrap();
    let db = crate::harness::TestDb::create();
    let mut table = crate::harness::base_config(&db);
    set(
        &mut table,
        "database",
        "sslcert",
        certs.live("client.crt").display().to_string(),
    );
    set(
        &mut table,
        "database",
        "sslkey",
        certs.live("client.key").display().to_string(),
    );
    let config = crate::harness::parse_config(&table).unwrap();

    let err = match ctrip::serve::start(&config) {
        Ok(_) => panic!("start-up must refuse an expired client certificate"),
        Err(err) => format!("{err:#}"),
    };

    assert!(err.contains("the client certificate in"), "{err}");
    assert!(err.contains("has expired"), "{err}");
}

#[test]
fn expiry_warnings_by_days_left() {
    let (ca_cert, _) = read_ca("ca");
    let key = new_key();
    let soon =
        X509::from_pem(issue("ca", &key, 4001, now() - DAY, now() + 20 * DAY).as_bytes()).unwrap();
    let very_soon =
        X509::from_pem(issue("ca", &key, 4002, now() - DAY, now() + 3 * DAY).as_bytes()).unwrap();
    let dir = cluster()
        .dir
        .join("files")
        .join(format!("expiry-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("ca.crt"), ca_cert.to_pem().unwrap()).unwrap();
    write_private(&dir.join("client.key"), &key_pem(&key));
    let summarize = |cert: &X509| {
        fs::write(dir.join("client.crt"), cert.to_pem().unwrap()).unwrap();
        let files = ctrip::db::tls::TlsFiles {
            rootcert: dir.join("ca.crt"),
            cert: Some(dir.join("client.crt")),
            key: Some(dir.join("client.key")),
        };
        ctrip::db::tls::TlsMaterial::load(&files).unwrap().summary()
    };

    let warn = ctrip::db::rotation::expiry_warnings(&summarize(&soon), now());
    let error = ctrip::db::rotation::expiry_warnings(&summarize(&very_soon), now());

    assert_eq!(warn.len(), 1);
    assert_eq!(warn[0].0, log::Level::Warn);
    assert!(
        warn[0].1.contains("expires in 19 days") || warn[0].1.contains("expires in 20 days"),
        "{}",
        warn[0].1
    );
    assert_eq!(error[0].0, log::Level::Error);
}
