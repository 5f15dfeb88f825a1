//! Integration tests: a real PostgreSQL cluster (one per test binary, started lazily by
//! `support::PgCluster`), the real daemon bound in-process on a temporary socket, and a raw
//! protocol-1 client talking over that socket. Every test gets its own database; fault tests
//! get their own cluster.
//!
//! One binary on purpose: one cluster per `cargo test`, which keeps the suite quick on two cores.
//! `allocations` needs no cluster: it counts the catalogue's allocations with this binary's
//! global allocator, and measures a query's future.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod allocations;
mod catalog;
mod coalesce;
mod errors;
mod faults;
mod grouped;
mod lifecycle;
mod ops;
mod pool;
mod random_requests;
mod sessions;
mod socket;
mod tls;
mod values;
mod vectors;
