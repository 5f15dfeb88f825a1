//! Helpers shared by the integration tests: a throwaway PostgreSQL cluster, the daemon running
//! in-process on a temporary socket, and a raw protocol-1 client.
//!
//! Used as `#[path = "../support/mod.rs"] mod support;`; not every test binary uses every helper.
#![allow(dead_code)]

pub mod client;
pub mod daemon;
pub mod pg;

pub use client::RawClient;
pub use daemon::{base_config, extra_upstream, temp_dir, TestDaemon, TestDb};
pub use pg::PgCluster;
