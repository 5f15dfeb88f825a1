//! One upstream database: its bb8 pool, its statement catalogue, its health state, and the
//! worker task that watches it.
//!
//! The pool is built without connecting, so the daemon starts even when PostgreSQL is down; the
//! worker's health loop finds out and flips the state. While an upstream is known to be down,
//! requests fail at once with `upstream_unavailable` instead of waiting out the checkout timeout.
//!
//! Besides health, an upstream has an operator switch (`pause`: checkouts fail at once) and a
//! lifecycle set by reloads: a *replaced* upstream still serves the sessions that hold it until
//! they move to its successor; a *removed* one refuses checkouts. Checkout waits are measured
//! (waiter gauge, wait histogram) here, where the waiting happens.
//!
//! Checkouts are served first come, first served. bb8 puts a returned connection back in its
//! idle queue and wakes one waiter, so a request arriving at that moment can take the
//! connection before the woken waiter runs, and the waiter queues again at the back: under many
//! waiters a few of them wait far longer than the rest. Here every checkout first takes a slot
//! from a FIFO semaphore with `pool_max` slots, and only a slot holder asks bb8, which then has
//! a connection for it (idle, or one it may open). A slot passes straight from the request
//! that lets go of it to the oldest waiter, so nobody overtakes. The health check asks bb8
//! directly, so it never queues behind clients.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8::{Pool, PooledConnection, RunError};
use prometheus::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{HandleGen, StatementCache};
use crate::config::{SslMode, UpstreamConfig};
use crate::error::{Code, Error};
use crate::pg::coalesce::Gate;
use crate::pg::conn::{describe_connect_error, ConnectError, PgConn, PgManager};

/// A connection checked out of an upstream's pool, owned (not borrowed from the pool), with
/// the slot that let it be taken.
pub struct Checkout {
    // Field order is drop order: the connection goes back to the pool before the slot passes
    // to the next waiter, who then finds it idle.
    conn: PooledConnection<'static, PgManager>,
    _slot: OwnedSemaphorePermit,
}

impl std::ops::Deref for Checkout {
    type Target = PgConn;
    fn deref(&self) -> &PgConn {
        &self.conn
    }
}

impl std::ops::DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut PgConn {
        &mut self.conn
    }
}

/// Health as last observed by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet.
    Unknown,
    Up,
    Down,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }
}

/// Where an upstream is in its life, as reloads move it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// In the supervisor's map, serving.
    Active,
    /// A reload changed its settings; a successor with the same name took its place. It keeps
    /// serving whoever still holds it (an open transaction) until they let go.
    Replaced,
    /// A reload removed it from the configuration; checkouts fail.
    Removed,
}

/// Pool figures for stats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStats {
    pub name: String,
    pub health: Health,
    pub paused: bool,
    pub required: bool,
    /// TLS towards PostgreSQL: the configured `sslmode`, `disable` over a Unix socket.
    pub sslmode: SslMode,
    pub size: u32,
    pub idle: u32,
    pub in_use: u32,
    pub max: u32,
    /// Requests waiting for a connection right now.
    pub waiters: u64,
    pub checkouts: u64,
    pub checkout_timeouts: u64,
    /// PostgreSQL connections opened since start, and closed: broken (a failed or abandoned
    /// connection), or retired by `max_lifetime_ms` or `idle_timeout_ms`.
    pub connections_opened: u64,
    pub connections_closed: ClosedConnections,
    pub errors: u64,
    /// Pipeline statements sent grouped (see `pg::burst`), and those of them run again one by
    /// one because they failed or were skipped inside their group.
    pub grouped_statements: u64,
    pub grouped_reruns: u64,
    /// Single statements that queued on a shared connection and ran together with others
    /// (see `pg::coalesce`), and the runs they made: statements per run is the group size.
    pub coalesced_statements: u64,
    pub coalesced_groups: u64,
}

/// How often the pool looks for idle connections past `idle_timeout_ms` or `max_lifetime_ms`:
/// bb8's 30 s, or more often when either is shorter, so a short setting takes effect close to
/// its time (never more than 10 times a second).
fn reaper_rate(config: &UpstreamConfig) -> Duration {
    [config.idle_timeout(), config.max_lifetime()]
        .into_iter()
        .flatten()
        .map(|d| d / 2)
        .fold(Duration::from_secs(30), Duration::min)
        .max(Duration::from_millis(100))
}

