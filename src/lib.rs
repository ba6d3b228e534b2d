//! ctrip: a self-hosted crypto payment gateway on a hardened PostgreSQL.
//!
//! Merchants create payments over a JSON API; each payment gets its own deposit address,
//! derived from one BIP39 seed. See ARCHITECTURE.md for how the modules fit together.

pub mod apikeys;
pub mod audit;
pub mod backup;
pub mod chains;
pub mod cli;
pub mod config;
pub mod db;
pub mod doctor;
pub mod http;
pub mod keyfile;
pub mod logging;
pub mod merchants;
pub mod payments;
pub mod retention;
pub mod secret;
pub mod serve;
pub mod tls_watch;
pub mod wallet;
