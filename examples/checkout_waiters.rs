//! Pool checkout under many waiters, for `make bench` (benches/compare): many client
//! connections keep one request each in flight against a daemon whose pool is much smaller, so
//! almost every request waits for a pooled connection. What a request waits shows in its
//! latency; whether the pool serves waiters in turn shows in the spread (p99 and max against
//! the median) and in how evenly the clients got through.
//!
//! Each client opens its own connection to the daemon's socket (`hello`, `connect`), then sends
//! `query` with `--sql` in a loop, one at a time. `--exclusive` adds a `timeout_ms` to every
//! request, which needs a connection of its own (as transactions, pipelines and batches do);
//! without it, statements share connections (up to 8 requests each) before they wait. After
//! `--warmup` seconds, the requests that end during `--seconds` are timed, and one JSON object
//! is printed on stdout:
//!
//! ```text
//! {"clients": 1000, "requests": 41234, "seconds": 3.0, "qps": 13744.6, "p50_us": 71234, ...}
//! ```
//!
//! ```sh
//! cargo run --release --example checkout_waiters -- --socket /run/qail/qail.sock \
//!     --upstream main --clients 1000 --seconds 3 --exclusive
//! ```

use std::error::Error;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const USAGE: &str = "usage: checkout_waiters --socket PATH [--upstream NAME] [--clients N] \
[--sql SQL] [--exclusive] [--seconds S] [--warmup S]";

struct Args {
    socket: PathBuf,
    upstream: String,
    clients: usize,
    sql: String,
    exclusive: bool,
    seconds: f64,
    warmup: f64,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            socket: PathBuf::new(),
            upstream: "main".into(),
            clients: 1000,
            sql: "SELECT 1".into(),
            exclusive: false,
            seconds: 3.0,
            warmup: 1.0,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--help" | "-h" => return Err(USAGE.into()),
                "--exclusive" => {
                    args.exclusive = true;
                    continue;
                }
                _ => {}
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--socket" => args.socket = PathBuf::from(value),
                "--upstream" => args.upstream = value,
                "--clients" => args.clients = value.parse().map_err(|e| bad(&e))?,
                "--sql" => args.sql = value,
                "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
                "--warmup" => args.warmup = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
            }
        }
        if args.socket.as_os_str().is_empty() {
            return Err(format!("--socket is required\n{USAGE}"));
        }
        if args.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        Ok(args)
    }
}

/// One client connection speaking the daemon's framing: u32 big-endian length + JSON.
struct Conn {
    stream: UnixStream,
    next_id: u64,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(path: &PathBuf) -> Result<Conn, Box<dyn Error + Send + Sync>> {
        Ok(Conn {
            stream: UnixStream::connect(path).await?,
            next_id: 1,
            buf: Vec::with_capacity(256),
        })
    }

    /// Sends `request` (given an id) and returns the answer, failing on `"ok": false`.
    async fn ask(&mut self, mut request: Value) -> Result<Value, Box<dyn Error + Send + Sync>> {
        request["id"] = json!(self.next_id);
        self.next_id += 1;
        let body = serde_json::to_vec(&request)?;
        self.buf.clear();
        self.buf
            .extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(&body);
        self.stream.write_all(&self.buf).await?;
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).await?;
        let mut answer = vec![0u8; u32::from_be_bytes(header) as usize];
        self.stream.read_exact(&mut answer).await?;
        let answer: Value = serde_json::from_slice(&answer)?;
        if answer["ok"] != json!(true) {
            return Err(format!("the daemon refused {request}: {}", answer["error"]).into());
        }
        Ok(answer)
    }
}

/// Sends requests one at a time until `stop`; returns the latency (µs) of those that ended
/// inside the timed window.
async fn client(
    args: Arc<Args>,
    window: (Instant, Instant),
    stop: Arc<AtomicBool>,
) -> Result<Vec<u32>, Box<dyn Error + Send + Sync>> {
    let mut conn = Conn::open(&args.socket).await?;
    conn.ask(json!({"op": "hello", "protocol": 1, "client": "checkout_waiters"}))
        .await?;
    conn.ask(json!({"op": "connect", "upstream": args.upstream}))
        .await?;
    let mut request = json!({"op": "query", "sql": args.sql});
    if args.exclusive {
        request["timeout_ms"] = json!(60_000);
    }
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        conn.ask(request.clone()).await?;
        let ended = Instant::now();
        if started >= window.0 && ended <= window.1 {
            latencies.push((ended - started).as_micros().min(u32::MAX as u128) as u32);
        }
    }
    Ok(latencies)
}

fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let args = match Args::parse() {
        Ok(args) => Arc::new(args),
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = start + Duration::from_secs_f64(args.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(client(args.clone(), (start, end), stop.clone())))
        .collect();
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    let mut per_client = Vec::with_capacity(tasks.len());
    for task in tasks {
        let latencies = task.await??;
        per_client.push(latencies.len());
        all.extend(latencies);
    }
    all.sort_unstable();
    per_client.sort_unstable();
    let seconds = args.seconds;
    println!(
        "{}",
        json!({
            "clients": args.clients,
            "exclusive": args.exclusive,
            "sql": args.sql,
            "requests": all.len(),
            "seconds": seconds,
            "qps": all.len() as f64 / seconds,
            "p50_us": quantile(&all, 0.50),
            "p90_us": quantile(&all, 0.90),
            "p99_us": quantile(&all, 0.99),
            "p999_us": quantile(&all, 0.999),
            "max_us": all.last().copied().unwrap_or(0),
            "per_client_min": per_client.first().copied().unwrap_or(0),
            "per_client_median": per_client.get(per_client.len() / 2).copied().unwrap_or(0),
            "per_client_max": per_client.last().copied().unwrap_or(0),
        })
    );
    Ok(())
}