/// Connections the pool closed, by reason.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ClosedConnections {
    pub broken: u64,
    pub max_lifetime: u64,
    pub idle_timeout: u64,
}

/// One pooled upstream database.
pub struct Upstream {
    pub config: UpstreamConfig,
    /// Shared with a successor when a reload replaces this upstream.
    pub catalog: Arc<StatementCache>,
    manager: PgManager,
    pool: Pool<PgManager>,
    /// `pool_max` slots handed out in arrival order; a checkout holds one (see the module doc).
    slots: Arc<Semaphore>,
    /// `pool_max × LANE_DEPTH` turns for shared requests, in arrival order (see [`Lease`]).
    turns: Arc<Semaphore>,
    /// Signalled when a lease ends: room on a lane, or a connection back in the pool.
    room: tokio::sync::Notify,
    health: AtomicU8,
    errors: AtomicU64,
    paused: AtomicBool,
    lifecycle: AtomicU8,
    /// Requests waiting for the pool right now.
    waiters: AtomicU64,
    /// `checkout()` calls (connections of their own) waiting right now.
    exclusive_waiting: AtomicU64,
    /// Checkouts that gave up waiting (`pool_timeout`, or the upstream went down meanwhile).
    timeouts: AtomicU64,
    /// Time spent waiting for a pooled connection; `None` for throwaway upstreams (credential
    /// probes) whose metrics are not exported.
    checkout_wait: Option<Histogram>,
    /// Cancelled when the upstream is removed or the daemon stops.
    pub cancel: CancellationToken,
    /// Owns this upstream's background tasks: its PostgreSQL connections and the runners of
    /// coalesced statements (the supervisor's tracker, so shutdown waits for them).
    tasks: TaskTracker,
    /// Connections currently shared by concurrent autocommit requests (see [`Lease`]).
    lanes: Mutex<Vec<Arc<Lane>>>,
    /// Counters of grouped pipelines on this upstream.
    pub grouped: GroupedCounters,
}

/// How much of the pipeline traffic ran grouped, and how much of it had to run again; how
/// many single statements waited on a shared connection and ran together (`pg::coalesce`).
#[derive(Debug, Default)]
pub struct GroupedCounters {
    pub statements: AtomicU64,
    pub reruns: AtomicU64,
    pub coalesced: AtomicU64,
    pub coalesced_groups: AtomicU64,
}

/// Requests that may share one connection at once. tokio-postgres pipelines concurrent
/// queries on a connection, each with its own Sync, so they stay independent; read-only ones
/// queue at the lane's [`Gate`] and run together in groups (`pg::coalesce`).
const LANE_DEPTH: usize = 8;

/// How long after its work started a busy connection still takes coalescable statements
/// before an idle connection would. A statement that joins runs in the next group there, which
/// costs PostgreSQL a fraction of a statement run alone (a Sync, a commit and a wake-up of its
/// own); but work that has run longer than this may be a slow statement, and nothing that could
/// run elsewhere should queue behind it.
const JOIN_WINDOW: Duration = Duration::from_millis(2);

/// A pooled connection shared by concurrent autocommit requests.
struct Lane {
    conn: Checkout,
    /// Requests using the lane; only changed with the upstream's `lanes` lock held.
    users: AtomicU64,
    /// Where read-only statements on the lane queue to run together (`pg::coalesce`).
    gate: Gate,
}

/// The lanes that can take one more request: working, and below `LANE_DEPTH` users.
fn lanes_with_room(lanes: &[Arc<Lane>]) -> impl Iterator<Item = &Arc<Lane>> {
    lanes
        .iter()
        .filter(|l| l.users.load(Ordering::Relaxed) < LANE_DEPTH as u64 && !l.conn.is_broken())
}

/// Counts one more user in on `lane`; the upstream's `lanes` lock must be held.
fn counted_in(lane: &Arc<Lane>) -> Arc<Lane> {
    lane.users.fetch_add(1, Ordering::Relaxed);
    lane.clone()
}

/// One request's share of a pooled connection. Autocommit statements that leave no session
/// state behind and need no cancellation (no time limit) run on a lease: a connection whose
/// coalescing group is just starting, when the statement can join one; else an idle pooled
/// connection; else a connection already in use by up to `LANE_DEPTH` other such requests, so
/// they queue inside PostgreSQL's pipeline instead of in the pool. The connection returns to
/// the pool when its last lease ends.
pub struct Lease {
    lane: Arc<Lane>,
    up: Arc<Upstream>,
    /// The request's turn among shared requests (`None` for the daemon's own extra shares).
    _turn: Option<OwnedSemaphorePermit>,
    /// The request only waits: its statement is in the connection's coalescing queue
    /// (`pg::coalesce`), or being prepared.
    waiting: AtomicBool,
}

