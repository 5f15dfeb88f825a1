//! Random requests: thousands of frames built from every op and field with values of every
//! JSON kind, some cut short or not JSON at all, sent by several clients at once in runs written
//! before their answers are read. Each must get exactly one answer, in order, ok or an error
//! with a code and a message; the connections must stay open, and the daemon must serve
//! normally afterwards. Then clients that leave with requests unanswered, some still running
//! in PostgreSQL, must leave no pooled connection taken and nothing running behind them. And
//! the same random requests again while the daemon's PostgreSQL connections are terminated one
//! by one: still one answer each, and every client recovers.
//!
//! The generator is seeded (`QAIL_RANDOM_SEED`, else a fixed seed), so a failure names the
//! seed and the request that broke it, and can be replayed (timing may still differ).

use serde_json::{json, Map, Value};

use crate::support::client::{encode, RawClient};
use crate::support::{TestDaemon, TestDb};

/// Requests per client, and clients at once: a few seconds on two cores.
const REQUESTS: usize = 1500;
const CLIENTS: usize = 3;

/// xorshift64*: small, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// Statements the requests may name: valid ones of several shapes (every parameter type of
/// `ALL_TYPES` among them), writes (to `w` only: `t` stays as the test made it), transaction
/// control, and broken SQL. Nothing that changes the schema or waits. jsonb comes back as text:
/// embedded as JSON, a number beyond f64 (`'1e400'::jsonb`) is valid JSON that this test's
/// client (serde_json) refuses.
const SQL: &[&str] = &[
    "SELECT 1",
    "SELECT $1::int4 + 1",
    "SELECT id, name FROM t WHERE id = $1",
    "SELECT id, name FROM t LIMIT $1",
    "INSERT INTO w (id, name) VALUES ($1, $2)",
    "UPDATE w SET name = $2 WHERE id = $1",
    ALL_TYPES,
    "SELECT $1",
    "SELECT $1::text, $2::jsonb::text",
    "SELEC 1",
    "SELECT * FROM no_such_table",
    "BEGIN",
    "COMMIT",
    "SET search_path = public",
    "SELECT 1; SELECT 2",
    "",
    "SELECT 1/0",
];

/// One statement taking a parameter of many types at once.
const ALL_TYPES: &str = "SELECT $1::int2, $2::int8, $3::numeric, $4::float8, $5::bool, \
    $6::timestamptz, $7::date, $8::interval, $9::uuid, $10::bytea, $11::jsonb::text, $12::int4[], \
    $13::text[], $14::inet, $15::char(3)";

/// A random JSON value of any kind, nested up to `depth`.
fn value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth == 0 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => number(rng),
        3 => Value::String(string(rng)),
        4 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth - 1)).collect()),
        _ => {
            let mut object = Map::new();
            for _ in 0..rng.below(3) {
                object.insert(string(rng), value(rng, depth - 1));
            }
            Value::Object(object)
        }
    }
}

fn number(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!(rng.below(20)),
        1 => json!(-(rng.below(1000) as i64)),
        2 => json!(i64::MAX),
        3 => json!(i64::MIN),
        4 => json!(u64::MAX),
        5 => json!(1.5),
        6 => json!(-1e300),
        _ => json!(rng.next() as i64),
    }
}

fn string(rng: &mut Rng) -> String {
    let samples = [
        "",
        "10",
        "-3",
        "abc",
        "é☃\u{1F600}",
        "a\u{0}b",
        "\"quoted\\",
        "2024-02-29 12:00:00+02",
        "infinity",
        "NaN",
        "1e400",
        "{1,2,NULL}",
        "{\"a\": [1, {}]}",
        "\\x00ff",
        "00000000-0000-0000-0000-000000000000",
        "1 day 2 hours",
        "::1",
        "main",
        "h1",
    ];
    let mut s = rng.pick(&samples).to_string();
    if rng.chance(5) {
        s = s.repeat(1 + rng.below(500));
    }
    s
}

