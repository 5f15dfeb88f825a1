//! Configuration: plain serde structs, loaded from one TOML file and layered with environment
//! variables through the `config` crate, then validated before the daemon (or a reload) uses it.
//!
//! Layering, last wins: built-in defaults → the TOML file → `QAIL_<SECTION>__<KEY>` variables
//! (`QAIL_IPC__SOCKET`, `QAIL_ADMIN__LISTEN`, `QAIL_ALLOW_DYNAMIC_UPSTREAMS`) →
//! `QAIL_UPSTREAMS__<NAME>__<KEY>` for one upstream (`QAIL_UPSTREAMS__MAIN__PASSWORD`) →
//! `QAIL_SOCKET`, the variable clients read too, for `[ipc] socket`.
//! The environment is passed in as a map, so tests never touch the process environment.
//!
//! Invariants after [`Config::load`]: upstream names are unique and non-empty, every upstream has
//! its password resolved (file / environment read), sizes and timeouts are in range.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Environment variable naming the socket, shared by the daemon and every client.
pub const SOCKET_ENV: &str = "QAIL_SOCKET";
const ENV_PREFIX: &str = "QAIL";
const UPSTREAM_ENV_PREFIX: &str = "QAIL_UPSTREAMS__";

/// Why a configuration cannot be used. Messages name the key and say what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    /// An error of the `config` crate. Its key paths run an index into the next field
    /// (`upstreams[0]pool_max`); they are written with the dot a config file would have.
    fn parse(e: config::ConfigError) -> Self {
        let text = e.to_string();
        let mut out = String::with_capacity(text.len() + 4);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == ']'
                && chars
                    .peek()
                    .is_some_and(|n| n.is_alphanumeric() || *n == '_')
            {
                out.push('.');
            }
        }
        ConfigError::Parse(out)
    }

    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A secret string (password, token). `Debug`, `Display` and `Serialize` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is sent to PostgreSQL or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket served to clients.
    pub ipc: IpcConfig,
    /// Admin HTTP port (health, readiness, metrics).
    pub admin: AdminConfig,
    /// Shared statement catalogue.
    pub catalog: CatalogConfig,
    /// Daemon-wide limits and timeouts.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// The async runtime.
    pub runtime: RuntimeConfig,
    /// Whether `connect_pg` may start upstreams that are not configured. Default false.
    pub allow_dynamic_upstreams: bool,
    /// Pool settings for upstreams started by `connect_pg` (name, host, … are ignored).
    pub dynamic_defaults: PoolDefaults,
    /// The configured PostgreSQL databases. May be empty when dynamic upstreams are allowed.
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpcConfig {
    /// Socket path. Default: the shared rule in [`default_socket_path`]. Reload: no.
    pub socket: PathBuf,
    /// Permission bits of the socket file, octal string ("0660") or TOML integer (0o660).
    /// Default 0660. Reload: no.
    pub socket_mode: SocketMode,
    /// Largest frame accepted or sent, in bytes. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Requests of one client connection run concurrently, at most this many. Default 64.
    pub max_in_flight: usize,
    /// Client connections served at once; more wait in the accept queue. Default 16384.
    pub max_clients: usize,
    /// When set, clients must `hello` with this token first. Default: none.
    pub token: Option<Secret>,
    /// File holding the token (trailing newline ignored). Default: none.
    pub token_file: Option<PathBuf>,
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            socket: default_socket_path(),
            socket_mode: SocketMode(0o660),
            max_frame_bytes: 16 * 1024 * 1024,
            max_in_flight: 64,
            max_clients: 16384,
            token: None,
            token_file: None,
        }
    }
}

