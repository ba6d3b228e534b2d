//! TLS to PostgreSQL with libpq's `sslmode` meanings, built on OpenSSL.
//!
//! The `postgres` crate only supports disable, prefer and require, so ctrip builds the OpenSSL
//! connector itself: `verify-full` checks the chain against `sslrootcert` alone (never the
//! system store) and the host name or IP against the certificate's SAN, `verify-ca` checks the
//! chain only, `require` encrypts without checking. TLS 1.2 is the minimum. The material is
//! read from file contents into a [`TlsMaterial`], so a later reload can validate a whole set
//! before it replaces the one in use.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres_openssl::MakeTlsConnector;
use serde::Deserialize;

/// The protection of the connection to PostgreSQL, with libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Require,
    VerifyCa,
    #[default]
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "prefer" | "allow" => Err(format!(
                "sslmode \"{text}\" is not supported because it falls back to plaintext when the \
                 server declines TLS: use \"verify-full\""
            )),
            _ => Err(format!(
                "unknown sslmode \"{text}\": expected one of verify-full, verify-ca, require, \
                 disable"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for SslMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SslMode::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// A TLS problem with the files, their permissions or the connector built from them.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid PEM {what}: {source}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        source: openssl::error::ErrorStack,
    },
    #[error("{path} contains no certificate: expected PEM blocks starting with -----BEGIN CERTIFICATE-----")]
    Empty { path: PathBuf },
    #[error(
        "private key file {path} has mode {mode:04o}, so group or others can read it: run chmod \
         0600 {path} (0640 is accepted only when root owns the file)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("client key {key} does not match client certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{what} in {path} has expired: install a renewed certificate")]
    Expired { path: PathBuf, what: &'static str },
    #[error("client certificate {path} is not valid yet: check its notBefore and the clock")]
    NotYetValid { path: PathBuf },
    #[error(
        "client certificate {cert} does not chain to a CA in {bundle}: add its issuing CA to \
         the bundle or install a certificate from the bundle's CA"
    )]
    UntrustedClient { cert: PathBuf, bundle: PathBuf },
    #[error("cannot build the TLS connector: {0}")]
    Build(#[from] openssl::error::ErrorStack),
}

/// Paths of the CA bundle and the optional client certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub rootcert: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A client certificate chain with its private key.
pub struct ClientIdentity {
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
}

/// CA bundle and client identity, parsed from file contents and checked to belong together.
pub struct TlsMaterial {
    pub ca: Vec<X509>,
    pub client: Option<ClientIdentity>,
}

impl TlsMaterial {
    /// Reads and checks the whole set: PEM syntax, key-file permissions, key matching cert.
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
        let ca = read_certificates(&files.rootcert)?;
        let client = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some(read_identity(cert, key)?),
            _ => None,
        };
        Ok(TlsMaterial { ca, client })
    }

    /// Checks what parsing cannot: the client certificate is inside its validity window and
    /// chains to a CA in the bundle, and at least one CA in the bundle is still valid.
    pub fn validate(&self, files: &TlsFiles, now: i64) -> Result<(), TlsError> {
        if !self
            .ca
            .iter()
            .any(|ca| expiry_of(ca).is_some_and(|not_after| not_after > now))
        {
            return Err(TlsError::Expired {
                path: files.rootcert.clone(),
                what: "every CA certificate in the bundle",
            });
        }
        let Some(identity) = &self.client else {
            return Ok(());
        };
        let cert_path = files.cert.clone().unwrap_or_default();
        let leaf = &identity.chain[0];
        let not_before = asn1_unix(leaf.not_before()).unwrap_or(i64::MAX);
        if not_before > now {
            return Err(TlsError::NotYetValid { path: cert_path });
        }
        if expiry_of(leaf).is_none_or(|not_after| not_after <= now) {
            return Err(TlsError::Expired {
                path: cert_path,
                what: "the client certificate",
            });
        }
        if !chains_to_bundle(identity, &self.ca)? {
            return Err(TlsError::UntrustedClient {
                cert: cert_path,
                bundle: files.rootcert.clone(),
            });
        }
        Ok(())
    }

    /// Describes the set for `/ready` and the logs: fingerprints and expiry.
    pub fn summary(&self) -> TlsSummary {
        TlsSummary {
            ca: self.ca.iter().map(CertSummary::of).collect(),
            client: self
                .client
                .as_ref()
                .map(|identity| CertSummary::of(&identity.chain[0])),
        }
    }
}