/// A random list of parameters: often as many as `ALL_TYPES` takes, else any length.
fn params(rng: &mut Rng) -> Value {
    let n = if rng.chance(40) { 15 } else { rng.below(4) };
    Value::Array((0..n).map(|_| value(rng, 2)).collect())
}

/// One random request: mostly one with the fields its op takes and random values in them,
/// else anything (`chaos`). Never `close` (it ends the connection on purpose).
fn request(rng: &mut Rng, id: i64, handles: &[String]) -> Value {
    if rng.chance(30) {
        return chaos(rng, id, handles);
    }
    let target = |rng: &mut Rng, r: &mut Map<String, Value>| {
        if rng.chance(50) {
            r.insert("handle".into(), json!(rng.pick(handles)));
        } else {
            r.insert("sql".into(), json!(rng.pick(SQL)));
        }
    };
    let mut r = Map::new();
    r.insert("id".into(), json!(id));
    let op = rng.pick(&[
        "prepare", "query", "query", "execute", "pipeline", "pipeline", "batch", "begin", "commit",
        "rollback", "ping", "hello", "connect",
    ]);
    r.insert("op".into(), json!(op));
    match op {
        "prepare" => {
            r.insert("sql".into(), json!(rng.pick(SQL)));
        }
        "query" | "execute" => {
            target(rng, &mut r);
            r.insert("params".into(), params(rng));
        }
        "pipeline" => {
            target(rng, &mut r);
            let batch = (0..rng.below(6)).map(|_| params(rng)).collect();
            r.insert("params_batch".into(), Value::Array(batch));
            let shape = rng.pick(&["count_only", "compact", "columnar", "column_major", ""]);
            if !shape.is_empty() {
                r.insert(shape.into(), json!(true));
            }
            if rng.chance(30) {
                r.insert("atomic".into(), json!(true));
            }
        }
        "batch" => {
            let statements = (0..rng.below(5))
                .map(|_| {
                    let mut st = Map::new();
                    target(rng, &mut st);
                    st.insert("params".into(), params(rng));
                    Value::Object(st)
                })
                .collect();
            r.insert("statements".into(), Value::Array(statements));
            r.insert("atomic".into(), json!(rng.chance(50)));
        }
        "begin" if rng.chance(50) => {
            r.insert("isolation".into(), json!("repeatable read"));
            r.insert("read_only".into(), json!(rng.chance(50)));
        }
        "hello" => {
            r.insert("protocol".into(), json!(1));
        }
        "connect" => {
            r.insert("upstream".into(), json!("main"));
        }
        _ => {}
    }
    if rng.chance(10) {
        r.insert("timeout_ms".into(), json!(rng.pick(&[1, 50, 5000])));
    }
    Value::Object(r)
}

/// Makes a random value for one field.
type Make = fn(&mut Rng) -> Value;

