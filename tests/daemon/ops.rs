//! Every protocol-1 op, one behaviour per test: hello (protocol check, token), connect,
//! connect_pg (right/wrong password, unknown, dynamic), prepare, query, execute, pipeline, batch,
//! begin/commit/rollback, ping, close, and `timeout_ms`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{TestDaemon, TestDb};

const USERS: &str = "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
     INSERT INTO users VALUES (1, 'ada'), (2, 'grace'), (3, 'linus'), (4, 'barbara');";

/// A database with the `users` table and a daemon serving it.
async fn users_db() -> (TestDb, TestDaemon) {
    let db = TestDb::new().await;
    db.setup(USERS).await;
    let daemon = db.daemon().await;
    (db, daemon)
}

fn col(name: &str, ty: &str) -> Value {
    json!({"name": name, "type": ty})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_answers_protocol_server_and_session() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.client().await;
    let r = c
        .call_ok(json!({"op": "hello", "protocol": 1, "client": "ops-test"}))
        .await;
    assert_eq!(r["protocol"], json!(1));
    let server = r["server"].as_str().expect("server is a string");
    assert!(
        server.starts_with("qail-daemon "),
        "server should name the daemon and its version: {server}"
    );
    assert!(r["session"].is_string(), "session is a string: {r}");

    let other = daemon
        .client()
        .await
        .call_ok(json!({"op": "hello", "protocol": 1}))
        .await;
    assert_ne!(
        r["session"], other["session"],
        "two connections must get different session ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_another_protocol_is_refused_and_the_connection_stays() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.client().await;
    let e = c
        .expect_error(
            json!({"op": "hello", "protocol": 2}),
            "unsupported_protocol",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains('1'), "{e}");
    c.call_ok(json!({"op": "ping"})).await;
    c.call_ok(json!({"op": "hello", "protocol": 1})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_before_anything_but_hello_and_ping() {
    let db = TestDb::new().await;
    let daemon = db
        .daemon_with(|cfg| cfg.ipc.token = Some(qail_daemon::config::Secret::new("t0ken")))
        .await;
    let mut c = daemon.client().await;
    c.call_ok(json!({"op": "ping"})).await;
    c.expect_error(json!({"op": "connect", "upstream": "main"}), "auth_failed")
        .await;
    c.expect_error(json!({"op": "query", "sql": "SELECT 1"}), "auth_failed")
        .await;
    c.expect_error(json!({"op": "hello", "protocol": 1}), "auth_failed")
        .await;
    c.expect_error(
        json!({"op": "hello", "protocol": 1, "token": "wrong"}),
        "auth_failed",
    )
    .await;
    c.expect_error(json!({"op": "connect", "upstream": "main"}), "auth_failed")
        .await;
    c.call_ok(json!({"op": "hello", "protocol": 1, "token": "t0ken"}))
        .await;
    c.connect_to("main").await;
    assert_eq!(c.scalar("SELECT 41 + 1", json!([])).await, json!(42));

    // The token is per connection: a new connection starts unauthenticated.
    let mut other = daemon.client().await;
    other
        .expect_error(json!({"op": "connect", "upstream": "main"}), "auth_failed")
        .await;
    // close needs no token.
    other.call_ok(json!({"op": "close"})).await;
    other.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_selects_a_configured_upstream_and_names_the_others_when_unknown() {
    let (db, daemon) = users_db().await;
    let mut c = daemon.client().await;
    c.expect_error(json!({"op": "query", "sql": "SELECT 1"}), "not_connected")
        .await;
    let e = c
        .expect_error(
            json!({"op": "connect", "upstream": "mian"}),
            "unknown_upstream",
        )
        .await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("mian") && message.contains("main"),
        "the message names the bad and the configured upstreams: {message}"
    );
    c.connect_to("main").await;
    assert_eq!(
        c.scalar("SELECT current_database()", json!([])).await,
        json!(db.name)
    );
}

pub(crate) fn connect_pg(host: &str, db: &TestDb, password: &str) -> Value {
    json!({
        "op": "connect_pg",
        "host": host,
        "port": db.cluster.port(),
        "user": crate::support::pg::PG_USER,
        "database": db.name,
        "password": password,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_pg_with_the_right_password_selects_the_configured_upstream() {
    let (db, daemon) = users_db().await;
    for host in ["localhost", "127.0.0.1"] {
        let mut c = daemon.client().await;
        let r = c
            .call_ok(connect_pg(host, &db, crate::support::pg::PG_PASSWORD))
            .await;
        assert_eq!(r["upstream"], json!("main"), "host {host}: {r}");
        assert_eq!(
            c.scalar("SELECT count(*) FROM users", json!([])).await,
            json!(4)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_pg_with_a_wrong_password_fails_and_leaves_the_client_unconnected() {
    let (db, daemon) = users_db().await;
    let mut c = daemon.client().await;
    c.expect_error(
        connect_pg("127.0.0.1", &db, "not-the-password"),
        "auth_failed",
    )
    .await;
    c.expect_error(json!({"op": "query", "sql": "SELECT 1"}), "not_connected")
        .await;
    c.expect_error(connect_pg("127.0.0.1", &db, ""), "auth_failed")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_pg_without_a_match_is_unknown_upstream_when_dynamic_upstreams_are_off() {
    let (db, daemon) = users_db().await;
    let other = TestDb::new().await;
    let mut c = daemon.client().await;
    c.expect_error(
        connect_pg("127.0.0.1", &other, crate::support::pg::PG_PASSWORD),
        "unknown_upstream",
    )
    .await;
    let mut wrong_port = connect_pg("127.0.0.1", &db, crate::support::pg::PG_PASSWORD);
    wrong_port["port"] = json!(1);
    c.expect_error(wrong_port, "unknown_upstream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_pg_starts_a_dynamic_upstream_when_allowed() {
    let db = TestDb::new().await;
    let other = TestDb::new().await;
    other
        .setup("CREATE TABLE only_here (x int); INSERT INTO only_here VALUES (7);")
        .await;
    let daemon = db
        .daemon_with(|cfg| cfg.allow_dynamic_upstreams = true)
        .await;

    let mut c = daemon.client().await;
    c.expect_error(connect_pg("127.0.0.1", &other, "wrong"), "auth_failed")
        .await;
    let r = c
        .call_ok(connect_pg(
            "127.0.0.1",
            &other,
            crate::support::pg::PG_PASSWORD,
        ))
        .await;
    let name = r["upstream"].as_str().expect("upstream name").to_string();
    assert!(
        name.starts_with("dyn:") && name.ends_with(&format!("/{}", other.name)),
        "dynamic upstream name is dyn:user@host:port/database: {name}"
    );
    assert_eq!(
        c.scalar("SELECT x FROM only_here", json!([])).await,
        json!(7)
    );

    // A second client reaches the same dynamic upstream by name.
    let mut second = daemon.client().await;
    second.connect_to(&name).await;
    assert_eq!(
        second.scalar("SELECT current_database()", json!([])).await,
        json!(other.name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_describes_parameters_and_columns() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.connected().await;
    let r = c
        .call_ok(json!({"op": "prepare", "sql": "SELECT id, name FROM users LIMIT $1"}))
        .await;
    assert!(
        r["handle"].as_str().is_some_and(|h| !h.is_empty()),
        "handle is a non-empty string: {r}"
    );
    assert_eq!(r["params"], json!(["int8"]));
    assert_eq!(
        r["columns"],
        json!([col("id", "int4"), col("name", "text")])
    );

    let r = c
        .call_ok(json!({"op": "prepare", "sql": "UPDATE users SET name = $2 WHERE id = $1"}))
        .await;
    assert_eq!(r["params"], json!(["int4", "text"]));
    assert_eq!(r["columns"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_by_sql_and_by_handle_return_the_same_rows() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.connected().await;
    let sql = "SELECT id, name FROM users ORDER BY id LIMIT $1";
    let expected_rows = json!([[1, "ada"], [2, "grace"]]);

    let by_sql = c.query(sql, json!(["2"])).await;
    assert_eq!(by_sql["rows"], expected_rows);
    assert_eq!(
        by_sql["columns"],
        json!([col("id", "int4"), col("name", "text")])
    );
    assert_eq!(by_sql["command"], json!("SELECT 2"));
    assert_eq!(by_sql["rows_affected"], json!(2));

    let handle = c.prepare(sql).await;
    let by_handle = c
        .call_ok(json!({"op": "query", "handle": handle, "params": [2]}))
        .await;
    assert_eq!(by_handle["rows"], expected_rows);
    assert_eq!(by_handle["columns"], by_sql["columns"]);
    assert_eq!(by_handle["command"], json!("SELECT 2"));

    let none = c
        .call_ok(json!({"op": "query", "handle": handle, "params": ["0"]}))
        .await;
    assert_eq!(none["rows"], json!([]));
    assert_eq!(none["command"], json!("SELECT 0"));

    // params may be left out when the statement has none.
    let r = c
        .call_ok(json!({"op": "query", "sql": "SELECT count(*) AS n FROM users"}))
        .await;
    assert_eq!(r["rows"], json!([[4]]));
    assert_eq!(r["columns"], json!([col("n", "int8")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_returning_rows_from_a_write_reports_its_command() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.connected().await;
    let r = c
        .query(
            "INSERT INTO users VALUES ($1, $2) RETURNING id, upper(name) AS shout",
            json!([5, "edsger"]),
        )
        .await;
    assert_eq!(r["rows"], json!([[5, "EDSGER"]]));
    assert_eq!(r["command"], json!("INSERT 0 1"));
    assert_eq!(r["rows_affected"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_reports_rows_affected_and_the_command_tag() {
    let (db, daemon) = users_db().await;
    let mut c = daemon.connected().await;

    let r = c
        .execute(
            "UPDATE users SET name = $1 WHERE id = $2",
            json!(["ada l.", 1]),
        )
        .await;
    assert_eq!(r["rows_affected"], json!(1));
    assert_eq!(r["command"], json!("UPDATE 1"));
    assert!(r.get("rows").is_none(), "execute returns no rows: {r}");

    let r = c
        .execute("INSERT INTO users VALUES ($1, $2)", json!(["10", "ken"]))
        .await;
    assert_eq!(r["command"], json!("INSERT 0 1"));
    assert_eq!(r["rows_affected"], json!(1));

    let r = c
        .execute("DELETE FROM users WHERE id > $1", json!([2]))
        .await;
    assert_eq!(r["command"], json!("DELETE 3"));
    assert_eq!(r["rows_affected"], json!(3));

    let r = c.execute("CREATE TABLE made_here (x int)", json!([])).await;
    assert_eq!(r["command"], json!("CREATE TABLE"));
    assert_eq!(r["rows_affected"], json!(0));

    let handle = c.prepare("UPDATE users SET name = upper(name)").await;
    let r = c.call_ok(json!({"op": "execute", "handle": handle})).await;
    assert_eq!(r["command"], json!("UPDATE 2"));

    assert_eq!(
        db.count("SELECT count(*) FROM users WHERE name = 'ADA L.'", &[])
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_returns_one_result_per_parameter_list_in_order() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.connected().await;
    let handle = c
        .prepare("SELECT id, name FROM users ORDER BY id LIMIT $1")
        .await;
    let r = c
        .call_ok(
            json!({"op": "pipeline", "handle": handle, "params_batch": [["1"], ["3"], [0], [2]]}),
        )
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["rows"], json!([[1, "ada"]]));
    assert_eq!(results[0]["command"], json!("SELECT 1"));
    assert_eq!(
        results[1]["rows"],
        json!([[1, "ada"], [2, "grace"], [3, "linus"]])
    );
    assert_eq!(results[2]["rows"], json!([]));
    assert_eq!(results[3]["command"], json!("SELECT 2"));
    for result in results {
        assert_eq!(
            result["columns"],
            json!([col("id", "int4"), col("name", "text")])
        );
    }

    // By SQL, and many enough to spread over several pooled connections.
    let batch: Vec<Value> = (0..500).map(|i| json!([i])).collect();
    let r = c
        .call_ok(
            json!({"op": "pipeline", "sql": "SELECT $1::int * 2 AS twice", "params_batch": batch}),
        )
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 500);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["rows"], json!([[i * 2]]), "result {i}");
    }
}

/// The `results` of a plain pipeline answer rebuilt from a `column_major` one: the columns'
/// values zipped into rows and cut into statements by `counts`.
pub(crate) fn rows_from_column_major(answer: &Value) -> Vec<Value> {
    let values = answer["values"].as_array().expect("values");
    let counts = answer["counts"].as_array().expect("counts");
    let mut next = 0;
    counts
        .iter()
        .map(|n| {
            let n = n.as_u64().expect("a count") as usize;
            let rows: Vec<Value> = (next..next + n)
                .map(|r| Value::Array(values.iter().map(|col| col[r].clone()).collect()))
                .collect();
            next += n;
            Value::Array(rows)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_column_major_answers_carry_the_same_rows_as_per_statement_answers() {
    let (db, daemon) = users_db().await;
    db.setup("CREATE TABLE w (id int PRIMARY KEY, doc jsonb)")
        .await;
    let mut c = daemon.connected().await;
    // Read-only (grouped) statements with NULLs, JSON, arrays, text and no rows at all; a
    // SELECT without columns; and writes (run one by one) with and without RETURNING.
    let read = "SELECT id, name, CASE WHEN id % 2 = 0 THEN NULL ELSE id * 10 END AS maybe, \
                json_build_object('k', name) AS doc, ARRAY[id, -id] AS pair \
                FROM users ORDER BY id LIMIT $1";
    let read_batch: Vec<Value> = (0..600).map(|i| json!([i % 4])).collect();
    // Each case: the SQL, its batch, and what undoes its writes so that it runs twice alike.
    let cases = [
        (read, read_batch, None),
        (
            "SELECT FROM generate_series(1, $1::int)",
            vec![json!([2]), json!([0]), json!([3])],
            None,
        ),
        (
            "INSERT INTO w VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id, doc",
            vec![
                json!([1, "{\"a\": [1, null]}"]),
                json!([1, "{}"]),
                json!([2, null]),
            ],
            Some("DELETE FROM w"),
        ),
        (
            "DELETE FROM w WHERE id = $1",
            vec![json!([1]), json!([7])],
            Some("INSERT INTO w VALUES (1, '{}')"),
        ),
    ];
    for (sql, batch, undo) in cases {
        let plain = c
            .call_ok(json!({"op": "pipeline", "sql": sql, "params_batch": batch}))
            .await;
        let results = plain["results"].as_array().expect("results");
        if let Some(undo) = undo {
            db.setup(undo).await;
        }
        let turned = c
            .call_ok(
                json!({"op": "pipeline", "sql": sql, "params_batch": batch, "column_major": true}),
            )
            .await;
        assert!(turned.get("results").is_none(), "{turned}");
        assert_eq!(turned["columns"], results[0]["columns"], "{sql}");
        let columns = results[0]["columns"].as_array().expect("columns").len();
        assert_eq!(
            turned["values"].as_array().map(Vec::len),
            Some(columns),
            "one list per column: {sql}"
        );
        let rows: Vec<Value> = results.iter().map(|r| r["rows"].clone()).collect();
        assert_eq!(rows_from_column_major(&turned), rows, "{sql}");
        let commands: Vec<Value> = results.iter().map(|r| r["command"].clone()).collect();
        assert_eq!(turned["commands"], Value::Array(commands), "{sql}");
        let affected: Vec<Value> = results.iter().map(|r| r["rows_affected"].clone()).collect();
        assert_eq!(turned["rows_affected"], Value::Array(affected), "{sql}");
    }
    // A failure answers like any pipeline's: the first failure's index and the counts.
    let failed = c
        .call(json!({"op": "pipeline", "sql": "SELECT 10 / $1::int", "params_batch": [[1], [0], [2]], "column_major": true}))
        .await;
    assert_eq!(failed["ok"], json!(false), "{failed}");
    assert_eq!(failed["error"]["code"], json!("22012"));
    assert_eq!(failed["error"]["index"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_count_only_is_the_seeds_prepared_pipeline() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.connected().await;
    let handle = c.prepare("SELECT id, name FROM users LIMIT $1").await;
    let batch: Vec<Value> = (0..3333)
        .flat_map(|_| [json!(["10"]), json!(["5"]), json!(["1"])])
        .collect();
    let started = Instant::now();
    let r = c
        .call_ok(
            json!({"op": "pipeline", "handle": handle, "params_batch": batch, "count_only": true}),
        )
        .await;
    assert_eq!(r["count"], json!(9999));
    assert!(
        r.get("results").is_none(),
        "count_only sends no results: {r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "9999 pipelined statements took {:?}",
        started.elapsed()
    );

    let r = c
        .call_ok(
            json!({"op": "pipeline", "handle": handle, "params_batch": [], "count_only": true}),
        )
        .await;
    assert_eq!(r["count"], json!(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_failure_reports_index_succeeded_and_failed() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY)").await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let insert = "INSERT INTO t VALUES ($1)";

    // Not atomic: the others run.
    let e = c
        .call_err(json!({"op": "pipeline", "sql": insert, "params_batch": [[1], [2], [1], [3]]}))
        .await;
    assert_eq!(e["code"], json!("23505"), "{e}");
    assert_eq!(e["index"], json!(2), "{e}");
    assert_eq!(e["succeeded"], json!(3), "{e}");
    assert_eq!(e["failed"], json!(1), "{e}");
    assert_eq!(db.count("SELECT count(*) FROM t", &[]).await, 3);

    // Atomic: nothing stays.
    let e = c
        .call_err(json!({"op": "pipeline", "sql": insert, "atomic": true, "params_batch": [[10], [11], [10], [12]]}))
        .await;
    assert_eq!(e["code"], json!("23505"), "{e}");
    assert_eq!(e["index"], json!(2), "{e}");
    assert_eq!(
        db.count("SELECT count(*) FROM t WHERE id >= 10", &[]).await,
        0
    );

    // Atomic and successful: all stay, on one connection.
    let r = c
        .call_ok(json!({"op": "pipeline", "sql": insert, "atomic": true, "params_batch": [[20], [21]], "count_only": true}))
        .await;
    assert_eq!(r["count"], json!(2));
    assert_eq!(
        db.count("SELECT count(*) FROM t WHERE id >= 20", &[]).await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_runs_different_statements_in_order() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.connected().await;
    let handle = c.prepare("SELECT name FROM users WHERE id = $1").await;
    let r = c
        .call_ok(json!({"op": "batch", "statements": [
            {"sql": "INSERT INTO users VALUES ($1, $2)", "params": [5, "edsger"]},
            {"sql": "SELECT count(*) FROM users"},
            {"handle": handle, "params": ["5"]},
            {"sql": "UPDATE users SET name = 'x' WHERE id > 3"},
        ]}))
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["command"], json!("INSERT 0 1"));
    assert_eq!(results[0]["rows"], json!([]));
    assert_eq!(results[1]["rows"], json!([[5]]));
    assert_eq!(results[1]["columns"], json!([col("count", "int8")]));
    assert_eq!(results[2]["rows"], json!([["edsger"]]));
    assert_eq!(results[3]["command"], json!("UPDATE 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_failure_in_the_middle_atomic_and_not() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY)").await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let statements = |a: i32, b: i32| {
        json!([
            {"sql": "INSERT INTO t VALUES ($1)", "params": [a]},
            {"sql": "INSERT INTO t VALUES ($1)", "params": [a]},
            {"sql": "INSERT INTO t VALUES ($1)", "params": [b]},
        ])
    };

    let e = c
        .call_err(json!({"op": "batch", "statements": statements(1, 2)}))
        .await;
    assert_eq!(e["code"], json!("23505"), "{e}");
    assert_eq!(e["index"], json!(1), "{e}");
    assert_eq!(e["succeeded"], json!(2), "{e}");
    assert_eq!(e["failed"], json!(1), "{e}");
    assert_eq!(
        db.count("SELECT count(*) FROM t", &[]).await,
        2,
        "without atomic the statements around the failure ran"
    );

    let e = c
        .call_err(json!({"op": "batch", "atomic": true, "statements": statements(10, 11)}))
        .await;
    assert_eq!(e["code"], json!("23505"), "{e}");
    assert_eq!(e["index"], json!(1), "{e}");
    assert_eq!(
        db.count("SELECT count(*) FROM t WHERE id >= 10", &[]).await,
        0,
        "an atomic batch that fails leaves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_commit_and_rollback() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY)").await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;

    let r = c.call_ok(json!({"op": "begin"})).await;
    assert_eq!(r["command"], json!("BEGIN"));
    c.execute("INSERT INTO t VALUES (1)", json!([])).await;
    assert_eq!(
        db.count("SELECT count(*) FROM t", &[]).await,
        0,
        "uncommitted rows are invisible to others"
    );
    let r = c.call_ok(json!({"op": "rollback"})).await;
    assert_eq!(r["command"], json!("ROLLBACK"));
    assert_eq!(db.count("SELECT count(*) FROM t", &[]).await, 0);

    c.call_ok(json!({"op": "begin"})).await;
    let pid1 = c.scalar("SELECT pg_backend_pid()", json!([])).await;
    c.execute("INSERT INTO t VALUES (2)", json!([])).await;
    c.call_ok(
        json!({"op": "pipeline", "sql": "INSERT INTO t VALUES ($1)", "params_batch": [[3], [4]]}),
    )
    .await;
    c.call_ok(json!({"op": "batch", "statements": [{"sql": "INSERT INTO t VALUES (5)"}]}))
        .await;
    let pid2 = c.scalar("SELECT pg_backend_pid()", json!([])).await;
    assert_eq!(pid1, pid2, "a transaction pins one PostgreSQL connection");
    let r = c.call_ok(json!({"op": "commit"})).await;
    assert_eq!(r["command"], json!("COMMIT"));
    assert_eq!(db.count("SELECT count(*) FROM t", &[]).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_with_isolation_and_read_only() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int)").await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    for level in ["read committed", "repeatable read", "serializable"] {
        c.call_ok(json!({"op": "begin", "isolation": level})).await;
        assert_eq!(
            c.scalar("SHOW transaction_isolation", json!([])).await,
            json!(level)
        );
        c.call_ok(json!({"op": "commit"})).await;
    }

    c.call_ok(json!({"op": "begin", "isolation": "serializable", "read_only": true}))
        .await;
    assert_eq!(
        c.scalar("SHOW transaction_read_only", json!([])).await,
        json!("on")
    );
    c.expect_error(
        json!({"op": "execute", "sql": "INSERT INTO t VALUES (1)"}),
        "25006",
    )
    .await;
    c.call_ok(json!({"op": "rollback"})).await;

    c.expect_error(
        json!({"op": "begin", "isolation": "chaotic"}),
        "bad_request",
    )
    .await;
    // A refused begin does not leave a transaction behind.
    c.expect_error(json!({"op": "commit"}), "transaction_state")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_ops_out_of_place_are_transaction_state_errors() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.connected().await;
    c.expect_error(json!({"op": "commit"}), "transaction_state")
        .await;
    c.expect_error(json!({"op": "rollback"}), "transaction_state")
        .await;
    c.call_ok(json!({"op": "begin"})).await;
    c.expect_error(json!({"op": "begin"}), "transaction_state")
        .await;
    // Still inside the first transaction.
    c.call_ok(json!({"op": "rollback"})).await;
    c.expect_error(json!({"op": "rollback"}), "transaction_state")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_an_error_is_transaction_aborted_and_rolls_back() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY)").await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    c.call_ok(json!({"op": "begin"})).await;
    c.execute("INSERT INTO t VALUES (1)", json!([])).await;
    c.expect_error(
        json!({"op": "execute", "sql": "INSERT INTO t VALUES (1)"}),
        "23505",
    )
    .await;
    c.expect_error(json!({"op": "query", "sql": "SELECT 1"}), "25P02")
        .await;
    c.expect_error(json!({"op": "commit"}), "transaction_aborted")
        .await;
    assert_eq!(db.count("SELECT count(*) FROM t", &[]).await, 0);
    // The session is out of the transaction and usable.
    assert_eq!(c.scalar("SELECT 1", json!([])).await, json!(1));
    c.call_ok(json!({"op": "begin"})).await;
    c.call_ok(json!({"op": "rollback"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_work_inside_a_transaction() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY)").await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    c.call_ok(json!({"op": "begin"})).await;
    c.execute("INSERT INTO t VALUES (1)", json!([])).await;
    c.execute("SAVEPOINT before_dup", json!([])).await;
    c.expect_error(
        json!({"op": "execute", "sql": "INSERT INTO t VALUES (1)"}),
        "23505",
    )
    .await;
    c.execute("ROLLBACK TO SAVEPOINT before_dup", json!([]))
        .await;
    c.execute("INSERT INTO t VALUES (2)", json!([])).await;
    c.execute("RELEASE SAVEPOINT before_dup", json!([])).await;
    c.call_ok(json!({"op": "commit"})).await;
    assert_eq!(db.count("SELECT count(*) FROM t", &[]).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_close() {
    let (_db, daemon) = users_db().await;
    let mut c = daemon.client().await;
    let r = c.call_ok(json!({"op": "ping", "id": 77})).await;
    assert_eq!(r["id"], json!(77));
    c.connect_main().await;
    c.call_ok(json!({"op": "ping"})).await;
    c.call_ok(json!({"op": "close"})).await;
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ms_cancels_the_statement_inside_postgresql() {
    let (db, daemon) = users_db().await;
    let mut c = daemon.connected().await;
    let started = Instant::now();
    let e = c
        .expect_error(
            json!({"op": "query", "sql": "SELECT pg_sleep(30) AS slept_for_the_timeout_test", "timeout_ms": 300}),
            "timeout",
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout answer came after {:?}: {e}",
        started.elapsed()
    );
    wait_until_not_running(&db, "slept_for_the_timeout_test").await;

    // The client and the pool are fine afterwards.
    assert_eq!(c.scalar("SELECT 2", json!([])).await, json!(2));
    // A timeout long enough does not fire.
    let r = c
        .call_ok(json!({"op": "query", "sql": "SELECT 3 AS x", "timeout_ms": 5000}))
        .await;
    assert_eq!(r["rows"], json!([[3]]));

    // Inside a transaction, too: the statement is cancelled in PostgreSQL.
    c.call_ok(json!({"op": "begin"})).await;
    c.expect_error(
        json!({"op": "execute", "sql": "SELECT pg_sleep(30) AS slept_in_tx", "timeout_ms": 200}),
        "timeout",
    )
    .await;
    wait_until_not_running(&db, "slept_in_tx").await;
    let end = c.call(json!({"op": "rollback"})).await;
    assert_eq!(end["ok"], json!(true), "rollback after a timeout: {end}");
}

/// Waits (at most 5 s) until no backend runs a query containing `marker`.
pub async fn wait_until_not_running(db: &TestDb, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let running = db
            .count(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                &[&marker],
            )
            .await;
        if running == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a statement containing {marker} still runs in PostgreSQL: it was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_cluster_refuses_wrong_passwords() {
    // Guards the premise of the connect_pg tests: the cluster rejects a wrong password.
    let db = TestDb::new().await;
    let mut config = db.cluster.pg_config(&db.name);
    config.password("wrong");
    let refused = config.connect(tokio_postgres::NoTls).await;
    let code = refused
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
    assert_eq!(
        code.as_deref(),
        Some("28P01"),
        "PostgreSQL must refuse a wrong password (invalid_password)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_default_statement_timeout_applies_without_timeout_ms() {
    let db = TestDb::new().await;
    let daemon = db
        .daemon_with(|cfg| cfg.limits.statement_timeout_ms = 300)
        .await;
    let mut c = daemon.connected().await;
    let started = Instant::now();
    c.expect_error(
        json!({"op": "query", "sql": "SELECT pg_sleep(30) AS slept_for_the_default_timeout"}),
        "timeout",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_until_not_running(&db, "slept_for_the_default_timeout").await;
    // A request's own timeout_ms wins over the default; 0 means no limit for this request.
    for own in [5000, 0] {
        let request =
            json!({"op": "query", "sql": "SELECT 1 AS x FROM pg_sleep(0.5)", "timeout_ms": own});
        let r = c.call_ok(request).await;
        assert_eq!(r["rows"], json!([[1]]), "timeout_ms {own}");
    }
}
