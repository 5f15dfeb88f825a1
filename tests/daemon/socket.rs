//! The Unix socket itself: created with its directory and mode, stale files replaced, a live
//! daemon never displaced, and graceful shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use serde_json::json;

use crate::support::{base_config, temp_dir, TestDaemon, TestDb};

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_directory_is_created_and_the_mode_defaults_to_0660() {
    let db = TestDb::new().await;
    let dir = temp_dir();
    let socket = dir.path().join("nested/run/qail.sock");
    let cfg = base_config(db.cluster, &db.name, &socket);
    assert_eq!(cfg.ipc.socket_mode.0, 0o660, "premise: the default mode");
    let daemon = TestDaemon::start_config(cfg, dir).await;
    assert_eq!(daemon.socket_path(), socket.as_path());
    let meta = std::fs::metadata(&socket).expect("the socket exists");
    assert!(
        meta.file_type().is_socket(),
        "{} is a socket",
        socket.display()
    );
    assert_eq!(mode_of(&socket), 0o660);
    let mut c = daemon.connected().await;
    assert_eq!(c.scalar("SELECT 1", json!([])).await, json!(1));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_is_configurable() {
    let db = TestDb::new().await;
    let daemon = db
        .daemon_with(|cfg| cfg.ipc.socket_mode = qail_daemon::config::SocketMode(0o600))
        .await;
    assert_eq!(mode_of(daemon.socket_path()), 0o600);
    daemon
        .connected()
        .await
        .call_ok(json!({"op": "ping"}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_file_at_the_socket_path_is_left_alone_with_a_clear_error() {
    // Only a *socket* nobody listens on is stale; a regular file may be anything (a typo in
    // `[ipc] socket` must not delete data), so the daemon refuses to start and says why.
    let db = TestDb::new().await;
    let dir = temp_dir();
    let socket = dir.path().join("qail.sock");
    std::fs::write(&socket, "not a socket").expect("write the plain file");
    let cfg = base_config(db.cluster, &db.name, &socket);
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        qail_daemon::app::Daemon::bind(cfg),
    )
    .await
    .expect("bind timed out");
    let message = match result {
        Ok(_) => panic!("the daemon replaced a regular file at its socket path"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains(&socket.display().to_string()) && message.contains("not a socket"),
        "the error names the path and the reason: {message}"
    );
    assert_eq!(
        std::fs::read_to_string(&socket).expect("the file is still there"),
        "not a socket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_socket_left_by_a_crashed_daemon_is_replaced() {
    let db = TestDb::new().await;
    let dir = temp_dir();
    let socket = dir.path().join("qail.sock");
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind the dead socket"));
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    let cfg = base_config(db.cluster, &db.name, &socket);
    let daemon = TestDaemon::start_config(cfg, dir).await;
    let mut c = daemon.connected().await;
    assert_eq!(c.scalar("SELECT 'alive'", json!([])).await, json!("alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_live_socket_fails_with_a_clear_error() {
    let db = TestDb::new().await;
    let first = db.daemon().await;
    let cfg = base_config(db.cluster, &db.name, first.socket_path());
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        qail_daemon::app::Daemon::bind(cfg),
    )
    .await
    .expect("the second bind timed out");
    let message = match result {
        Ok(_) => panic!("a second daemon must not bind a live socket"),
        Err(e) => e.to_string(),
    };
    let expected = format!(
        "another qail-daemon is already listening on {}",
        first.socket_path().display()
    );
    assert!(message.contains(&expected), "got: {message}");
    // The first daemon is untouched.
    let mut c = first.connected().await;
    assert_eq!(c.scalar("SELECT 1", json!([])).await, json!(1));
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_rolls_back_open_transactions_and_run_returns_ok() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int)").await;
    let daemon = db
        .daemon_with(|cfg| cfg.limits.shutdown_grace_ms = 1000)
        .await;
    let mut c = daemon.connected().await;
    c.call_ok(json!({"op": "begin"})).await;
    c.execute("INSERT INTO t VALUES (1)", json!([])).await;
    let socket = daemon.socket_path().to_path_buf();
    daemon.shutdown().await;
    assert_eq!(db.count("SELECT count(*) FROM t", &[]).await, 0);
    // The client learns that the daemon is gone: a shutting_down answer or a closed socket.
    if c.try_send(&json!({"id": 99, "op": "ping"})).await.is_ok() {
        if let Some(r) = c.try_recv().await {
            assert_eq!(r["error"]["code"], json!("shutting_down"), "{r}");
        }
    }
    assert!(
        tokio::net::UnixStream::connect(&socket).await.is_err(),
        "nobody accepts on the socket after shutdown"
    );
}