/// Fingerprint, subject and expiry of one certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertSummary {
    pub sha256: String,
    pub subject: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    pub serial: String,
}

impl CertSummary {
    fn of(cert: &X509) -> CertSummary {
        let subject = cert
            .subject_name()
            .entries()
            .map(|entry| String::from_utf8_lossy(entry.data().as_slice()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        let serial = cert
            .serial_number()
            .to_bn()
            .and_then(|bn| bn.to_hex_str().map(|hex| hex.to_string()))
            .unwrap_or_default();
        CertSummary {
            sha256: fingerprint(cert),
            subject,
            not_after: expiry_of(cert).unwrap_or(0),
            serial,
        }
    }

    /// Returns whole days from `now` until expiry, negative once expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// The certificates of a TLS set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsSummary {
    pub ca: Vec<CertSummary>,
    pub client: Option<CertSummary>,
}

fn asn1_unix(time: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(time).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

fn expiry_of(cert: &X509) -> Option<i64> {
    asn1_unix(cert.not_after())
}

fn chains_to_bundle(identity: &ClientIdentity, bundle: &[X509]) -> Result<bool, TlsError> {
    let mut store = X509StoreBuilder::new()?;
    for ca in bundle {
        store.add_cert(ca.clone())?;
    }
    let store = store.build();
    let mut intermediates = openssl::stack::Stack::new()?;
    for extra in &identity.chain[1..] {
        intermediates.push(extra.clone())?;
    }
    let mut context = openssl::x509::X509StoreContext::new()?;
    Ok(
        context.init(&store, &identity.chain[0], &intermediates, |ctx| {
            ctx.verify_cert()
        })?,
    )
}

fn fingerprint(cert: &X509) -> String {
    cert.digest(MessageDigest::sha256())
        .map(|digest| hex::encode(&*digest))
        .unwrap_or_default()
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certificates(path: &Path) -> Result<Vec<X509>, TlsError> {
    let pem = read_file(path)?;
    let certs = X509::stack_from_pem(&pem).map_err(|source| TlsError::Parse {
        path: path.to_owned(),
        what: "certificate",
        source,
    })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_identity(cert_path: &Path, key_path: &Path) -> Result<ClientIdentity, TlsError> {
    check_key_permissions(key_path)?;
    let chain = read_certificates(cert_path)?;
    let key_pem = read_file(key_path)?;
    let key = PKey::private_key_from_pem(&key_pem).map_err(|source| TlsError::Parse {
        path: key_path.to_owned(),
        what: "private key",
        source,
    })?;
    let public = chain[0].public_key()?;
    if !key.public_eq(&public) {
        return Err(TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        });
    }
    Ok(ClientIdentity { chain, key })
}

/// Rejects a private key file that group or others can access, as libpq does: at most 0600,
/// or 0640 when the file is owned by root.
pub fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    let metadata = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.mode() & 0o777;
    let allowed = if metadata.uid() == 0 { 0o640 } else { 0o600 };
    if mode & !allowed != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// A ready-to-use OpenSSL connector for one sslmode and one set of material.
pub struct TlsConnector {
    mode: SslMode,
    connector: SslConnector,
}

impl TlsConnector {
    /// Builds the connector: only the configured CAs are trusted, TLS 1.2 at least.
    pub fn build(mode: SslMode, material: &TlsMaterial) -> Result<TlsConnector, TlsError> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;

        let mut store = X509StoreBuilder::new()?;
        for ca in &material.ca {
            store.add_cert(ca.clone())?;
        }
        builder.set_cert_store(store.build());

        if let Some(identity) = &material.client {
            builder.set_certificate(&identity.chain[0])?;
            for extra in &identity.chain[1..] {
                builder.add_extra_chain_cert(extra.clone())?;
            }
            builder.set_private_key(&identity.key)?;
            builder.check_private_key()?;
        }

        let verify = if mode == SslMode::Require {
            SslVerifyMode::NONE
        } else {
            SslVerifyMode::PEER
        };
        builder.set_verify(verify);
        Ok(TlsConnector {
            mode,
            connector: builder.build(),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Returns a connector for one connection attempt, with host name checking as the mode
    /// requires.
    pub fn make(&self) -> MakeTlsConnector {
        let mut make = MakeTlsConnector::new(self.connector.clone());
        let check_host = self.mode == SslMode::VerifyFull;
        make.set_callback(move |config, _domain| {
            config.set_verify_hostname(check_host);
            Ok(())
        });
        make
    }
}
