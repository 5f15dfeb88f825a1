//! PostgreSQL side: pooled connections (`conn`) over sockets the daemon opens (`socket`),
//! statement execution (`exec`), grouped read-only pipelines (`burst`) whose rows are written
//! by column as they arrive (`by_column`), the coalescing of concurrent single statements
//! into such groups (`coalesce`), and TLS (`tls`).

pub mod burst;
pub mod by_column;
pub mod coalesce;
pub mod conn;
pub mod exec;
pub mod socket;
pub mod tls;