/// File permission bits for the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl Serialize for SocketMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Str(String),
        }
        let mode = match Raw::deserialize(d)? {
            Raw::Int(n) => n,
            Raw::Str(s) => {
                let digits = s.trim_start_matches("0o");
                u32::from_str_radix(digits, 8).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "socket_mode \"{s}\" is not an octal mode like \"0660\""
                    ))
                })?
            }
        };
        if mode > 0o777 {
            return Err(serde::de::Error::custom(format!(
                "socket_mode {mode:o} has bits beyond 0777"
            )));
        }
        Ok(SocketMode(mode))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP server; empty string turns it off. Default "127.0.0.1:9930".
    pub listen: String,
    /// Bearer token for mutating admin endpoints; none = those endpoints are off.
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9930".into(),
            token: None,
        }
    }
}

impl AdminConfig {
    /// The parsed listen address, or None when the admin server is off.
    pub fn addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!("\"{}\" is not an address like 127.0.0.1:9930", self.listen),
            )
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Statements kept per upstream; the least recently used is evicted. Default 4096.
    pub capacity: usize,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig { capacity: 4096 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Default per-request timeout in ms when a request has no `timeout_ms`; 0 = none. Default 0.
    pub statement_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests before rolling back. Default 10000.
    pub shutdown_grace_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            statement_timeout_ms: 0,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl LimitsConfig {
    pub fn statement_timeout(&self) -> Option<Duration> {
        (self.statement_timeout_ms > 0).then(|| Duration::from_millis(self.statement_timeout_ms))
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads running the daemon's tasks. 1 (the default) runs everything on one thread, like
    /// PgBouncer: no hand-offs between threads on the request path, which is what small
    /// requests are bound by. 0 = one thread per CPU core, for hosts where the daemon's own
    /// CPU (encoding large results) is the bottleneck. Reload: no.
    pub worker_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { worker_threads: 1 }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "text" or "json". Default "text".
    pub format: LogFormat,
    /// A tracing filter ("info", "qail_daemon=debug"); `RUST_LOG` wins when set. Default "info".
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Pool settings shared by configured and dynamic upstreams.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolDefaults {
    /// Most PostgreSQL connections. Default 8.
    pub pool_max: u32,
    /// Idle connections kept open. Default 1.
    pub pool_min_idle: u32,
    /// Time to open one PostgreSQL connection, ms. Default 5000.
    pub connect_timeout_ms: u64,
    /// Time a request waits for a free connection, ms. Default 5000.
    pub checkout_timeout_ms: u64,
    /// Health check period, ms. Default 5000.
    pub health_interval_ms: u64,
    /// An idle connection above `pool_min_idle` is closed after this long, ms. Default
    /// 600000 (10 minutes); 0 = never.
    pub idle_timeout_ms: u64,
    /// A connection is closed once it is this old, when it next goes back to the pool (or
    /// sits idle), so connections move to a failed-over or rebalanced server, ms. Default
    /// 1800000 (30 minutes); 0 = never.
    pub max_lifetime_ms: u64,
}

impl Default for PoolDefaults {
    fn default() -> Self {
        PoolDefaults {
            pool_max: 8,
            pool_min_idle: 1,
            connect_timeout_ms: 5000,
            checkout_timeout_ms: 5000,
            health_interval_ms: 5000,
            idle_timeout_ms: 600_000,
            max_lifetime_ms: 1_800_000,
        }
    }
}

/// One PostgreSQL database the daemon pools connections to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name clients `connect` to. Required.
    pub name: String,
    /// Host name, IP address, or a Unix-socket directory (starts with '/'). Default "127.0.0.1".
    #[serde(default = "default_host")]
    pub host: String,
    /// Default 5432.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Required.
    pub user: String,
    /// Default: the user name.
    #[serde(default)]
    pub database: String,
    /// Password in the file itself. Prefer `password_file` or `password_env`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File whose content (trailing newline ignored) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Whether /ready needs this upstream up. Default true.
    #[serde(default = "default_true")]
    pub required: bool,
    /// `application_name` sent to PostgreSQL. Default "qail-daemon".
    #[serde(default = "default_application_name")]
    pub application_name: String,
    #[serde(default = "default_pool_max")]
    pub pool_max: u32,
    #[serde(default = "default_pool_min_idle")]
    pub pool_min_idle: u32,
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub checkout_timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub health_interval_ms: u64,
    /// Idle connections above `pool_min_idle` close after this long, ms. Default 600000;
    /// 0 = never.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Connections close once this old, when next returned or idle, ms. Default 1800000;
    /// 0 = never.
    #[serde(default = "default_max_lifetime_ms")]
    pub max_lifetime_ms: u64,
    /// TLS over TCP, as libpq's `sslmode`: "disable" (default), "prefer" (TLS when the server
    /// offers it), "require" (TLS, the certificate not checked unless `sslrootcert` is set),
    /// "verify-ca" (TLS, the certificate signed by an authority of `sslrootcert`),
    /// "verify-full" (as verify-ca, and the certificate names `host`). Ignored for a
    /// Unix-socket directory, as libpq does. Reload: rebuilds the pool.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file of the certificate authorities to trust; required by `verify-ca` and
    /// `verify-full`, and makes `require` check like `verify-ca`. Default: none.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// PEM file of the client certificate (chain) shown to the server, with `sslkey`, for
    /// PostgreSQL's `cert` authentication or `clientcert=verify-full`. Default: none.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1). Default: none.
    /// Reload re-reads the three TLS files and rebuilds the pool when their contents changed.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// SCRAM channel binding, as libpq's `channel_binding`: "prefer" (default: used when the
    /// connection runs TLS and the server offers it), "require" (refuse to authenticate
    /// without it; needs TLS), "disable".
    #[serde(default)]
    pub channel_binding: ChannelBinding,
    /// Digest of the contents of `sslrootcert`, `sslcert` and `sslkey`, taken when the config
    /// is validated: a reload rebuilds the pool when certificates were rotated behind
    /// unchanged paths.
    #[serde(skip)]
    pub(crate) tls_files: u64,
}

/// `channel_binding` of an upstream (see [`UpstreamConfig::channel_binding`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    Disable,
    #[default]
    Prefer,
    Require,
}

/// `sslmode` of an upstream (see [`UpstreamConfig::sslmode`]), ordered from weakest to
/// strictest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The setting's name, as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_true() -> bool {
    true
}
fn default_application_name() -> String {
    "qail-daemon".into()
}
fn default_pool_max() -> u32 {
    PoolDefaults::default().pool_max
}
fn default_idle_timeout_ms() -> u64 {
    PoolDefaults::default().idle_timeout_ms
}
fn default_max_lifetime_ms() -> u64 {
    PoolDefaults::default().max_lifetime_ms
}
fn default_pool_min_idle() -> u32 {
    PoolDefaults::default().pool_min_idle
}
fn default_timeout_ms() -> u64 {
    5000
}

