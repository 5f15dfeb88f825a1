//! Grouped pipelines (`pg::burst`): a pipeline of a read-only statement runs with one Sync per
//! group on a borrowed socket. Each test checks that the answers are exactly those of a Sync per
//! statement: a failure mid-group, a SELECT whose function writes, a schema change between two
//! pipelines, a timeout, a pooled connection that still serves tokio-postgres afterwards, and
//! atomic pipelines (grouped inside their own transaction).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin::AdminDaemon;
use crate::coalesce::delta;
use crate::ops::{rows_from_column_major, wait_until_not_running};
use crate::support::TestDb;

/// Enough statements for two groups on one connection (the test pool is small).
const N: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_group_reports_the_same_index_and_counts() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    // Zeros at 100 and 400: division by zero, one in each group.
    let batch: Vec<Value> = (0..N)
        .map(|i| json!([if i == 100 || i == 400 { 0 } else { i + 1 }]))
        .collect();
    let e = c
        .call_err(
            json!({"op": "pipeline", "sql": "SELECT 1000 / $1::int AS q", "params_batch": batch}),
        )
        .await;
    assert_eq!(e["code"], json!("22012"), "{e}");
    assert_eq!(e["index"], json!(100), "{e}");
    assert_eq!(e["succeeded"], json!(N - 2), "{e}");
    assert_eq!(e["failed"], json!(2), "{e}");

    // The connections are clean afterwards: the same pipeline without zeros answers in full.
    let batch: Vec<Value> = (1..=N).map(|i| json!([i])).collect();
    let r = c
        .call_ok(json!({"op": "pipeline", "sql": "SELECT 1000 / $1::int AS q", "params_batch": batch, "compact": true}))
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), N);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["rows"], json!([[1000 / (i + 1)]]), "result {i}");
        assert_eq!(result["command"], json!("SELECT 1"), "result {i}");
    }
    assert_eq!(r["columns"], json!([{"name": "q", "type": "int4"}]));

    // The same pipeline, answered column by column: one list per field.
    let batch: Vec<Value> = (1..=N).map(|i| json!([i])).collect();
    let r = c
        .call_ok(json!({"op": "pipeline", "sql": "SELECT 1000 / $1::int AS q", "params_batch": batch, "columnar": true}))
        .await;
    assert!(r.get("results").is_none(), "{r}");
    assert_eq!(r["columns"], json!([{"name": "q", "type": "int4"}]));
    let (rows, affected, commands) = (&r["rows"], &r["rows_affected"], &r["commands"]);
    assert_eq!(rows.as_array().map(Vec::len), Some(N));
    assert_eq!(affected.as_array().map(Vec::len), Some(N));
    assert_eq!(commands.as_array().map(Vec::len), Some(N));
    assert_eq!(rows[0], json!([[1000]]));
    assert_eq!(rows[N - 1], json!([[1000 / N]]));
    assert_eq!(affected[7], json!(1));
    assert_eq!(commands[7], json!("SELECT 1"));
}

