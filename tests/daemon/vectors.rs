//! Runs the shared protocol test vectors (`docs/protocol-vectors/*.json`, format in the "Test
//! vectors" section of `docs/protocol.md`) against the real daemon, each file in a fresh
//! database. The Python and Go clients run the same files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::support::pg::{PG_PASSWORD, PG_USER};
use crate::support::{RawClient, TestDaemon, TestDb};

fn vector_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/protocol-vectors")
}

fn vector_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(vector_dir())
        .expect("docs/protocol-vectors exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Values remembered by `$capture:NAME`, plus the ones every runner predefines.
struct Captures(HashMap<String, Value>);

impl Captures {
    fn predefined(db: &TestDb) -> Captures {
        let mut known = HashMap::new();
        known.insert("pg_host".into(), json!("127.0.0.1"));
        known.insert("pg_port".into(), json!(db.cluster.port()));
        known.insert("pg_user".into(), json!(PG_USER));
        known.insert("pg_database".into(), json!(db.name));
        known.insert("pg_password".into(), json!(PG_PASSWORD));
        Captures(known)
    }

    /// `send` with every `"$ref:NAME"` string replaced by the remembered value.
    fn resolve(&self, value: &Value, at: &str) -> Value {
        match value {
            Value::String(s) => match s.strip_prefix("$ref:") {
                Some(name) => self
                    .0
                    .get(name)
                    .unwrap_or_else(|| panic!("{at}: $ref:{name} was never captured"))
                    .clone(),
                None => value.clone(),
            },
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.resolve(v, at)).collect())
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.resolve(v, at)))
                    .collect::<Map<_, _>>(),
            ),
            _ => value.clone(),
        }
    }
}

/// Checks `actual` against `expected` by the documented matching rules; on a mismatch returns
/// the JSON path and what differs.
fn matches(
    expected: &Value,
    actual: &Value,
    path: &str,
    captures: &mut Captures,
) -> Result<(), String> {
    if let Value::String(s) = expected {
        let by_type = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{path}: expected {what}, got {actual}"))
            }
        };
        match s.as_str() {
            "$any" => return Ok(()),
            "$string" => return by_type(actual.is_string(), "a string"),
            "$integer" => return by_type(actual.is_i64() || actual.is_u64(), "an integer"),
            "$number" => return by_type(actual.is_number(), "a number"),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("$capture:") {
            captures.0.insert(name.to_string(), actual.clone());
            return Ok(());
        }
    }
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, want_value) in want {
                let got_value = got
                    .get(key)
                    .ok_or_else(|| format!("{path}: missing key {key:?} in {actual}"))?;
                matches(want_value, got_value, &format!("{path}.{key}"), captures)?;
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(got)) => {
            if want.len() != got.len() {
                return Err(format!(
                    "{path}: expected {} items, got {}: {actual}",
                    want.len(),
                    got.len()
                ));
            }
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                matches(w, g, &format!("{path}[{i}]"), captures)?;
            }
            Ok(())
        }
        _ if expected == actual => Ok(()),
        _ => Err(format!("{path}: expected {expected}, got {actual}")),
    }
}

fn hex_bytes(hex: &str, at: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "{at}: odd number of hex digits");
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .unwrap_or_else(|_| panic!("{at}: bad hex {:?}", &hex[i..i + 2]))
        })
        .collect()
}

/// Reads one response and checks it; `at` names the step for failure messages.
async fn expect_frame(client: &mut RawClient, expected: &Value, at: &str, captures: &mut Captures) {
    let got = client
        .try_recv()
        .await
        .unwrap_or_else(|| panic!("{at}: the daemon closed the connection, expected {expected}"));
    if let Err(why) = matches(expected, &got, "$", captures) {
        panic!("{at}: {why}\n  expected: {expected}\n  got:      {got}");
    }
}