impl std::ops::Deref for Lease {
    type Target = PgConn;
    fn deref(&self) -> &PgConn {
        &self.lane.conn
    }
}

impl Lease {
    /// The lane's coalescing queue.
    pub fn gate(&self) -> &Gate {
        &self.lane.gate
    }

    /// Another share of the same connection (it stays out of the pool until every share ends).
    pub fn share(&self) -> Lease {
        let _lanes = self.up.lanes();
        self.lane.users.fetch_add(1, Ordering::Relaxed);
        Lease {
            lane: self.lane.clone(),
            up: self.up.clone(),
            _turn: None,
            waiting: AtomicBool::new(false),
        }
    }

    /// Whether the request only waits, so dropping it leaves nothing in PostgreSQL to cancel:
    /// its statement is in the coalescing queue (the queue's runner skips or finishes it
    /// cleanly), or being prepared (a Parse and Describe change nothing anyone could see, and
    /// tokio-postgres reads their answer even when nobody waits for it).
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Awaits `work` with the request marked as only waiting (see [`Lease::is_waiting`]); a
    /// request dropped meanwhile stays marked.
    pub async fn waiting_on<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.waiting.store(true, Ordering::Relaxed);
        let out = work.await;
        self.waiting.store(false, Ordering::Relaxed);
        out
    }

    pub fn grouped(&self) -> &GroupedCounters {
        &self.up.grouped
    }

    pub fn upstream_name(&self) -> &str {
        self.up.name()
    }

    /// Runs `task` in the background, owned by this connection's upstream.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.up.spawn(task);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut lanes = self.up.lanes();
        // Room on this lane (or a connection back in the pool, below) for a request waiting.
        self.up.room.notify_one();
        if self.lane.users.fetch_sub(1, Ordering::Relaxed) == 1 {
            lanes.retain(|l| !Arc::ptr_eq(l, &self.lane));
            if self.lane.conn.is_abandoned() {
                // No other request uses the connection any more, so the cancel can only stop
                // the abandoned work; the pool then discards the connection.
                self.up.spawn(self.lane.conn.cancel_in_background());
            }
        }
    }
}

/// Counts one waiting `checkout()` for as long as it lives (also when the wait is cancelled).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn start(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .field("health", &self.health())
            .finish()
    }
}

impl Upstream {
    /// Builds the pool (without connecting) and a new catalogue.
    pub fn new(
        config: UpstreamConfig,
        catalog_capacity: usize,
        handles: Arc<HandleGen>,
        tasks: TaskTracker,
        cancel: CancellationToken,
        checkout_wait: Option<Histogram>,
    ) -> Arc<Upstream> {
        let catalog = Arc::new(StatementCache::new(catalog_capacity, handles));
        Self::with_catalog(config, catalog, tasks, cancel, checkout_wait)
    }