/// A table `log` holding `taken`, and `remember(x)`: a function that writes, so a SELECT of it
/// fails in a read-only group and must then run exactly once on its own.
pub(crate) fn remembering_log(taken: u32) -> String {
    format!(
        "CREATE TABLE log (v int PRIMARY KEY);
         INSERT INTO log VALUES ({taken});
         CREATE FUNCTION remember(x int) RETURNS int LANGUAGE sql VOLATILE
             AS 'INSERT INTO log VALUES (x) RETURNING v';"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_whose_function_writes_runs_each_write_exactly_once() {
    let db = TestDb::new().await;
    db.setup(&remembering_log(250)).await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let batch: Vec<Value> = (0..N).map(|i| json!([i])).collect();
    // 250 is already there: that one statement fails, every other one writes once.
    let e = c
        .call_err(
            json!({"op": "pipeline", "sql": "SELECT remember($1) AS v", "params_batch": batch}),
        )
        .await;
    assert_eq!(e["code"], json!("23505"), "{e}");
    assert_eq!(e["index"], json!(250), "{e}");
    assert_eq!(e["succeeded"], json!(N - 1), "{e}");
    assert_eq!(db.count("SELECT count(*) FROM log", &[]).await, N as i64);
    assert_eq!(
        db.count("SELECT count(DISTINCT v) FROM log", &[]).await,
        N as i64
    );

    // Without a failure, the rows are the function's answers, in order.
    let batch: Vec<Value> = (N..2 * N).map(|i| json!([i])).collect();
    let r = c
        .call_ok(
            json!({"op": "pipeline", "sql": "SELECT remember($1) AS v", "params_batch": batch}),
        )
        .await;
    let results = r["results"].as_array().expect("results");
    for (k, result) in results.iter().enumerate() {
        assert_eq!(result["rows"], json!([[N + k]]), "result {k}");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM log", &[]).await,
        2 * N as i64
    );
}

/// A `column_major` answer joins rows written while they arrived (grouped statements) with rows
/// of statements that ran again on their own after a neighbour failed in their group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_major_answers_join_grouped_rows_with_rows_run_again() {
    let db = TestDb::new().await;
    db.setup(&remembering_log(0)).await;
    let daemon = AdminDaemon::for_db(&db, |_| {}).await;
    let mut c = daemon.connected().await;
    // Every 100th statement writes, so it fails in its read-only group and runs again with the
    // rest of the group; the others are grouped. Each returns `$1 % 3` rows (none for some).
    let sql = "SELECT CASE WHEN $1 % 100 = 7 AND g = 1 THEN remember($1) ELSE $1 END AS v, \
               CASE WHEN g = 2 THEN NULL ELSE 'r' || g END AS label \
               FROM generate_series(1, $1 % 3) g";
    let batch: Vec<Value> = (0..N).map(|i| json!([i])).collect();
    let expected: Vec<Value> = (0..N)
        .map(|i| {
            let rows = (1..=i % 3).map(|g| {
                json!([
                    i,
                    if g == 2 {
                        Value::Null
                    } else {
                        json!(format!("r{g}"))
                    }
                ])
            });
            Value::Array(rows.collect())
        })
        .collect();
    let before = daemon.scrape().await;
    let r = c
        .call_ok(json!({"op": "pipeline", "sql": sql, "params_batch": batch, "column_major": true}))
        .await;
    let after = daemon.scrape().await;
    assert_eq!(
        r["columns"],
        json!([{"name": "v", "type": "int4"}, {"name": "label", "type": "text"}])
    );
    assert_eq!(rows_from_column_major(&r), expected);
    let commands = r["commands"].as_array().expect("commands");
    assert_eq!(commands[7], json!("SELECT 1"));
    assert_eq!(commands[9], json!("SELECT 0"));
    let grouped = delta(&before, &after, "qail_pipeline_grouped_statements_total");
    let reruns = delta(&before, &after, "qail_pipeline_grouped_reruns_total");
    assert!(grouped >= N as f64, "grouped: {grouped}");
    assert!(reruns >= 6.0, "statements ran again: {reruns}");
    // The writes of the statements that ran again happened once each: 7, 107, …, 507 whose
    // `$1 % 3` is not 0 (one row each).
    let writes = (0..N).filter(|i| i % 100 == 7 && i % 3 != 0).count() as i64;
    assert_eq!(db.count("SELECT count(*) FROM log", &[]).await, 1 + writes);

    // A failure answers as without `column_major`: the first failure's index and the counts.
    let batch: Vec<Value> = (0..N)
        .map(|i| json!([if i == 100 || i == 400 { 0 } else { i + 1 }]))
        .collect();
    let e = c
        .call_err(json!({"op": "pipeline", "sql": "SELECT 1000 / $1::int AS q", "params_batch": batch, "column_major": true}))
        .await;
    assert_eq!(e["code"], json!("22012"), "{e}");
    assert_eq!(
        (e["index"].clone(), e["failed"].clone()),
        (json!(100), json!(2)),
        "{e}"
    );
    assert_eq!(e["succeeded"], json!(N - 2), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_between_pipelines_answers_in_the_new_shape() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int); INSERT INTO t SELECT g FROM generate_series(1, 10) g;")
        .await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let handle = c.prepare("SELECT * FROM t ORDER BY id LIMIT $1").await;
    let batch: Vec<Value> = (0..N).map(|i| json!([i % 3 + 1])).collect();
    let pipeline = json!({"op": "pipeline", "handle": handle, "params_batch": batch});
    let r = c.call_ok(pipeline.clone()).await;
    assert_eq!(r["results"][2]["rows"], json!([[1], [2], [3]]));

    db.setup("ALTER TABLE t ADD COLUMN label text DEFAULT 'x'")
        .await;
    let r = c.call_ok(pipeline.clone()).await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), N);
    assert_eq!(results[0]["rows"], json!([[1, "x"]]));
    assert_eq!(results[2]["rows"], json!([[1, "x"], [2, "x"], [3, "x"]]));
    assert_eq!(
        results[N - 1]["columns"],
        json!([{"name": "id", "type": "int4"}, {"name": "label", "type": "text"}])
    );

    // Once more after a second change, answered by column: the rows are written as they
    // arrive, in the shape PostgreSQL now gives them.
    db.setup("ALTER TABLE t ALTER COLUMN id TYPE bigint").await;
    let mut turned = pipeline;
    turned["column_major"] = json!(true);
    let r = c.call_ok(turned).await;
    assert_eq!(
        r["columns"],
        json!([{"name": "id", "type": "int8"}, {"name": "label", "type": "text"}])
    );
    let rows = rows_from_column_major(&r);
    assert_eq!(rows.len(), N);
    assert_eq!(rows[2], json!([[1, "x"], [2, "x"], [3, "x"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_cancels_a_grouped_pipeline_and_the_pool_recovers() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    // 200 × 50 ms = 10 s of work if nothing cancelled it.
    let batch: Vec<Value> = (0..200).map(|_| json!([0.05])).collect();
    let started = Instant::now();
    let e = c
        .expect_error(
            json!({"op": "pipeline", "sql": "SELECT pg_sleep($1) AS slept_in_a_grouped_pipeline", "params_batch": batch, "timeout_ms": 300}),
            "timeout",
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout answer came after {:?}: {e}",
        started.elapsed()
    );
    wait_until_not_running(&db, "slept_in_a_grouped_pipeline").await;

    // Every pooled connection still answers, grouped and one by one.
    for _ in 0..3 {
        let batch: Vec<Value> = (0..100).map(|i| json!([i])).collect();
        let r = c
            .call_ok(json!({"op": "pipeline", "sql": "SELECT $1::int + 1 AS n", "params_batch": batch, "count_only": true}))
            .await;
        assert_eq!(r["count"], json!(100));
        assert_eq!(c.scalar("SELECT 41 + 1", json!([])).await, json!(42));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_and_single_statements_share_connections_over_the_unix_socket() {
    let db = TestDb::new().await;
    let socket_dir = db.cluster.socket_dir();
    let daemon = db
        .daemon_with(|cfg| {
            cfg.upstreams[0].host = socket_dir.display().to_string();
            cfg.upstreams[0].pool_max = 1;
        })
        .await;
    let mut c = daemon.connected().await;
    // One connection: grouped pipelines, tokio-postgres queries and prepares interleave on it.
    for round in 0..5 {
        let batch: Vec<Value> = (0..300).map(|i| json!([i, round])).collect();
        let r = c
            .call_ok(json!({"op": "pipeline", "sql": "SELECT $1::int * 10 + $2::int AS v, 'r' || $2::text AS tag", "params_batch": batch}))
            .await;
        let results = r["results"].as_array().expect("results");
        assert_eq!(results.len(), 300);
        assert_eq!(
            results[299]["rows"],
            json!([[2990 + round, format!("r{round}")]])
        );
        let sql = format!("SELECT {round} AS round");
        assert_eq!(c.scalar(&sql, json!([])).await, json!(round));
    }
    let backends = db
        .count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await;
    assert_eq!(backends, 1, "the pool of one kept its one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_pipeline_is_grouped_inside_its_transaction() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int CONSTRAINT t_pkey PRIMARY KEY, note text)")
        .await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let insert = "INSERT INTO t VALUES ($1::int, 'n' || $1::int) RETURNING id";

    // All succeed: every row stays, each result is its own RETURNING row.
    let batch: Vec<Value> = (0..N).map(|i| json!([i])).collect();
    let r = c
        .call_ok(json!({"op": "pipeline", "sql": insert, "params_batch": batch, "atomic": true}))
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), N);
    assert_eq!(results[N - 1]["rows"], json!([[N - 1]]));
    assert_eq!(results[0]["command"], json!("INSERT 0 1"));
    assert_eq!(db.count("SELECT count(*) FROM t", &[]).await, N as i64);

    // A duplicate in the second group: PostgreSQL's own error with its fields, the position in
    // the batch and the counts of a Sync per statement; nothing of the batch stays.
    let batch: Vec<Value> = (N..2 * N)
        .map(|i| json!([if i == N + 300 { 7 } else { i }]))
        .collect();
    let e = c
        .call_err(json!({"op": "pipeline", "sql": insert, "params_batch": batch, "atomic": true}))
        .await;
    assert_eq!(e["code"], json!("23505"), "{e}");
    assert_eq!(e["constraint"], json!("t_pkey"), "{e}");
    assert_eq!(e["table"], json!("t"), "{e}");
    assert!(
        e["detail"].as_str().is_some_and(|d| d.contains("(id)=(7)")),
        "{e}"
    );
    assert_eq!(e["severity"], json!("ERROR"), "{e}");
    assert_eq!(e["index"], json!(300), "{e}");
    assert_eq!(e["succeeded"], json!(300), "{e}");
    assert_eq!(e["failed"], json!(N - 300), "{e}");
    assert_eq!(db.count("SELECT count(*) FROM t", &[]).await, N as i64);

    // The connection is back to normal afterwards.
    assert_eq!(
        c.scalar("SELECT count(*) FROM t", json!([])).await,
        json!(N)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_deallocated_behind_the_daemons_back_are_prepared_again() {
    let db = TestDb::new().await;
    let daemon = db.daemon_with(|cfg| cfg.upstreams[0].pool_max = 1).await;
    let mut c = daemon.connected().await;
    let batch: Vec<Value> = (0..300).map(|i| json!([i])).collect();
    let pipeline =
        json!({"op": "pipeline", "sql": "SELECT $1::int + 1 AS n", "params_batch": batch});
    for round in 0..3 {
        let r = c.call_ok(pipeline.clone()).await;
        assert_eq!(r["results"][299]["rows"], json!([[300]]), "round {round}");
        // The pool's one connection loses every prepared statement, the grouped ones included.
        c.call_ok(json!({"op": "execute", "sql": "DEALLOCATE ALL"}))
            .await;
    }
}

/// A statement the server cancels itself (`statement_timeout`) fails alone, with PostgreSQL's
/// own error, as it would without grouping; its neighbours run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_statement_timeout_fails_one_grouped_statement() {
    let db = TestDb::new().await;
    db.setup(&format!(
        "ALTER DATABASE \"{}\" SET statement_timeout = '150ms'",
        db.name
    ))
    .await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let batch: Vec<Value> = (0..100)
        .map(|i| json!([if i == 40 { 2.0 } else { 0.0 }]))
        .collect();
    let e = c
        .call_err(json!({"op": "pipeline", "sql": "SELECT pg_sleep($1::float8) IS NULL AS slept", "params_batch": batch}))
        .await;
    assert_eq!(e["code"], json!("57014"), "{e}");
    assert_eq!(e["index"], json!(40), "{e}");
    assert_eq!(e["succeeded"], json!(99), "{e}");
    assert_eq!(e["failed"], json!(1), "{e}");
}
