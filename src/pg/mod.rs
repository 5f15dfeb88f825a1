//! PostgreSQL side: pooled connections (`conn`) over sockets the daemon opens (`socket`),
//! statement execution (`exec`) and grouped read-only pipelines (`burst`).

pub mod burst;
pub mod conn;
pub mod exec;
pub mod socket;
