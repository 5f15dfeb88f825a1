//! `TestDb` (a fresh database on the shared cluster) and `TestDaemon` (the real daemon, bound
//! in-process on a temporary socket, serving that database as the upstream `main`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qail_daemon::config::{Config, UpstreamConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::RawClient;
use super::pg::{PgCluster, PG_PASSWORD, PG_USER};

/// How long `shutdown` waits for the daemon to exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on every statement a test runs directly on PostgreSQL.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A uniquely named database on the shared cluster, for one test.
pub struct TestDb {
    pub name: String,
    pub cluster: &'static PgCluster,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let cluster = tokio::task::spawn_blocking(PgCluster::shared)
            .await
            .expect("starting the shared PostgreSQL cluster panicked");
        let name = cluster.create_database().await;
        TestDb { name, cluster }
    }

    /// A direct connection to this database (not through the daemon).
    pub async fn admin(&self) -> tokio_postgres::Client {
        self.cluster.client(&self.name).await
    }

    /// Runs setup SQL directly on this database.
    pub async fn setup(&self, sql: &str) {
        let admin = self.admin().await;
        tokio::time::timeout(DIRECT_TIMEOUT, admin.batch_execute(sql))
            .await
            .unwrap_or_else(|_| panic!("setup SQL timed out:\n{sql}"))
            .unwrap_or_else(|e| panic!("setup SQL failed: {e}\n{sql}"));
    }

    /// Runs a one-row, one-`int8`-column query directly on this database (for checks that must
    /// not go through the daemon: row counts, pg_stat_activity, pg_locks).
    pub async fn count(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> i64 {
        let admin = self.admin().await;
        tokio::time::timeout(DIRECT_TIMEOUT, admin.query_one(sql, params))
            .await
            .unwrap_or_else(|_| panic!("direct query timed out: {sql}"))
            .unwrap_or_else(|e| panic!("direct query failed: {e}: {sql}"))
            .get(0)
    }

    /// A daemon serving this database as upstream `main`.
    pub async fn daemon(&self) -> TestDaemon {
        self.daemon_with(|_| {}).await
    }

    /// Like [`TestDb::daemon`], with the configuration adjusted by `tweak` before binding.
    pub async fn daemon_with(&self, tweak: impl FnOnce(&mut Config)) -> TestDaemon {
        let dir = temp_dir();
        let mut cfg = base_config(self.cluster, &self.name, &dir.path().join("qail.sock"));
        tweak(&mut cfg);
        TestDaemon::start_config(cfg, dir).await
    }
}

/// A temporary directory for sockets and config files.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("qail-test-")
        .tempdir()
        .expect("cannot make a temporary directory")
}

/// The configuration every test starts from: one upstream `main` on `database`, over TCP with
/// the cluster's password, a small pool, the admin server off.
pub fn base_config(cluster: &PgCluster, database: &str, socket: &Path) -> Config {
    let text = format!(
        r#"
[ipc]
socket = "{socket}"
[admin]
listen = ""
[catalog]
capacity = 4096
[[upstreams]]
name = "main"
host = "127.0.0.1"
port = {port}
user = "{user}"
database = "{database}"
password = "{password}"
pool_max = 4
pool_min_idle = 0
connect_timeout_ms = 3000
checkout_timeout_ms = 5000
health_interval_ms = 500
"#,
        socket = socket.display(),
        port = cluster.port(),
        user = PG_USER,
        password = PG_PASSWORD,
    );
    Config::from_toml_str(&text, &HashMap::new())
        .unwrap_or_else(|e| panic!("the test configuration is invalid: {e}\n{text}"))
}

/// Another upstream like `main` of `cfg`, with its own name and database.
pub fn extra_upstream(cfg: &Config, name: &str, database: &str) -> UpstreamConfig {
    let mut up = cfg.upstreams[0].clone();
    up.name = name.to_string();
    up.database = database.to_string();
    up
}

/// A daemon running in this process; shut down explicitly with [`TestDaemon::shutdown`] or
/// implicitly (without waiting) when dropped.
pub struct TestDaemon {
    socket: PathBuf,
    config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
    _dir: tempfile::TempDir,
}

impl TestDaemon {
    /// Binds `cfg` and spawns the daemon; `dir` is kept alive as long as the daemon.
    pub async fn start_config(cfg: Config, dir: tempfile::TempDir) -> TestDaemon {
        let daemon = tokio::time::timeout(
            Duration::from_secs(20),
            qail_daemon::app::Daemon::bind(cfg.clone()),
        )
        .await
        .expect("Daemon::bind timed out")
        .unwrap_or_else(|e| panic!("Daemon::bind failed: {e}"));
        let socket = daemon.socket_path().to_path_buf();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            daemon
                .run(async move {
                    let _ = rx.await;
                })
                .await
                .map_err(|e| e.to_string())
        });
        TestDaemon {
            socket,
            config: cfg,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A new client connection, nothing sent yet.
    pub async fn client(&self) -> RawClient {
        RawClient::connect(&self.socket).await
    }

    /// A new client connection after `hello` and `connect` to `main`.
    pub async fn connected(&self) -> RawClient {
        let mut c = self.client().await;
        c.connect_main().await;
        c
    }

    /// Signals shutdown and waits for `run` to return, asserting it returned `Ok`.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self
            .task
            .take()
            .expect("the daemon task is present until shutdown");
        let result = tokio::time::timeout(SHUTDOWN_TIMEOUT, task)
            .await
            .expect("the daemon did not shut down in time")
            .expect("the daemon task panicked");
        assert_eq!(result, Ok(()), "the daemon's run() returned an error");
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
