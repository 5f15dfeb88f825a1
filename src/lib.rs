//! qail-daemon: one process that owns a host's PostgreSQL connections and serves local
//! processes over a Unix socket (protocol 1, `docs/protocol.md`).
//!
//! Layout follows the runtime: `config` → `app` (wiring) → `supervisor` (one worker per
//! `upstream`, each a bb8 pool of `pg::conn` connections plus a health loop) → `ipc` (listener,
//! frame codec, one session per client, one file per op family) → `pg::exec` (statements on a
//! connection, rows to JSON via `values`). `catalog` is the shared statement catalogue.
//! `admin` is the HTTP admin API (health, readiness, stats, operator actions) and `metrics` the
//! Prometheus registry it renders.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod catalog;
pub mod config;
pub mod error;
pub mod ipc;
pub mod metrics;
pub mod net;
pub mod pg;
pub mod sql;
pub mod supervisor;
pub mod telemetry;
pub mod upstream;
pub mod values;
