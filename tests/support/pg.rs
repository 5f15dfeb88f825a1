//! Throwaway PostgreSQL clusters made with the installed `initdb`.
//!
//! A cluster lives in its own temporary directory, listens on 127.0.0.1 with a free port and on
//! a private Unix-socket directory, and requires `scram-sha-256` passwords on both, so password
//! tests are real. When the tests run as root (PostgreSQL refuses root) every server program runs
//! as the `postgres` user through `runuser`, in a directory chowned to that user.
//!
//! [`PgCluster::shared`] is one cluster per test binary, started lazily; a detached watchdog
//! stops it and removes its directory once the test process is gone (statics are never
//! dropped). [`PgCluster::start_private`] gives fault tests a cluster of their own that they may
//! stop, start and restart; it is stopped and removed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// Superuser of every test cluster.
pub const PG_USER: &str = "postgres";
/// Password of [`PG_USER`]; the clusters accept nothing else.
pub const PG_PASSWORD: &str = "qail-test-password";
/// A role that signs in with a client certificate only (over TLS on 127.0.0.1); tests that
/// use it create it.
pub const CERT_USER: &str = "qail_cert";

/// One running (or stopped) PostgreSQL cluster.
pub struct PgCluster {
    /// Temporary directory holding `data/`, `sock/`, the log and the password file.
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Whether dropping stops the server and removes `root` (private clusters only).
    owned: bool,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl PgCluster {
    /// The cluster shared by every test of this binary, started on first use.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(|| {
            let mut cluster = PgCluster::init().unwrap_or_else(|e| panic!("{e}"));
            cluster.start().unwrap_or_else(|e| panic!("{e}"));
            cluster.owned = false;
            cluster
        })
    }

    /// A cluster of its own for a fault test, already running.
    pub fn start_private() -> PgCluster {
        let mut cluster = PgCluster::init().unwrap_or_else(|e| panic!("{e}"));
        cluster.owned = true;
        cluster.start().unwrap_or_else(|e| panic!("{e}"));
        cluster
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private Unix-socket directory (a libpq `host`).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The PEM certificate of the authority that signed the server's certificate (which names
    /// `localhost` only, not `127.0.0.1`): what `sslrootcert` must hold for `verify-full`.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("tls").join("ca.crt")
    }

    /// A client certificate the same authority signed for the role [`CERT_USER`] (the server
    /// authenticates that role by certificate over TCP), and its private key.
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        let dir = self.root.join("tls");
        (dir.join("client.crt"), dir.join("client.key"))
    }

    /// Another authority's PEM certificate, which did not sign the server's.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.root.join("tls").join("other-ca.crt")
    }

    /// A test authority, a server and a client certificate it signed and a second authority,
    /// made with the `openssl` command (P-256 keys: quick to make) in `<root>/tls`, readable by
    /// the server.
    fn make_certificates(&self) -> Result<PathBuf, String> {
        let dir = self.root.join("tls");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let openssl = |args: &[&str]| {
            run(Command::new("openssl").current_dir(&dir).args(args)).map_err(|e| {
                format!("the TLS tests need the openssl command (package openssl): {e}")
            })
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, subject) in [
            ("ca", "/CN=qail test CA"),
            ("other-ca", "/CN=qail other CA"),
        ] {
            let (keyfile, crtfile) = (format!("{name}.key"), format!("{name}.crt"));
            let mut args = vec!["req", "-x509", "-days", "3", "-subj", subject];
            args.extend(key);
            args.extend(["-keyout", &keyfile, "-out", &crtfile]);
            openssl(&args)?;
        }
        let client_subject = format!("/CN={CERT_USER}");
        for (name, subject, extensions) in [
            (
                "server",
                "/CN=localhost",
                "subjectAltName = DNS:localhost\n",
            ),
            (
                "client",
                client_subject.as_str(),
                "extendedKeyUsage = clientAuth\n",
            ),
        ] {
            let (keyfile, csr) = (format!("{name}.key"), format!("{name}.csr"));
            let mut args = vec!["req", "-subj", subject, "-keyout", &keyfile];
            args.extend(key);
            args.extend(["-out", &csr]);
            openssl(&args)?;
            let crt = format!("{name}.crt");
            let mut args = vec![
                "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key",
            ];
            args.extend(["-CAcreateserial", "-days", "3", "-out", &crt]);
            // Extensions make it an X.509 v3 certificate, the only version rustls accepts.
            let ext = format!("{name}.ext");
            std::fs::write(dir.join(&ext), extensions).map_err(|e| e.to_string())?;
            args.extend(["-extfile", &ext]);
            openssl(&args)?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(dir.join("server.key"), private).map_err(|e| e.to_string())?;
        }
        if self.as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        Ok(dir)
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// Makes the directory and runs `initdb`; does not start the server.
    fn init() -> Result<PgCluster, String> {
        let bin = find_pg_bin()?;
        let as_postgres = nix::unistd::geteuid().is_root();
        let root = tempfile::Builder::new()
            .prefix("qail-pg-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?
            .keep();
        std::fs::create_dir(root.join("sock")).map_err(|e| e.to_string())?;
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, format!("{PG_PASSWORD}\n")).map_err(|e| e.to_string())?;
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root))?;
        }
        let mut cluster = PgCluster {
            root,
            bin,
            port: free_port(),
            as_postgres,
            owned: true,
        };
        cluster.spawn_watchdog();
        let mut initdb = cluster.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(cluster.data_dir())
            .args(["-U", PG_USER, "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--no-locale", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(&mut initdb)?;
        let tls = cluster.make_certificates()?;
        let settings = format!(
            "\n# written by the qail-daemon tests\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = 16MB\nmax_connections = 200\n\
             log_min_messages = warning\nlog_statement = 'none'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
            cluster.socket_dir().display(),
            tls.join("server.crt").display(),
            tls.join("server.key").display(),
            tls.join("ca.crt").display(),
        );
        append(&cluster.data_dir().join("postgresql.conf"), &settings)?;
        // The first matching line wins: the certificate role signs in by certificate only.
        let hba = cluster.data_dir().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
        std::fs::write(
            &hba,
            format!("hostssl all {CERT_USER} 127.0.0.1/32 cert\nhost all {CERT_USER} 127.0.0.1/32 reject\n{rules}"),
        )
        .map_err(|e| e.to_string())?;
        cluster.owned = true;
        Ok(cluster)
    }

    /// Starts the server and waits until it accepts connections. Picks another port when the
    /// chosen one was taken meanwhile.
    pub fn start(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..3 {
            let mut ctl = self.pg_command("pg_ctl");
            ctl.arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_file())
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-p {}", self.port))
                .arg("start");
            match run(&mut ctl) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
                    last = format!("{e}\n--- server log ---\n{log}");
                    if !log.contains("Address already in use") {
                        break;
                    }
                    self.port = free_port();
                }
            }
        }
        Err(format!("PostgreSQL did not start: {last}"))
    }

    /// Stops the server (fast mode: sessions are disconnected).
    pub fn stop(&self) {
        let mut ctl = self.pg_command("pg_ctl");
        ctl.arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "-m", "fast", "stop"]);
        if let Err(e) = run(&mut ctl) {
            panic!("pg_ctl stop failed: {e}");
        }
    }

    /// Stops and starts the server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.start().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(port, self.port, "restart moved the cluster to another port");
    }

    /// A new, uniquely named, empty database.
    pub async fn create_database(&self) -> String {
        let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("qail_t{}_{n}", std::process::id());
        let admin = self.client("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        name
    }

    /// A direct tokio-postgres connection (over TCP, with the password) for setup and checks
    /// that must not go through the daemon.
    pub async fn client(&self, database: &str) -> Client {
        let mut config = self.pg_config(database);
        config
            .application_name("qail-tests")
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) =
            tokio::time::timeout(Duration::from_secs(15), config.connect(NoTls))
                .await
                .unwrap_or_else(|_| panic!("connecting to database {database} timed out"))
                .unwrap_or_else(|e| panic!("connecting to database {database}: {e}"));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Waits until a direct connection succeeds (after `start`/`restart`).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = self.pg_config("postgres").connect(NoTls).await;
            match attempt {
                Ok(_) => return,
                Err(e) => assert!(Instant::now() < deadline, "cluster not ready: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connection settings for `database` as the superuser, over TCP.
    pub fn pg_config(&self, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(PG_USER)
            .password(PG_PASSWORD)
            .dbname(database);
        config
    }

    /// A command for one of the server programs, run as `postgres` when we are root.
    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd
    }

    /// Starts a detached shell that waits for this process to exit, then stops the server and
    /// removes the directory, so no cluster outlives the tests (even after a panic or SIGKILL).
    fn spawn_watchdog(&self) {
        let ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!(
                "runuser -u postgres -- '{}' -D '{}' -m immediate stop",
                ctl.display(),
                self.data_dir().display()
            )
        } else {
            format!(
                "'{}' -D '{}' -m immediate stop",
                ctl.display(),
                self.data_dir().display()
            )
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{root}'",
            pid = std::process::id(),
            root = self.root.display()
        );
        let spawned = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("warning: cannot start the PostgreSQL watchdog: {e}");
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let mut ctl = self.pg_command("pg_ctl");
        ctl.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = ctl.status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The directory holding `initdb`: `PATH` first, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_pg_bin() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("initdb is not on PATH and /usr/lib/postgresql is unreadable: {e}"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL server found: install the postgresql package".to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free TCP port on 127.0.0.1")
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