/// Runs one vector file; panics with the file, step and mismatch on failure.
async fn run_vector_file(path: &Path) {
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let vector: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    for key in ["name", "description", "setup", "steps"] {
        assert!(vector.get(key).is_some(), "{file}: missing {key:?}");
    }

    let db = TestDb::new().await;
    let setup: Vec<&str> = vector["setup"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: setup is a list of SQL strings"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{file}: setup holds strings"))
        })
        .collect();
    if !setup.is_empty() {
        db.setup(&setup.join(";\n")).await;
    }
    let daemon: TestDaemon = db.daemon().await;
    let mut client = daemon.client().await;
    let mut captures = Captures::predefined(&db);

    let steps = vector["steps"].as_array().expect("steps is a list");
    for (n, step) in steps.iter().enumerate() {
        let at = format!("{file} step {n}");
        if let Some(request) = step.get("send") {
            client.send(&captures.resolve(request, &at)).await;
            expect_frame(&mut client, &step["expect"], &at, &mut captures).await;
        } else if let Some(hex) = step.get("send_raw_hex") {
            let hex = hex
                .as_str()
                .unwrap_or_else(|| panic!("{at}: hex is a string"));
            client.send_raw(&hex_bytes(hex, &at)).await;
            expect_frame(&mut client, &step["expect"], &at, &mut captures).await;
        } else if let Some(requests) = step.get("send_many") {
            let requests = requests.as_array().expect("send_many is a list");
            for request in requests {
                client.send(&captures.resolve(request, &at)).await;
            }
            let expected = step["expect_many"]
                .as_array()
                .expect("expect_many is a list");
            assert_eq!(
                expected.len(),
                requests.len(),
                "{at}: send_many and expect_many differ in length"
            );
            for (i, e) in expected.iter().enumerate() {
                expect_frame(&mut client, e, &format!("{at} answer {i}"), &mut captures).await;
            }
        } else {
            panic!("{at}: a step needs send, send_raw_hex or send_many: {step}");
        }
        if step.get("expect_closed") == Some(&json!(true)) {
            if let Some(extra) = client.try_recv().await {
                panic!("{at}: expected the connection to be closed, got {extra}");
            }
            assert_eq!(
                n + 1,
                steps.len(),
                "{at}: steps after expect_closed cannot run"
            );
        }
    }
    daemon.shutdown().await;
}

#[test]
fn the_matcher_follows_the_documented_rules() {
    let mut c = Captures(HashMap::new());
    let got = json!({"id": 1, "ok": true, "handle": "h1", "rows": [[1, "a"]], "extra": 5});
    let want = json!({"id": 1, "handle": "$capture:h", "rows": [["$integer", "$string"]]});
    assert_eq!(matches(&want, &got, "$", &mut c), Ok(()));
    assert_eq!(c.0["h"], json!("h1"));
    assert_eq!(
        c.resolve(&json!({"handle": "$ref:h", "n": [1]}), "t"),
        json!({"handle": "h1", "n": [1]})
    );
    assert!(
        matches(&json!({"rows": [[1]]}), &got, "$", &mut c).is_err(),
        "array length"
    );
    assert!(
        matches(&json!({"missing": 1}), &got, "$", &mut c).is_err(),
        "missing key"
    );
    assert!(
        matches(&json!({"id": "$string"}), &got, "$", &mut c).is_err(),
        "type"
    );
    assert!(
        matches(&json!({"id": 2}), &got, "$", &mut c).is_err(),
        "scalar"
    );
    assert_eq!(matches(&json!("$number"), &json!(1.5), "$", &mut c), Ok(()));
    assert_eq!(matches(&json!("$any"), &json!(null), "$", &mut c), Ok(()));
    assert!(matches(&json!("$integer"), &json!(1.5), "$", &mut c).is_err());
    assert_eq!(hex_bytes("0000000568656c6c6f", "t"), b"\0\0\0\x05hello");
}

#[test]
fn every_area_has_a_vector_file() {
    let names: Vec<String> = vector_files()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    for area in [
        "hello",
        "connect",
        "prepare_query",
        "pipeline",
        "batch",
        "transactions",
        "errors",
        "values",
    ] {
        assert!(
            names.iter().any(|n| n == area),
            "no {area}.json in {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_vectors() {
    let files = vector_files();
    assert!(!files.is_empty(), "no vector files found");
    let mut failures = Vec::new();
    for path in &files {
        // Each file runs in its own task so one failure does not hide the others.
        let path_owned = path.clone();
        let outcome = tokio::spawn(async move { run_vector_file(&path_owned).await }).await;
        if let Err(e) = outcome {
            let why = e
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_else(|| "the runner task was cancelled".into());
            failures.push(why);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vector files failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