/// Any op (or none), any fields, values of any kind.
fn chaos(rng: &mut Rng, id: i64, handles: &[String]) -> Value {
    // Every op but `close`, and one that does not exist.
    let ops: Vec<&str> = qail_daemon::ipc::request::OPS
        .iter()
        .copied()
        .filter(|op| *op != "close")
        .chain(["no_such_op"])
        .collect();
    let mut r = Map::new();
    r.insert("id".into(), json!(id));
    if rng.chance(95) {
        let op = if rng.chance(97) {
            json!(rng.pick(&ops))
        } else {
            value(rng, 1)
        };
        r.insert("op".into(), op);
    }
    let statement = |rng: &mut Rng| -> (String, Value) {
        if rng.chance(30) && !handles.is_empty() {
            ("handle".into(), json!(rng.pick(handles)))
        } else if rng.chance(90) {
            ("sql".into(), json!(rng.pick(SQL)))
        } else {
            (rng.pick(&["sql", "handle"]).into(), value(rng, 1))
        }
    };
    let (key, target) = statement(rng);
    if rng.chance(85) {
        r.insert(key, target);
    }
    // Any other field, with a value of the right kind or not.
    let fields: [(&str, Make); 20] = [
        ("params", params),
        ("params_batch", |rng| {
            Value::Array((0..rng.below(5)).map(|_| params(rng)).collect())
        }),
        ("count_only", |rng| json!(rng.chance(50))),
        ("compact", |rng| json!(rng.chance(50))),
        ("columnar", |rng| json!(rng.chance(50))),
        ("column_major", |rng| json!(rng.chance(50))),
        ("atomic", |rng| json!(rng.chance(50))),
        ("read_only", |rng| json!(rng.chance(50))),
        ("timeout_ms", |rng| json!(rng.pick(&[0, 1, 50, 5000]))),
        ("isolation", |rng| {
            json!(rng.pick(&["serializable", "repeatable read", "read committed", "bogus"]))
        }),
        ("statements", |rng| {
            Value::Array(
                (0..rng.below(4))
                    .map(|_| json!({"sql": rng.pick(SQL), "params": params(rng)}))
                    .collect(),
            )
        }),
        ("protocol", |rng| json!(rng.pick(&[0, 1, 2]))),
        ("client", |_| json!("random")),
        ("token", |rng| json!(string(rng))),
        ("upstream", |rng| json!(rng.pick(&["main", "other", ""]))),
        ("host", |rng| json!(string(rng))),
        ("port", |rng| json!(rng.pick(&[0, 5432, 65535]))),
        ("user", |rng| json!(string(rng))),
        ("database", |rng| json!(string(rng))),
        ("sslmode", |rng| {
            json!(rng.pick(&["disable", "require", "nope"]))
        }),
    ];
    for _ in 0..rng.below(4) {
        let (name, make) = rng.pick(&fields);
        let v = if rng.chance(85) {
            make(rng)
        } else {
            value(rng, 2)
        };
        r.insert(name.into(), v);
    }
    if rng.chance(3) {
        r.insert(string(rng), value(rng, 1));
    }
    Value::Object(r)
}

/// The generator's seed: `QAIL_RANDOM_SEED`, else a fixed one.
fn seed() -> u64 {
    std::env::var("QAIL_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_F0A1)
}

/// What one client's run got back.
#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    cut: usize,
}

/// A frame holding `request`, or, now and then, its JSON cut short (the length says what is
/// sent), maybe followed by a byte that is not UTF-8. Returns whether it was cut.
fn frame(rng: &mut Rng, request: &Value) -> (Vec<u8>, bool) {
    let mut frame = encode(request);
    if !rng.chance(4) {
        return (frame, false);
    }
    let body = frame.split_off(4);
    let mut body = body[..rng.below(body.len())].to_vec();
    if rng.chance(30) {
        body.push(0xff);
    }
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    (frame, true)
}

/// `len` random requests numbered from `first`, as (id, request, cut short) and the bytes
/// that send them all at once.
fn random_run(
    rng: &mut Rng,
    handles: &[String],
    first: usize,
    len: usize,
) -> (Vec<(i64, Value, bool)>, Vec<u8>) {
    let mut run = Vec::with_capacity(len);
    let mut bytes = Vec::new();
    for k in 0..len {
        let id = 1_000_000 + (first + k) as i64;
        let req = request(rng, id, handles);
        let (frame, cut) = frame(rng, &req);
        bytes.extend_from_slice(&frame);
        run.push((id, req, cut));
    }
    (run, bytes)
}

