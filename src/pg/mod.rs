//! PostgreSQL side: pooled connections (`conn`) and statement execution (`exec`).

pub mod conn;
pub mod exec;
