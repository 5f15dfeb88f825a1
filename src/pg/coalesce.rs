//! Coalescing: single read-only statements of different clients that share one connection
//! (an `upstream::Lease`) run together as one grouped burst (`pg::burst`) instead of one Sync
//! each.
//!
//! Each shared connection has a [`Gate`]. A statement that finds the gate free runs at once,
//! through tokio-postgres as it would alone, so a lone client pays nothing for coalescing.
//! Statements that arrive while the gate is busy wait in its queue; when the running work
//! ends, everything queued is handed to a runner task that executes it as one burst (a single
//! statement, or a few, go through tokio-postgres pipelined instead) and answers each waiter,
//! then takes what queued up meanwhile, until the queue is empty.
//!
//! Invariants:
//! - Only statements that [`burst::eligible`] accepts are queued, and only outside a
//!   transaction: a group is one read-only implicit transaction, and a statement that fails or
//!   is skipped in it runs again on its own, so every client sees exactly the answer it would
//!   have had alone (`pg::burst`).
//! - The runner is a task of its own holding a share of the connection, never the future of a
//!   client's request: a client that disconnects while its statement waits or runs cannot
//!   strand the others queued behind it. A statement whose request went away before its group
//!   started is not run, and the connection stays in the pool (the request is marked waiting on
//!   its `Lease`, so `ops::Unfinished` does not abandon the connection).
//! - The gate's lock is held for queue operations only, never across an await.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_postgres::Statement;
use tracing::Instrument;

use crate::catalog::Entry;
use crate::error::{Code, Error};
use crate::pg::burst::{self, Grouping, Item};
use crate::pg::exec::{run_outcome, Outcome};
use crate::upstream::Lease;
use crate::values::TextParam;

/// Below this many queued statements the runner pipelines them through tokio-postgres: the
/// group's read-only switch would cost about what the saved Syncs do.
const MIN_GROUP: usize = 3;

/// The queue of one shared connection.
#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    /// When the work running through the gate started ([`micros`]), 0 while nothing runs.
    /// Read without the lock, to choose a connection to join (`upstream::Upstream::lease`).
    started: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Something runs on the connection through this gate (a statement or a runner).
    busy: bool,
    waiting: Vec<Job>,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the gate runs work that started less than `window` ago, so a statement queued
    /// now runs soon, in the next group. A statement that has been running for longer may be a
    /// slow one: nothing should queue behind it that could run elsewhere.
    pub fn joinable(&self, window: Duration) -> bool {
        let started = self.started.load(Ordering::Relaxed);
        started != 0 && micros().saturating_sub(started) < window.as_micros() as u64
    }

    /// Records that the gate's work (a statement, or the runner's next group) starts now.
    fn starting(&self) {
        self.started.store(micros(), Ordering::Relaxed);
    }

    /// Records that nothing runs through the gate any more.
    fn idle(&self, state: &mut State) {
        state.busy = false;
        self.started.store(0, Ordering::Relaxed);
    }
}

/// Microseconds since the first call, never 0.
fn micros() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// One statement to run: what `pg::exec::run_one` would run on its own.
pub struct Work {
    pub entry: Arc<Entry>,
    pub stmt: Statement,
    pub params: Vec<TextParam>,
    pub keep_rows: bool,
}

struct Job {
    work: Work,
    answer: oneshot::Sender<Result<Outcome, Error>>,
}

/// Runs `work` on the leased connection, together with its neighbours' statements when they
/// arrive at once. `work.entry` must be [`burst::eligible`] and `work.stmt` prepared on the
/// connection; the request must be outside a transaction.
pub async fn run(lease: &Lease, work: Work) -> Result<Outcome, Error> {
    let work = {
        let mut state = lease.gate().state();
        if state.busy {
            let (answer, waiting) = oneshot::channel();
            state.waiting.push(Job { work, answer });
            Err(waiting)
        } else {
            state.busy = true;
            lease.gate().starting();
            Ok(work)
        }
    };
    let work = match work {
        Ok(work) => work,
        Err(waiting) => {
            // Dropped while waiting here, the request abandons nothing (`ops::Unfinished`).
            return lease.waiting_on(waiting).await.unwrap_or_else(|_| {
                Err(Error::new(
                    Code::UpstreamUnavailable,
                    "the connection running this statement together with others was lost",
                ))
            });
        }
    };
    // The gate was free: run alone, then hand whatever queued up meanwhile to a runner (also
    // when this request is dropped half-way).
    let turn = Turn(lease);
    let result = run_outcome(&lease.client, &work.stmt, &work.params, work.keep_rows).await;
    drop(turn);
    result
}

/// The gate's holder, while a request runs its own statement.
struct Turn<'a>(&'a Lease);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        release(self.0);
    }
}

/// Frees the gate, or hands what is queued to a new runner.
fn release(lease: &Lease) {
    let jobs = {
        let mut state = lease.gate().state();
        if state.waiting.is_empty() {
            lease.gate().idle(&mut state);
            return;
        }
        lease.gate().starting();
        std::mem::take(&mut state.waiting)
    };
    let share = lease.share();
    let span = tracing::debug_span!("coalesce", upstream = %lease.upstream_name());
    lease.spawn(runner(share, jobs).instrument(span));
}

/// Runs queued statements until the queue stays empty, answering each waiter.
async fn runner(lease: Lease, mut jobs: Vec<Job>) {
    let mut stuck = Stuck(Some(&lease));
    loop {
        // The statements of requests that went away (their client left) are not run.
        jobs.retain(|job| !job.answer.is_closed());
        if !jobs.is_empty() {
            let results = run_jobs(&lease, &jobs).await;
            let counters = lease.grouped();
            counters
                .coalesced
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            counters.coalesced_groups.fetch_add(1, Ordering::Relaxed);
            for (job, result) in jobs.drain(..).zip(results) {
                // A waiter that went away meanwhile just drops its answer.
                let _ = job.answer.send(result);
            }
        }
        let mut state = lease.gate().state();
        if state.waiting.is_empty() {
            lease.gate().idle(&mut state);
            stuck.0 = None;
            return;
        }
        lease.gate().starting();
        jobs = std::mem::take(&mut state.waiting);
    }
}

/// Frees the gate if a runner ends other than by emptying the queue (a panic, or the runtime
/// shutting down): the statements still queued are answered with an error (their senders
/// drop) instead of waiting forever, and the next statement finds the gate free.
struct Stuck<'a>(Option<&'a Lease>);

impl Drop for Stuck<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.0 {
            let mut state = lease.gate().state();
            state.waiting.clear();
            lease.gate().idle(&mut state);
        }
    }
}

async fn run_jobs(lease: &Lease, jobs: &[Job]) -> Vec<Result<Outcome, Error>> {
    let keep_rows = jobs.iter().any(|j| j.work.keep_rows);
    let items: Vec<Item<'_>> = jobs
        .iter()
        .map(|j| Item {
            entry: &j.work.entry,
            stmt: &j.work.stmt,
            params: &j.work.params,
        })
        .collect();
    if items.len() < MIN_GROUP {
        return burst::run_ungrouped(lease, &items, keep_rows).await;
    }
    let rows = if keep_rows {
        burst::Rows::Keep
    } else {
        burst::Rows::Skip
    };
    burst::run_items(lease, &items, rows, lease.grouped(), Grouping::ReadOnly).await
}