    /// Builds the pool (without connecting) around an existing catalogue, so a reload that
    /// resizes an upstream keeps its statements and the handles clients hold.
    pub fn with_catalog(
        config: UpstreamConfig,
        catalog: Arc<StatementCache>,
        tasks: TaskTracker,
        cancel: CancellationToken,
        checkout_wait: Option<Histogram>,
    ) -> Arc<Upstream> {
        let catalog_capacity = catalog.capacity();
        let manager = PgManager::new(&config, catalog_capacity, tasks.clone());
        let pool = Pool::builder()
            .max_size(config.pool_max)
            .min_idle(Some(config.pool_min_idle))
            .connection_timeout(config.checkout_timeout())
            .test_on_check_out(false)
            .retry_connection(false)
            .idle_timeout(config.idle_timeout())
            .max_lifetime(config.max_lifetime())
            .reaper_rate(reaper_rate(&config))
            .build_unchecked(manager.clone());
        Arc::new(Upstream {
            catalog,
            manager,
            pool,
            slots: Arc::new(Semaphore::new(config.pool_max as usize)),
            turns: Arc::new(Semaphore::new(config.pool_max as usize * LANE_DEPTH)),
            room: tokio::sync::Notify::new(),
            health: AtomicU8::new(0),
            errors: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            lifecycle: AtomicU8::new(0),
            waiters: AtomicU64::new(0),
            exclusive_waiting: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            checkout_wait,
            cancel,
            tasks,
            config,
            lanes: Mutex::new(Vec::new()),
            grouped: GroupedCounters::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Runs `task` in the background, owned by this upstream (so shutdown waits for it).
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    pub(crate) fn set_health(&self, h: Health) -> Health {
        let v = match h {
            Health::Unknown => 0,
            Health::Up => 1,
            Health::Down => 2,
        };
        Health::from_u8(self.health.swap(v, Ordering::Relaxed))
    }

    /// Counts a failed request against this upstream (for stats).
    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Up to `n` connections that are free right now, without waiting (used to spread one
    /// large pipeline over several connections). Asking also lets the pool grow toward
    /// `pool_max` in the background.
    pub async fn checkout_idle(&self, n: usize) -> Vec<Checkout> {
        let mut extra = Vec::new();
        while extra.len() < n {
            // A free slot means nobody is queued for one.
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => break,
            };
            // A zero timeout still polls the checkout once: an idle connection is returned
            // synchronously by that poll, otherwise nothing is free. bb8's future is large:
            // boxed, so that a request's future carries no room for it.
            let started = Instant::now();
            let get = Box::pin(self.pool.get_owned());
            match tokio::time::timeout(Duration::ZERO, get).await {
                Ok(Ok(conn)) => {
                    if let Some(h) = &self.checkout_wait {
                        h.observe(started.elapsed().as_secs_f64());
                    }
                    extra.push(Checkout { conn, _slot: slot })
                }
                _ => break,
            }
        }
        extra
    }

    /// Whether an operator paused this upstream (checkouts fail at once).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Pauses (`true`) or resumes (`false`) checkouts; returns the previous setting.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.paused.swap(paused, Ordering::Relaxed)
    }

    pub fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle.load(Ordering::Relaxed) {
            1 => Lifecycle::Replaced,
            2 => Lifecycle::Removed,
            _ => Lifecycle::Active,
        }
    }

    /// Takes the upstream out of service after a reload and stops its worker.
    pub(crate) fn retire(&self, how: Lifecycle) {
        let v = match how {
            Lifecycle::Active => 0,
            Lifecycle::Replaced => 1,
            Lifecycle::Removed => 2,
        };
        self.lifecycle.store(v, Ordering::Relaxed);
        self.cancel.cancel();
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Lane>>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A share of a pooled connection for one autocommit request (see [`Lease`]).
    ///
    /// Shared requests take turns first come, first served, like checkouts: at most
    /// `pool_max × LANE_DEPTH` of them hold a turn, and a request with a turn takes room on a
    /// lane whose coalescing group started less than `JOIN_WINDOW` ago (when `coalescable`:
    /// the statement can run in such a group), else an idle connection, else room on any
    /// lane, else waits for whichever of the last two comes first. Without
    /// the turns, a request arriving when a lane has room would overtake those waiting for a
    /// whole connection, which under steady load never comes back to the pool. For the same
    /// reason no request joins a lane while a `checkout()` waits: lanes then drain, and their
    /// connections go to the waiters in arrival order.
    pub async fn lease(self: &Arc<Self>, coalescable: bool) -> Result<Lease, Error> {
        self.admit()?;
        let turn = match self.turns.clone().try_acquire_owned() {
            Ok(turn) => turn,
            // Waiting is the rare path, and its futures are large: boxed, so that every
            // request's future does not carry room for them.
            Err(_) => Box::pin(self.wait_for_turn()).await?,
        };
        // A coalescable statement first joins a lane whose group is just starting: it runs in
        // the next group there, where it costs PostgreSQL a fraction of a statement of its own.
        if coalescable && self.exclusive_waiting.load(Ordering::Relaxed) == 0 {
            if let Some(lane) = self.lane_to_join() {
                return Ok(self.joined(lane, turn));
            }
        }
        if let Some(conn) = self.checkout_idle(1).await.pop() {
            return Ok(self.open_lane(conn, turn));
        }
        Box::pin(self.lease_when_free(turn)).await
    }

    /// A turn among shared requests, waited for in arrival order.
    async fn wait_for_turn(&self) -> Result<OwnedSemaphorePermit, Error> {
        match self.queued(self.turns.clone().acquire_owned()).await {
            Some(Ok(turn)) => Ok(turn),
            _ => Err(self.pool_timeout()),
        }
    }

    /// `lease` with no idle connection and no group to join: the first of a connection of its
    /// own and room on a lane.
    async fn lease_when_free(self: &Arc<Self>, turn: OwnedSemaphorePermit) -> Result<Lease, Error> {
        // One place in the queue for a connection, kept while room on lanes is looked for.
        let slot = self.take_slot();
        tokio::pin!(slot);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before looking, so room made after the look still wakes this request.
            room.as_mut().enable();
            // While a request waits for a connection of its own, joining lanes would keep them
            // busy for ever: shared requests queue for connections behind it instead.
            if self.exclusive_waiting.load(Ordering::Relaxed) == 0 {
                if let Some(lane) = self.lane_with_room() {
                    return Ok(self.joined(lane, turn));
                }
            }
            tokio::select! {
                conn = &mut slot => return Ok(self.open_lane(conn?, turn)),
                _ = &mut room => {}
            }
        }
    }

    /// The least used lane with room for one more request, counted in.
    fn lane_with_room(&self) -> Option<Arc<Lane>> {
        let lanes = self.lanes();
        let lane = lanes_with_room(&lanes).min_by_key(|l| l.users.load(Ordering::Relaxed))?;
        Some(counted_in(lane))
    }

    /// The busiest lane with room whose coalescing gate started its work less than
    /// `JOIN_WINDOW` ago, counted in.
    fn lane_to_join(&self) -> Option<Arc<Lane>> {
        let lanes = self.lanes();
        let lane = lanes_with_room(&lanes)
            .filter(|l| l.gate.joinable(JOIN_WINDOW))
            .max_by_key(|l| l.users.load(Ordering::Relaxed))?;
        Some(counted_in(lane))
    }

    fn joined(self: &Arc<Self>, lane: Arc<Lane>, turn: OwnedSemaphorePermit) -> Lease {
        Lease {
            lane,
            up: self.clone(),
            _turn: Some(turn),
            waiting: AtomicBool::new(false),
        }
    }

    fn open_lane(self: &Arc<Self>, conn: Checkout, turn: OwnedSemaphorePermit) -> Lease {
        let lane = Arc::new(Lane {
            conn,
            users: AtomicU64::new(1),
            gate: Gate::default(),
        });
        self.lanes().push(lane.clone());
        self.joined(lane, turn)
    }

    /// Refuses new work on a paused or removed upstream.
    fn admit(&self) -> Result<(), Error> {
        if self.is_paused() {
            return Err(Error::new(
                Code::UpstreamUnavailable,
                format!(
                    "upstream \"{}\" is paused by an operator (POST /upstreams/{}/resume on the admin port resumes it)",
                    self.config.name, self.config.name
                ),
            ));
        }
        if self.lifecycle() == Lifecycle::Removed {
            return Err(Error::new(
                Code::UpstreamUnavailable,
                format!(
                    "upstream \"{}\" was removed from the configuration by a reload",
                    self.config.name
                ),
            ));
        }
        Ok(())
    }

    /// Borrows a pooled connection for one request or one transaction, first come, first
    /// served, waiting at most `checkout_timeout_ms`.
    pub async fn checkout(&self) -> Result<Checkout, Error> {
        let _exclusive = Waiting::start(&self.exclusive_waiting);
        // Boxed: bb8's checkout future is large, and most requests lease instead.
        let conn = Box::pin(self.take_slot()).await;
        // Shared requests held back while this one waited may use lanes again.
        self.room.notify_waiters();
        conn
    }

    /// Waits for a slot (in arrival order) and takes a connection with it.
    async fn take_slot(&self) -> Result<Checkout, Error> {
        self.admit()?;
        if self.health() == Health::Down {
            if let Some(reason) = self.manager.recent_error(Duration::from_secs(30)) {
                return Err(self.unavailable(&reason));
            }
        }
        let wait = async {
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| RunError::TimedOut)?;
            let conn = self.pool.get_owned().await?;
            Ok::<_, RunError<ConnectError>>(Checkout { conn, _slot: slot })
        };
        match self.queued(wait).await {
            Some(Ok(conn)) => Ok(conn),
            Some(Err(RunError::User(e))) => Err(self.unavailable(&e.describe())),
            Some(Err(RunError::TimedOut)) | None => Err(self.pool_timeout()),
        }
    }

