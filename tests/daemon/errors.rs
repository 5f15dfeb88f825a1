//! Error responses: PostgreSQL errors with their SQLSTATE and fields, every daemon code a client
//! can provoke, and the rule that only broken framing closes a connection.

use serde_json::{json, Value};

use crate::support::TestDb;

/// A frame whose body is `body` exactly.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_violation_carries_sqlstate_detail_and_constraint() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE users (id int CONSTRAINT users_pkey PRIMARY KEY, name text)")
        .await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    c.execute("INSERT INTO users VALUES (1, 'ada')", json!([]))
        .await;
    let e = c
        .expect_error(
            json!({"op": "execute", "sql": "INSERT INTO users VALUES ($1, $2)", "params": [1, "again"]}),
            "23505",
        )
        .await;
    assert_eq!(e["severity"], json!("ERROR"), "{e}");
    assert!(e["message"].as_str().unwrap().contains("users_pkey"), "{e}");
    assert_eq!(e["detail"], json!("Key (id)=(1) already exists."), "{e}");
    assert_eq!(e["constraint"], json!("users_pkey"), "{e}");
    assert_eq!(e["table"], json!("users"), "{e}");
    assert_eq!(e["schema"], json!("public"), "{e}");
    // The connection stays usable.
    assert_eq!(
        c.scalar("SELECT count(*) FROM users", json!([])).await,
        json!(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_error_and_undefined_table_carry_a_position() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let e = c
        .expect_error(json!({"op": "query", "sql": "SELEC 1"}), "42601")
        .await;
    assert_eq!(e["position"], json!(1), "{e}");
    assert!(e["message"].as_str().unwrap().contains("SELEC"), "{e}");

    let e = c
        .expect_error(json!({"op": "query", "sql": "SELECT * FROM nope"}), "42P01")
        .await;
    assert_eq!(e["position"], json!(15), "{e}");
    assert_eq!(e["message"], json!("relation \"nope\" does not exist"));

    // prepare reports the same errors.
    let e = c
        .expect_error(
            json!({"op": "prepare", "sql": "SELECT * FROM nope"}),
            "42P01",
        )
        .await;
    assert_eq!(e["position"], json!(15), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hint_is_passed_through() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let e = c
        .expect_error(
            json!({"op": "query", "sql": "SELECT no_such_function(1)"}),
            "42883",
        )
        .await;
    assert!(
        e["hint"]
            .as_str()
            .is_some_and(|h| h.contains("No function matches")),
        "{e}"
    );
    assert_eq!(e["position"], json!(8), "{e}");

    let e = c
        .expect_error(
            json!({"op": "query", "sql": "DO $$ BEGIN RAISE EXCEPTION 'custom' USING DETAIL = 'd1', HINT = 'h1', ERRCODE = 'P0042'; END $$"}),
            "P0042",
        )
        .await;
    assert_eq!(e["message"], json!("custom"));
    assert_eq!(e["detail"], json!("d1"));
    assert_eq!(e["hint"], json!("h1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_is_answered_with_a_null_id_and_the_connection_stays() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.client().await;
    for body in [
        &b"{not json"[..],
        b"[1, 2, 3]",
        b"\"a string\"",
        b"{\"id\": 1, \"op\": \"ping\"} trailing",
        b"\xff\xfe",
        b"",
    ] {
        c.send_raw(&frame(body)).await;
        let r = c.recv().await;
        assert_eq!(r["ok"], json!(false), "body {body:?}: {r}");
        assert_eq!(
            r["error"]["code"],
            json!("bad_request"),
            "body {body:?}: {r}"
        );
        assert_eq!(r["id"], Value::Null, "body {body:?}: {r}");
    }
    let r = c.call_ok(json!({"op": "ping"})).await;
    assert_eq!(r["ok"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_strict_about_their_fields() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;

    let e = c.expect_error(json!({"op": "query"}), "bad_request").await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("sql") && message.contains("handle"),
        "a missing sql/handle is named: {message}"
    );

    let e = c
        .expect_error(
            json!({"op": "query", "sql": "SELECT $1::int", "param": [1]}),
            "bad_request",
        )
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("param"),
        "the unknown field is named: {e}"
    );

    c.expect_error(json!({"op": "query", "sql": 5}), "bad_request")
        .await;
    c.expect_error(
        json!({"op": "query", "sql": "SELECT 1", "handle": "h"}),
        "bad_request",
    )
    .await;
    c.expect_error(json!({"op": "connect"}), "bad_request")
        .await;
    c.expect_error(json!({"op": "pipeline", "sql": "SELECT 1"}), "bad_request")
        .await;
    c.expect_error(
        json!({"op": "batch", "statements": [{"sql": "SELECT 1", "parms": []}]}),
        "bad_request",
    )
    .await;
    c.expect_error(
        json!({"op": "query", "sql": "SELECT 1", "timeout_ms": "soon"}),
        "bad_request",
    )
    .await;

    // No op at all, or an id that is not an integer.
    let r = c.call(json!({"id": 5})).await;
    assert_eq!(r["error"]["code"], json!("bad_request"), "{r}");
    c.send(&json!({"id": "five", "op": "ping"})).await;
    let r = c.recv().await;
    assert_eq!(r["error"]["code"], json!("bad_request"), "{r}");

    assert_eq!(
        c.scalar("SELECT 'still here'", json!([])).await,
        json!("still here")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_op_lists_the_ops() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.client().await;
    let e = c
        .expect_error(json!({"op": "selec", "sql": "SELECT 1"}), "unknown_op")
        .await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("selec") && message.contains("pipeline"),
        "names the op and lists the real ones: {message}"
    );
    c.call_ok(json!({"op": "ping"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_ops_before_connect_are_not_connected() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.client().await;
    for request in [
        json!({"op": "prepare", "sql": "SELECT 1"}),
        json!({"op": "query", "sql": "SELECT 1"}),
        json!({"op": "execute", "sql": "SELECT 1"}),
        json!({"op": "pipeline", "sql": "SELECT 1", "params_batch": [[]]}),
        json!({"op": "batch", "statements": [{"sql": "SELECT 1"}]}),
        json!({"op": "begin"}),
    ] {
        let e = c.expect_error(request, "not_connected").await;
        assert!(
            e["message"].as_str().unwrap().contains("connect"),
            "the message says what to do: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_parameters_are_bad_parameter() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let sql = "SELECT $1::int4 + $2::int4 AS sum";
    c.expect_error(
        json!({"op": "query", "sql": sql, "params": [1]}),
        "bad_parameter",
    )
    .await;
    c.expect_error(
        json!({"op": "query", "sql": sql, "params": [1, 2, 3]}),
        "bad_parameter",
    )
    .await;
    c.expect_error(json!({"op": "query", "sql": sql}), "bad_parameter")
        .await;
    let e = c
        .expect_error(
            json!({"op": "query", "sql": sql, "params": [{"a": 1}, 2]}),
            "bad_parameter",
        )
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("$1"),
        "names the parameter: {e}"
    );
    let e = c
        .expect_error(
            json!({"op": "pipeline", "sql": sql, "params_batch": [[1, 2], [3]]}),
            "bad_parameter",
        )
        .await;
    assert!(
        e.get("index").is_none() || e["index"] == json!(1),
        "index points at the bad parameter list: {e}"
    );
    // A string PostgreSQL cannot read as int4 is PostgreSQL's own error.
    c.expect_error(
        json!({"op": "query", "sql": sql, "params": ["ten", 2]}),
        "22P02",
    )
    .await;
    assert_eq!(c.query(sql, json!([40, "2"])).await["rows"], json!([[42]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_and_closes_the_connection() {
    let db = TestDb::new().await;
    let daemon = db.daemon_with(|cfg| cfg.ipc.max_frame_bytes = 4096).await;

    // Only the length is sent: the daemon must not wait for (or buffer) the body.
    let mut c = daemon.client().await;
    c.call_ok(json!({"op": "ping"})).await;
    c.send_raw(&5000u32.to_be_bytes()).await;
    let r = c.recv().await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["id"], Value::Null, "{r}");
    assert_eq!(r["error"]["code"], json!("frame_too_large"), "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("4096"),
        "the limit is named: {r}"
    );
    c.expect_closed().await;

    // A whole oversized request.
    let mut c = daemon.client().await;
    let big = json!({"id": 1, "op": "query", "sql": format!("SELECT '{}'", "x".repeat(5000))});
    c.send(&big).await;
    let r = c.recv().await;
    assert_eq!(r["error"]["code"], json!("frame_too_large"), "{r}");
    c.expect_closed().await;

    // Just under the limit works.
    let mut c = daemon.connected().await;
    let value = "y".repeat(3000);
    assert_eq!(
        c.scalar("SELECT $1::text", json!([value])).await,
        json!(value)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_frame_limit_is_16_mib() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.client().await;
    c.send_raw(&20_000_000u32.to_be_bytes()).await;
    let r = c.recv().await;
    assert_eq!(r["error"]["code"], json!("frame_too_large"), "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("16777216"),
        "{r}"
    );
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_control_sql_is_refused() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    for sql in [
        "BEGIN",
        "begin isolation level serializable",
        "  START TRANSACTION",
        "COMMIT",
        "end",
        "ROLLBACK",
        "ABORT",
        "PREPARE TRANSACTION 'x'",
        "/* sneaky */ BEGIN",
    ] {
        for op in ["query", "execute"] {
            let e = c
                .expect_error(json!({"op": op, "sql": sql}), "bad_request")
                .await;
            assert!(
                e["message"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .contains("begin"),
                "{op} {sql:?}: the message points to the ops: {e}"
            );
        }
    }
    c.expect_error(json!({"op": "prepare", "sql": "COMMIT"}), "bad_request")
        .await;
    c.expect_error(
        json!({"op": "batch", "statements": [{"sql": "SELECT 1"}, {"sql": "COMMIT"}]}),
        "bad_request",
    )
    .await;
    // The daemon still thinks (correctly) that no transaction is open.
    c.expect_error(json!({"op": "commit"}), "transaction_state")
        .await;
    // Words that merely start like transaction control are fine.
    assert_eq!(
        c.scalar("SELECT 'BEGIN' AS begin_word", json!([])).await,
        json!("BEGIN")
    );
}
