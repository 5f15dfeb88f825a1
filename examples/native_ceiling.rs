//! The native ceiling for `make bench` (benches/compare): what Rust itself reaches on the
//! seed's workload with tokio-postgres, no daemon and no IPC in between.
//!
//! N PostgreSQL connections (the daemon's pool size), each running `SELECT id, name FROM users
//! LIMIT $1` with the parameter cycling 10, 5, 1, prepared once per connection and pipelined:
//! up to `--depth` queries are in flight on every connection. Every row is fetched and decoded
//! into Rust values (`i32`, `String`). After `--warmup` seconds the queries completed during
//! `--seconds` are counted, and one JSON object is printed on stdout:
//!
//! ```text
//! {"queries": 1234567, "seconds": 4.0003, "qps": 308625.4, "rows": 6584357, ...}
//! ```
//!
//! ```sh
//! cargo run --release --example native_ceiling -- --host /tmp/pg/sock --port 5432 \
//!     --user postgres --password secret --dbname bench --connections 8 --seconds 4
//! ```
//!
//! `--host` is a host name, an IP address, or a Unix-socket directory (starts with `/`).
//! The password may also come from `PGPASSWORD`.

use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio_postgres::{Client, NoTls, Statement};

const SQL: &str = "SELECT id, name FROM users LIMIT $1";
const LIMITS: [i64; 3] = [10, 5, 1];

const USAGE: &str = "usage: native_ceiling [--host H] [--port P] [--user U] [--password PW] \
[--dbname DB] [--connections N] [--depth D] [--seconds S] [--warmup S]";

struct Args {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
    connections: usize,
    depth: usize,
    seconds: f64,
    warmup: f64,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            password: std::env::var("PGPASSWORD").ok(),
            dbname: "postgres".into(),
            connections: 8,
            depth: 64,
            seconds: 4.0,
            warmup: 1.0,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.into());
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--host" => args.host = value,
                "--port" => args.port = value.parse().map_err(|e| bad(&e))?,
                "--user" => args.user = value,
                "--password" => args.password = Some(value),
                "--dbname" => args.dbname = value,
                "--connections" => args.connections = value.parse().map_err(|e| bad(&e))?,
                "--depth" => args.depth = value.parse().map_err(|e| bad(&e))?,
                "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
                "--warmup" => args.warmup = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
            }
        }
        if args.connections == 0 || args.depth == 0 {
            return Err("--connections and --depth must be at least 1".into());
        }
        Ok(args)
    }
}

/// Counters shared by the connection tasks and the clock.
#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    rows: AtomicU64,
    /// Sum of ids and name lengths, so decoding cannot be optimised away.
    checksum: AtomicU64,
    stop: AtomicBool,
}

/// Runs one query and decodes its rows into Rust values; returns (rows, checksum).
async fn one_query(
    client: &Client,
    statement: &Statement,
    i: usize,
) -> Result<(u64, u64), tokio_postgres::Error> {
    let limit = LIMITS[i % LIMITS.len()];
    let rows = client.query(statement, &[&limit]).await?;
    let mut sum = 0u64;
    for row in &rows {
        let id: i32 = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        sum = sum.wrapping_add(id as u64).wrapping_add(name.len() as u64);
    }
    Ok((rows.len() as u64, sum))
}

/// Keeps `depth` queries in flight on one connection until told to stop.
async fn drive(
    client: Client,
    statement: Statement,
    depth: usize,
    counters: Arc<Counters>,
) -> Result<(), tokio_postgres::Error> {
    let client = &client;
    let statement = &statement;
    let mut results = stream::iter(0usize..)
        .map(|i| one_query(client, statement, i))
        .buffer_unordered(depth);
    while let Some(result) = results.next().await {
        let (rows, sum) = result?;
        counters.queries.fetch_add(1, Ordering::Relaxed);
        counters.rows.fetch_add(rows, Ordering::Relaxed);
        counters.checksum.fetch_add(sum, Ordering::Relaxed);
        if counters.stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(&args.host)
        .port(args.port)
        .user(&args.user)
        .dbname(&args.dbname)
        .application_name("native_ceiling");
    if let Some(password) = &args.password {
        config.password(password);
    }

    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("native_ceiling: connection error: {e}");
            }
        });
        let statement = client.prepare(SQL).await?;
        tasks.push(tokio::spawn(drive(
            client,
            statement,
            args.depth,
            counters.clone(),
        )));
    }

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let (q0, r0, t0) = (
        counters.queries.load(Ordering::Relaxed),
        counters.rows.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let (q1, r1, elapsed) = (
        counters.queries.load(Ordering::Relaxed),
        counters.rows.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    counters.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }

    let queries = q1 - q0;
    let seconds = elapsed.as_secs_f64();
    println!(
        "{{\"queries\": {queries}, \"seconds\": {seconds:.6}, \"qps\": {:.1}, \"rows\": {}, \
\"connections\": {}, \"depth\": {}, \"checksum\": {}}}",
        queries as f64 / seconds,
        r1 - r0,
        args.connections,
        args.depth,
        counters.checksum.load(Ordering::Relaxed),
    );
    Ok(())
}
