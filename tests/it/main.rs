//! Integration tests against real PostgreSQL over verified TLS; run them with `make test`.

mod harness;

mod api_basics;
mod audit;
mod auth;
mod backup;
mod cli;
mod concurrency;
mod doctor;
mod faults;
mod merchants;
mod migrations;
mod payments;
mod pool;
mod retention;
mod rotation;
mod security;
mod tls;
mod validation;