    /// Runs `wait` as a request waiting for the pool: counted in the waiter gauge, timed into
    /// the checkout-wait histogram, and bounded by `checkout_timeout_ms` (`None` once it runs
    /// out).
    async fn queued<T>(&self, wait: impl std::future::Future<Output = T>) -> Option<T> {
        let started = Instant::now();
        let done = {
            let _waiting = Waiting::start(&self.waiters);
            tokio::time::timeout(self.config.checkout_timeout(), wait)
                .await
                .ok()
        };
        if let Some(h) = &self.checkout_wait {
            h.observe(started.elapsed().as_secs_f64());
        }
        done
    }

    /// What a checkout that waited out `checkout_timeout_ms` answers (and counts it).
    fn pool_timeout(&self) -> Error {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        let window = self.config.checkout_timeout() + self.config.connect_timeout();
        match self.manager.recent_error(window) {
            Some(reason) => self.unavailable(&reason),
            None => Error::new(
                Code::PoolTimeout,
                format!(
                    "no connection to \"{}\" became free within {} ms (pool_max {})",
                    self.config.name, self.config.checkout_timeout_ms, self.config.pool_max
                ),
            ),
        }
    }

    fn unavailable(&self, reason: &str) -> Error {
        Error::new(
            Code::UpstreamUnavailable,
            format!("upstream \"{}\" is unavailable: {reason}", self.config.name),
        )
    }