impl UpstreamConfig {
    /// An upstream for credentials given to `connect_pg`, with the dynamic pool defaults.
    pub fn dynamic(
        host: &str,
        port: u16,
        user: &str,
        database: &str,
        password: Secret,
        sslmode: SslMode,
        pool: &PoolDefaults,
    ) -> Self {
        let mut name = format!("dyn:{user}@{host}:{port}/{database}");
        if sslmode != SslMode::Disable {
            name.push_str(&format!("?sslmode={}", sslmode.as_str()));
        }
        UpstreamConfig {
            name,
            host: host.into(),
            port,
            user: user.into(),
            database: database.into(),
            password: Some(password),
            password_file: None,
            password_env: None,
            required: false,
            application_name: default_application_name(),
            pool_max: pool.pool_max,
            pool_min_idle: pool.pool_min_idle,
            connect_timeout_ms: pool.connect_timeout_ms,
            checkout_timeout_ms: pool.checkout_timeout_ms,
            health_interval_ms: pool.health_interval_ms,
            idle_timeout_ms: pool.idle_timeout_ms,
            max_lifetime_ms: pool.max_lifetime_ms,
            sslmode,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            channel_binding: ChannelBinding::Prefer,
            tls_files: 0,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }
    pub fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.checkout_timeout_ms.max(1))
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.max(100))
    }
    /// `idle_timeout_ms`, `None` when 0 (never).
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms))
    }
    /// `max_lifetime_ms`, `None` when 0 (never).
    pub fn max_lifetime(&self) -> Option<Duration> {
        (self.max_lifetime_ms > 0).then(|| Duration::from_millis(self.max_lifetime_ms))
    }
    /// The resolved password (empty when none is configured).
    pub fn password(&self) -> &Secret {
        static EMPTY: Secret = Secret(String::new());
        self.password.as_ref().unwrap_or(&EMPTY)
    }
    /// Whether the host is a Unix-socket directory.
    pub fn is_socket_dir(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// The default socket path, shared with every client:
/// `$XDG_RUNTIME_DIR/qail/qail.sock` when that is set, `/run/qail/qail.sock` for root, else
/// `/tmp/qail-<uid>/qail.sock` (a directory the daemon creates with mode 0700 for that user).
pub fn default_socket_path() -> PathBuf {
    default_socket_path_from(
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        nix::unistd::geteuid().as_raw(),
    )
}

fn default_socket_path_from(xdg_runtime_dir: Option<PathBuf>, uid: u32) -> PathBuf {
    match xdg_runtime_dir {
        Some(dir) if dir.is_absolute() => dir.join("qail").join("qail.sock"),
        _ if uid == 0 => PathBuf::from("/run/qail/qail.sock"),
        _ => PathBuf::from(format!("/tmp/qail-{uid}/qail.sock")),
    }
}

impl Config {
    /// Loads `path` (if given) layered with the environment `env`, then validates.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml_str(&text, env)
    }

    /// Like [`Config::load`] for TOML text already in memory.
    pub fn from_toml_str(text: &str, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        // Section variables go through the `config` crate; upstream and socket variables are
        // handled below because they are addressed by upstream name / shared with clients.
        let section_env: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| is_section_var(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let base = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("_")
                    .separator("__")
                    .source(Some(section_env)),
            );
        let mut builder = base.clone();
        let upstream_env = upstream_overrides(env);
        if !upstream_env.is_empty() {
            let names: Vec<String> = base
                .build_cloned()
                .map_err(ConfigError::parse)?
                .get::<Vec<NameOnly>>("upstreams")
                .unwrap_or_default()
                .into_iter()
                .map(|n| n.name.to_ascii_uppercase())
                .collect();
            for ((name, key), value) in upstream_env {
                let Some(index) = names.iter().position(|n| *n == name) else {
                    return Err(ConfigError::invalid(
                        format!("{UPSTREAM_ENV_PREFIX}{name}__{}", key.to_ascii_uppercase()),
                        format!("no upstream named {name} (case-insensitive) in the config file"),
                    ));
                };
                builder = builder
                    .set_override(format!("upstreams[{index}].{key}"), value)
                    .map_err(ConfigError::parse)?;
            }
        }
        if let Some(socket) = env.get(SOCKET_ENV).filter(|s| !s.is_empty()) {
            builder = builder
                .set_override("ipc.socket", socket.clone())
                .map_err(ConfigError::parse)?;
        }
        let cfg: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(ConfigError::parse)?;
        cfg.resolved(env)
    }

    /// Reads password/token files and variables, then checks every value.
    fn resolved(mut self, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        if self.ipc.token.is_some() && self.ipc.token_file.is_some() {
            return Err(ConfigError::invalid(
                "ipc.token_file",
                "set either ipc.token or ipc.token_file, not both",
            ));
        }
        if let Some(path) = &self.ipc.token_file {
            self.ipc.token = Some(read_secret_file("ipc.token_file", path)?);
        }
        if self.ipc.token.as_ref().is_some_and(Secret::is_empty) {
            return Err(ConfigError::invalid(
                "ipc.token",
                "must not be empty when set",
            ));
        }
        if !self.ipc.socket.is_absolute() {
            return Err(ConfigError::invalid(
                "ipc.socket",
                format!("\"{}\" must be an absolute path", self.ipc.socket.display()),
            ));
        }
        if self.ipc.max_frame_bytes < 1024 || self.ipc.max_frame_bytes > u32::MAX as usize {
            return Err(ConfigError::invalid(
                "ipc.max_frame_bytes",
                "must be between 1024 and 4294967295",
            ));
        }
        if self.ipc.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "ipc.max_in_flight",
                "must be at least 1",
            ));
        }
        if self.ipc.max_clients == 0 {
            return Err(ConfigError::invalid(
                "ipc.max_clients",
                "must be at least 1",
            ));
        }
        self.admin.addr()?;
        if self.admin.token.as_ref().is_some_and(Secret::is_empty) {
            return Err(ConfigError::invalid(
                "admin.token",
                "must not be empty when set (remove it to turn the mutating endpoints off)",
            ));
        }
        if self.catalog.capacity == 0 {
            return Err(ConfigError::invalid(
                "catalog.capacity",
                "must be at least 1",
            ));
        }
        if self.dynamic_defaults.pool_max == 0 {
            return Err(ConfigError::invalid(
                "dynamic_defaults.pool_max",
                "must be at least 1",
            ));
        }
        let mut seen = BTreeMap::new();
        for (i, up) in self.upstreams.iter_mut().enumerate() {
            let key = |field: &str| format!("upstreams[{i}].{field}");
            if up.name.trim().is_empty() {
                return Err(ConfigError::invalid(key("name"), "must not be empty"));
            }
            if up.name.starts_with("dyn:") {
                return Err(ConfigError::invalid(
                    key("name"),
                    "names starting with \"dyn:\" are reserved for dynamic upstreams",
                ));
            }
            if let Some(first) = seen.insert(up.name.clone(), i) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("\"{}\" is already used by upstreams[{first}]", up.name),
                ));
            }
            if up.user.is_empty() {
                return Err(ConfigError::invalid(key("user"), "must not be empty"));
            }
            if up.database.is_empty() {
                up.database = up.user.clone();
            }
            if up.pool_max == 0 {
                return Err(ConfigError::invalid(key("pool_max"), "must be at least 1"));
            }
            if up.pool_min_idle > up.pool_max {
                return Err(ConfigError::invalid(
                    key("pool_min_idle"),
                    format!("{} is above pool_max {}", up.pool_min_idle, up.pool_max),
                ));
            }
            let sources = [
                up.password.is_some(),
                up.password_file.is_some(),
                up.password_env.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                return Err(ConfigError::invalid(
                    key("password"),
                    "set only one of password, password_file, password_env",
                ));
            }
            if let Some(path) = &up.password_file {
                up.password = Some(read_secret_file(&key("password_file"), path)?);
            }
            if let Some(var) = &up.password_env {
                let value = env.get(var).ok_or_else(|| {
                    ConfigError::invalid(
                        key("password_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?;
                up.password = Some(Secret::new(value.clone()));
            }
            match crate::pg::tls::connector(up) {
                Err(e) => return Err(ConfigError::invalid(key(e.key()), e.to_string())),
                Ok(None) if up.channel_binding == ChannelBinding::Require => {
                    return Err(ConfigError::invalid(
                        key("channel_binding"),
                        "channel_binding = \"require\" needs TLS: set sslmode (and a TCP host)",
                    ))
                }
                Ok(_) => {}
            }
            up.tls_files = crate::pg::tls::files_digest(up)
                .map_err(|e| ConfigError::invalid(key(e.key()), e.to_string()))?;
        }
        if self.upstreams.is_empty() && !self.allow_dynamic_upstreams {
            return Err(ConfigError::invalid(
                "upstreams",
                "no [[upstreams]] configured and allow_dynamic_upstreams is false: nothing to serve",
            ));
        }
        Ok(self)
    }

    /// The effective configuration as TOML with secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

/// Whether `QAIL_…` addresses a config section or top-level key. Other `QAIL_` variables
/// (`QAIL_CONFIG`, `QAIL_SOCKET`, client settings) are not config keys and are left alone;
/// an unknown key *inside* a section is still an error that names it.
fn is_section_var(name: &str) -> bool {
    const SECTIONS: &[&str] = &[
        "IPC__",
        "ADMIN__",
        "CATALOG__",
        "LIMITS__",
        "LOG__",
        "RUNTIME__",
        "DYNAMIC_DEFAULTS__",
    ];
    match name.strip_prefix("QAIL_") {
        Some(rest) => {
            SECTIONS.iter().any(|s| rest.starts_with(s)) || rest == "ALLOW_DYNAMIC_UPSTREAMS"
        }
        None => false,
    }
}

/// `QAIL_UPSTREAMS__MAIN__PASSWORD=x` → (("MAIN", "password"), "x").
fn upstream_overrides(env: &HashMap<String, String>) -> BTreeMap<(String, String), String> {
    env.iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(UPSTREAM_ENV_PREFIX)?;
            let (name, key) = rest.split_once("__")?;
            Some(((name.to_string(), key.to_ascii_lowercase()), v.clone()))
        })
        .collect()
}

fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [ipc]
        socket = "/tmp/qail-test/q.sock"
        [[upstreams]]
        name = "main"
        user = "app"
        password = "s3cret"
    "#;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_fill_in() {
        let c = Config::from_toml_str(MINIMAL, &env(&[])).unwrap();
        assert_eq!(c.ipc.socket_mode, SocketMode(0o660));
        assert_eq!(c.ipc.max_frame_bytes, 16 * 1024 * 1024);
        assert_eq!(c.upstreams[0].database, "app");
        assert_eq!(c.upstreams[0].port, 5432);
        assert_eq!(c.upstreams[0].pool_max, 8);
        assert_eq!(
            c.upstreams[0].idle_timeout(),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            c.upstreams[0].max_lifetime(),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(c.upstreams[0].password().expose(), "s3cret");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_as_written() {
        let text = format!("{MINIMAL}pool_max = \"eight\"\n");
        let e = Config::from_toml_str(&text, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`upstreams[0].pool_max`"), "{e}");
        let e = Config::from_toml_str(MINIMAL, &env(&[("QAIL_UPSTREAMS__MAIN__POOL_MAX", "-1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstreams[0].pool_max"), "{e}");
    }

    #[test]
    fn sslmode_is_checked_before_use() {
        let with = |extra: &str| Config::from_toml_str(&format!("{MINIMAL}{extra}\n"), &env(&[]));
        assert_eq!(with("").unwrap().upstreams[0].sslmode, SslMode::Disable);
        let c = with("sslmode = \"require\"").unwrap();
        assert_eq!(c.upstreams[0].sslmode, SslMode::Require);
        let err = with("sslmode = \"verify-full\"").unwrap_err().to_string();
        assert!(
            err.contains("upstreams[0].sslmode") && err.contains("sslrootcert"),
            "{err}"
        );
        let err = with("sslmode = \"verify-full\"\nsslrootcert = \"/nonexistent/ca.crt\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read sslrootcert /nonexistent/ca.crt"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = with(&format!(
            "sslmode = \"verify-full\"\nsslrootcert = \"{}\"",
            empty.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let err = with("sslmode = \"verify-ca\"").unwrap_err().to_string();
        assert!(
            err.contains("verify-ca") && err.contains("sslrootcert"),
            "{err}"
        );
        let err = with("sslmode = \"require\"\nsslcert = \"/nonexistent/client.crt\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upstreams[0].sslcert") && err.contains("sslkey"),
            "{err}"
        );
        let err = with("sslmode = \"require\"\nsslcert = \"/nonexistent/c.crt\"\nsslkey = \"/k\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read sslcert /nonexistent/c.crt"),
            "{err}"
        );
        let err = with("channel_binding = \"require\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upstreams[0].channel_binding") && err.contains("needs TLS"),
            "{err}"
        );
        let c = with("sslmode = \"require\"\nchannel_binding = \"require\"").unwrap();
        assert_eq!(c.upstreams[0].channel_binding, ChannelBinding::Require);
    }

    #[test]
    fn zero_idle_timeout_and_lifetime_mean_never() {
        let c = Config::from_toml_str(
            &format!("{MINIMAL}idle_timeout_ms = 0\nmax_lifetime_ms = 0\n"),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(c.upstreams[0].idle_timeout(), None);
        assert_eq!(c.upstreams[0].max_lifetime(), None);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str(&format!("{MINIMAL}\n[catalog]\ncapacty = 3\n"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("capacty"), "{err}");
    }

    #[test]
    fn env_overrides_sections_upstreams_and_socket() {
        let c = Config::from_toml_str(
            MINIMAL,
            &env(&[
                ("QAIL_CATALOG__CAPACITY", "17"),
                ("QAIL_IPC__SOCKET_MODE", "0600"),
                ("QAIL_UPSTREAMS__MAIN__PASSWORD", "from-env"),
                ("QAIL_UPSTREAMS__MAIN__POOL_MAX", "3"),
                ("QAIL_SOCKET", "/tmp/other.sock"),
                ("QAIL_CONFIG", "/etc/qail.toml"),
                ("QAIL_ALLOW_DYNAMIC_UPSTREAMS", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.catalog.capacity, 17);
        assert_eq!(c.ipc.socket_mode, SocketMode(0o600));
        assert_eq!(c.upstreams[0].password().expose(), "from-env");
        assert_eq!(c.upstreams[0].pool_max, 3);
        assert_eq!(c.ipc.socket, PathBuf::from("/tmp/other.sock"));
        assert!(c.allow_dynamic_upstreams);
        let err = Config::from_toml_str(MINIMAL, &env(&[("QAIL_IPC__SOKET", "/x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("soket"), "{err}");
    }

    #[test]
    fn env_for_unknown_upstream_is_an_error() {
        let err = Config::from_toml_str(MINIMAL, &env(&[("QAIL_UPSTREAMS__NOPE__PORT", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("NOPE"), "{err}");
    }

    #[test]
    fn password_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = format!(
            "[[upstreams]]\nname='a'\nuser='u'\npassword_file='{}'\n[[upstreams]]\nname='b'\nuser='u'\npassword_env='PGPW'\n",
            file.display()
        );
        let c = Config::from_toml_str(&text, &env(&[("PGPW", "from-var")])).unwrap();
        assert_eq!(c.upstreams[0].password().expose(), "from-file");
        assert_eq!(c.upstreams[1].password().expose(), "from-var");
        let missing = Config::from_toml_str(&text, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("upstreams[1].password_env"), "{missing}");
    }

    #[test]
    fn validation_names_the_key() {
        let dup = format!("{MINIMAL}\n[[upstreams]]\nname='main'\nuser='x'\n");
        let err = Config::from_toml_str(&dup, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstreams[1].name"), "{err}");
        let err = Config::from_toml_str(
            &MINIMAL.replace("user = \"app\"", "user = \"app\"\npool_max = 0"),
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("upstreams[0].pool_max"), "{err}");
        let err = Config::from_toml_str("", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstreams"), "{err}");
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let c = Config::from_toml_str(MINIMAL, &env(&[])).unwrap();
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn default_socket_rule() {
        assert_eq!(
            default_socket_path_from(Some("/run/user/1000".into()), 1000),
            PathBuf::from("/run/user/1000/qail/qail.sock")
        );
        assert_eq!(
            default_socket_path_from(None, 0),
            PathBuf::from("/run/qail/qail.sock")
        );
        assert_eq!(
            default_socket_path_from(None, 1000),
            PathBuf::from("/tmp/qail-1000/qail.sock")
        );
    }
}