/// Sends `requests` random requests on `c`, in runs of 1 to 4 written before their answers are
/// read, and checks every answer. `who` names the client and seed in failures.
async fn drive(
    c: &mut RawClient,
    mut rng: Rng,
    handles: &[String],
    requests: usize,
    who: &str,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = 0;
    while n < requests {
        // A run of requests, all written before the first answer is read.
        let len = (1 + rng.below(4)).min(requests - n);
        let (run, bytes) = random_run(&mut rng, handles, n, len);
        tally.cut += run.iter().filter(|(_, _, cut)| *cut).count();
        let context = |k: usize| format!("{who}, request {}: {}", n + k, run[k].1);
        c.try_send_raw(&bytes)
            .await
            .unwrap_or_else(|e| panic!("the daemon closed the connection ({e}); {}", context(0)));
        for (k, (id, _, cut)) in run.iter().enumerate() {
            let Some(answer) = c.try_recv().await else {
                panic!("the daemon closed the connection; {}", context(k));
            };
            match answer["ok"].as_bool() {
                Some(true) => tally.ok += 1,
                Some(false) => {
                    tally.failed += 1;
                    let error = &answer["error"];
                    assert!(
                        error["code"].as_str().is_some_and(|s| !s.is_empty())
                            && error["message"].as_str().is_some_and(|s| !s.is_empty()),
                        "an error without a code and message: {answer}; {}",
                        context(k)
                    );
                    assert_ne!(
                        error["code"],
                        json!("internal"),
                        "an internal error: {answer}; {}",
                        context(k)
                    );
                }
                None => panic!("an answer without ok: {answer}; {}", context(k)),
            }
            // A frame whose JSON is cut short has no id to echo; every other answer echoes it.
            if !cut {
                assert_eq!(answer["id"], json!(id), "{answer}; {}", context(k));
            }
        }
        n += run.len();
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_are_each_answered_and_the_daemon_keeps_serving() {
    let seed = seed();
    let (db, daemon, mut handles) = start().await;
    handles.push("h_no_such_handle".to_string());

    // Clients at once, so random work meets on shared connections too.
    let mut clients = Vec::new();
    for k in 0..CLIENTS as u64 {
        let mut client = daemon.connected().await;
        let handles = handles.clone();
        let rng = Rng((seed ^ (k << 48)).max(1));
        clients.push(tokio::spawn(async move {
            let who = format!("seed {seed}, client {k}");
            let tally = drive(&mut client, rng, &handles, REQUESTS, &who).await;
            (client, tally)
        }));
    }
    for (k, handle) in clients.into_iter().enumerate() {
        let (mut client, t) = handle.await.expect("a client task failed");
        eprintln!(
            "seed {seed}, client {k}: {} ok, {} failed, {} cut short",
            t.ok, t.failed, t.cut
        );
        assert!(
            t.ok > REQUESTS / 20 && t.failed > REQUESTS / 4 && t.cut > 0,
            "the generator should reach successes, failures and cut frames (seed {seed}, \
             client {k}): {} ok, {} failed, {} cut short",
            t.ok,
            t.failed,
            t.cut
        );
        // Each connection still works once any transaction its requests opened is ended.
        client.call(json!({"op": "rollback"})).await;
        client
            .call_ok(json!({"op": "connect", "upstream": "main"}))
            .await;
        let r = client
            .call_ok(json!({"op": "query", "handle": handles[0], "params": [2]}))
            .await;
        assert_eq!(r["rows"], json!([[2, "two"]]), "{r}");
    }
    // So does a new client, and no PostgreSQL connection was left inside a transaction.
    let mut fresh = daemon.connected().await;
    assert_eq!(
        fresh.scalar("SELECT count(*) FROM t", json!([])).await,
        json!(2)
    );
    let admin = db.admin().await;
    assert_no_open_transaction(&admin).await;
    daemon.shutdown().await;
}

/// Fails when a PostgreSQL connection to the test's database is left inside a transaction.
async fn assert_no_open_transaction(admin: &tokio_postgres::Client) {
    let open: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .expect("reading pg_stat_activity")
        .get(0);
    assert_eq!(open, 0, "connections left idle in a transaction");
}

/// The test's tables: `t` is only read by random requests, `w` takes their writes.
const TABLES: &str = "CREATE TABLE t (id int PRIMARY KEY, name text); \
    INSERT INTO t VALUES (1, 'one'), (2, 'two'); CREATE TABLE w (id int PRIMARY KEY, name text)";

/// A fresh database with the test's tables, a daemon on it, and the handles of three
/// statements prepared there (`handles[0]` reads one row of `t` by id).
async fn start() -> (TestDb, TestDaemon, Vec<String>) {
    let db = TestDb::new().await;
    db.setup(TABLES).await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let handles = vec![
        c.prepare("SELECT id, name FROM t WHERE id = $1").await,
        c.prepare(ALL_TYPES).await,
        c.prepare("SELECT id, name FROM t LIMIT $1").await,
    ];
    (db, daemon, handles)
}

/// Clients that leave with requests unanswered, over and over.
const LEAVERS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_leaving_mid_request_leave_nothing_behind() {
    let seed = seed();
    let mut rng = Rng(seed.max(1));
    let (db, daemon, handles) = start().await;
    let slow = json!({"op": "query", "sql": "SELECT pg_sleep(0.02)"});
    for n in 0..LEAVERS {
        let mut c = daemon.connected().await;
        let len = 1 + rng.below(4);
        let (mut run, mut bytes) = random_run(&mut rng, &handles, n * 4, len);
        if rng.chance(40) {
            // Something still running in PostgreSQL when the client goes.
            let mut req = slow.clone();
            req["id"] = json!(n);
            bytes.extend_from_slice(&encode(&req));
            run.push((n as i64, req, false));
        }
        c.send_raw(&bytes).await;
        // Read some of the answers, maybe none, then leave: half of the time after shutting
        // down only the writing side (the daemon still answers), else by closing.
        for _ in 0..rng.below(run.len() + 1) {
            c.recv().await;
        }
        if rng.chance(50) {
            c.shutdown_write().await;
        }
        drop(c);
    }

    // Every pooled connection can be taken at once: none leaked, none stuck in a transaction
    // (`pool_max` is 4, and a checkout waits at most 5 s).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = daemon.connected().await;
        c.call_ok(json!({"op": "begin"})).await;
        assert_eq!(
            c.scalar("SELECT count(*) FROM t", json!([])).await,
            json!(2)
        );
        held.push(c);
    }
    for mut c in held {
        c.call_ok(json!({"op": "rollback"})).await;
    }
    // And nothing the leavers started is still running or open in PostgreSQL.
    let admin = db.admin().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let busy: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND state <> 'idle'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if busy == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{busy} PostgreSQL connections still busy 5 s after the last client left (seed {seed})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_while_backends_are_terminated() {
    let seed = seed();
    let (db, daemon, handles) = start().await;
    // Terminates one of the daemon's PostgreSQL connections every 20 ms or so, until told.
    let admin = db.admin().await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let killer = tokio::spawn(async move {
        let mut killed = 0;
        loop {
            let n: i64 = admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM \
                     pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
                     ORDER BY random() LIMIT 1) AS one",
                    &[],
                )
                .await
                .expect("terminating a backend")
                .get(0);
            killed += n;
            tokio::select! {
                _ = &mut stopped => return (killed, admin),
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        }
    });

    let mut clients = Vec::new();
    for k in 0..2u64 {
        let mut client = daemon.connected().await;
        let handles = handles.clone();
        let rng = Rng((seed ^ (k << 40)).max(1));
        clients.push(tokio::spawn(async move {
            let who = format!("seed {seed}, client {k}, backends being terminated");
            drive(&mut client, rng, &handles, 800, &who).await;
            client
        }));
    }
    let mut done = Vec::new();
    for handle in clients {
        done.push(handle.await.expect("a client task failed"));
    }
    let _ = stop.send(());
    let (killed, admin) = killer.await.expect("the killer task failed");
    assert!(killed > 0, "no backend was terminated (seed {seed})");

    // Every client recovers: its next statements succeed once the broken connections are
    // replaced, and no PostgreSQL connection is left inside a transaction.
    for mut c in done {
        c.call(json!({"op": "rollback"})).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = c
                .call(json!({"op": "query", "handle": handles[0], "params": [2]}))
                .await;
            if r["ok"] == json!(true) {
                assert_eq!(r["rows"], json!([[2, "two"]]), "{r}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no recovery within 10 s after {killed} backends were terminated (seed {seed}): {r}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_no_open_transaction(&admin).await;
    eprintln!("seed {seed}: {killed} backends terminated");
    daemon.shutdown().await;
}