    /// Opens a connection outside the pool (credential checks for `connect_pg`).
    pub async fn probe(&self) -> Result<(), ConnectError> {
        self.manager.open().await.map(drop)
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.pool.state();
        PoolStats {
            name: self.config.name.clone(),
            health: self.health(),
            paused: self.is_paused(),
            required: self.config.required,
            sslmode: if self.config.is_socket_dir() {
                SslMode::Disable
            } else {
                self.config.sslmode
            },
            size: state.connections,
            idle: state.idle_connections,
            in_use: state.connections.saturating_sub(state.idle_connections),
            max: self.config.pool_max,
            waiters: self.waiters.load(Ordering::Relaxed),
            checkouts: state.statistics.get_started,
            checkout_timeouts: self.timeouts.load(Ordering::Relaxed),
            connections_opened: state.statistics.connections_created,
            connections_closed: ClosedConnections {
                // The daemon never asks bb8 to validate a connection, so "invalid" stays 0.
                broken: state.statistics.connections_closed_broken
                    + state.statistics.connections_closed_invalid,
                max_lifetime: state.statistics.connections_closed_max_lifetime,
                idle_timeout: state.statistics.connections_closed_idle_timeout,
            },
            errors: self.errors.load(Ordering::Relaxed),
            grouped_statements: self.grouped.statements.load(Ordering::Relaxed),
            grouped_reruns: self.grouped.reruns.load(Ordering::Relaxed),
            coalesced_statements: self.grouped.coalesced.load(Ordering::Relaxed),
            coalesced_groups: self.grouped.coalesced_groups.load(Ordering::Relaxed),
        }
    }

    /// One health check: a pooled connection answers an empty query.
    async fn check(&self) -> Result<(), String> {
        let limit = self.config.connect_timeout() + Duration::from_millis(500);
        let attempt = async {
            let conn = self.pool.get().await.map_err(|e| match e {
                RunError::User(e) => e.describe(),
                RunError::TimedOut => self
                    .manager
                    .recent_error(limit * 2)
                    .unwrap_or_else(|| "timed out waiting for a connection".into()),
            })?;
            conn.client
                .simple_query("")
                .await
                .map(drop)
                .map_err(|e| describe_connect_error(&e))
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(self
                .manager
                .recent_error(limit * 2)
                .unwrap_or_else(|| format!("no answer within {} ms", limit.as_millis()))),
        }
    }

    /// The worker loop: health checks until cancelled. Runs under the supervisor, which
    /// restarts it if it ever panics.
    pub async fn run_worker(self: Arc<Self>) {
        loop {
            let result = self.check().await;
            let now = if result.is_ok() {
                Health::Up
            } else {
                Health::Down
            };
            let before = self.set_health(now);
            match (&result, before) {
                (Ok(()), Health::Up) => {}
                (Ok(()), _) => tracing::info!("upstream is up"),
                (Err(reason), Health::Down) => {
                    tracing::debug!(%reason, "upstream still down")
                }
                (Err(reason), _) => {
                    tracing::warn!(%reason, "upstream is down; retrying every second")
                }
            }
            let wait = match now {
                Health::Up => self.config.health_interval(),
                _ => self.config.health_interval().min(Duration::from_secs(1)),
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
