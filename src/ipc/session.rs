//! One client connection: reads frames, runs requests, writes answers in request order.
//!
//! Outside a transaction, independent requests (SQL ops and `ping`) run concurrently — up to
//! `max_in_flight` of them, each on its own pooled connection — and their answers are queued in
//! a `FuturesOrdered`, so they leave in request order. Requests that change the session (`hello`,
//! `connect`, `begin`, …) and everything inside a transaction are barriers: the queue is drained
//! first, then they run alone. On shutdown or end of input the session stops reading, answers
//! what is in flight, rolls back an open transaction and ends. If the shutdown grace period
//! ends first, the session is cut off: the `Ledger` of unanswered request ids lets it answer
//! them `shutting_down`, and their work in PostgreSQL is cancelled (`ops::Unfinished`).
//!
//! Observability on this path is kept to atomics: per request one `Instant`, the op's
//! pre-resolved counters and histogram, the client's in-flight gauge, and frame byte counters.
//! A pipeline of 10,000 statements is one request here, so nothing is done per row or statement.
//! When a reload replaced the session's upstream, the session moves to the successor before its
//! next request (never inside a transaction, which stays on the connection it pinned).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::error::{Code, Error};
use crate::ipc::codec::{FrameDecoder, FrameError};
use crate::ipc::ops::{self, session_ops, transaction, Op, Tx};
use crate::ipc::reply::Reply;
use crate::ipc::request::{parse, Peek, Request};
use crate::ipc::{ClientInfo, Shared};
use crate::net::{UnixConn, UnixRead, UnixWrite};
use crate::upstream::{Lifecycle, Upstream};

type Pending = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// Initial read buffer per connection; it grows only for large frames.
const READ_BUFFER: usize = 2048;

/// How long a session cut off at the end of the shutdown grace period may take to tell its
/// client which requests did not finish.
const CUT_OFF_WRITE: Duration = Duration::from_millis(200);

/// One client connection's state.
pub struct Session {
    shared: Arc<Shared>,
    id: String,
    upstream: Option<Arc<Upstream>>,
    tx: Option<Tx>,
    authed: bool,
    cancel: CancellationToken,
    /// This client's entry in the registry `/clients` lists.
    info: Arc<ClientInfo>,
    ledger: Ledger,
}

/// The ids of the requests accepted but not answered yet, in answer order, and whether an
/// answer is half written: what a session needs to tell its client when the shutdown grace
/// period ends before its requests do.
#[derive(Default)]
struct Ledger {
    ids: VecDeque<Option<Box<str>>>,
    torn: bool,
}

impl Ledger {
    /// Writes one answer frame, counting its bytes; `listed` answers settle the oldest id.
    async fn send(
        &mut self,
        shared: &Shared,
        write: &mut UnixWrite,
        answer: &[u8],
        listed: bool,
    ) -> std::io::Result<()> {
        shared.metrics.frame_out(answer.len());
        self.torn = true;
        write.write_all(answer).await?;
        self.torn = false;
        if listed {
            self.ids.pop_front();
        }
        Ok(())
    }

    /// Answers `shutting_down` to every request still unanswered when the session is cut off
    /// (unless an answer was cut half-way, which leaves nothing sound to write after it), within
    /// a short time, so a client that does not read cannot hold the shutdown up.
    async fn cut_off(&mut self, shared: &Shared, write: &mut UnixWrite) {
        if self.torn || self.ids.is_empty() {
            return;
        }
        let e = Error::new(
            Code::ShuttingDown,
            "the daemon stopped before this request finished (its shutdown grace period ended); \
             what of it still ran in PostgreSQL was cancelled",
        );
        let mut out = Vec::new();
        for id in self.ids.drain(..) {
            shared.metrics.count_error(e.code());
            out.extend_from_slice(&Reply::new(id.as_deref()).fail(&e));
        }
        shared.metrics.frame_out(out.len());
        let _ = tokio::time::timeout(CUT_OFF_WRITE, write.write_all(&out)).await;
    }
}

enum Next {
    Continue,
    Close,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        id: String,
        info: Arc<ClientInfo>,
        cancel: CancellationToken,
    ) -> Session {
        let authed = shared.token.is_none();
        Session {
            shared,
            id,
            upstream: None,
            tx: None,
            authed,
            cancel,
            info,
            ledger: Ledger::default(),
        }
    }

    /// The session's upstream, moved to its successor first if a reload replaced it.
    fn current_upstream(&mut self) -> Option<Arc<Upstream>> {
        let up = self.upstream.as_ref()?;
        if self.tx.is_none() && up.lifecycle() == Lifecycle::Replaced {
            if let Some(next) = self.shared.supervisor.get(up.name()) {
                self.upstream = Some(next);
            }
        }
        self.upstream.clone()
    }

    /// Serves the connection until the client leaves, sends `close`, or the daemon stops.
    pub async fn run(mut self, stream: UnixConn) {
        let (read, mut write) = stream.into_split();
        let hard_stop = self.shared.hard_stop.clone();
        tokio::select! {
            biased;
            _ = hard_stop.cancelled() => {
                // The grace period is over: dropping the transaction discards its connection.
                if self.tx.take().is_some() {
                    tracing::warn!("open transaction abandoned at the end of the shutdown grace period");
                }
                self.ledger.cut_off(&self.shared, &mut write).await;
            }
            _ = self.serve(read, &mut write) => {}
        }
        let _ = write.shutdown().await;
        if let Some(tx) = self.tx.take() {
            Box::pin(transaction::abandon(tx)).await;
        }
    }

    /// The read–dispatch–answer loop; returns when the session should end.
    async fn serve(&mut self, read: UnixRead, write: &mut UnixWrite) {
        let mut frames =
            FramedRead::with_capacity(read, FrameDecoder::new(self.shared.max_frame), READ_BUFFER);
        let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut reading = true;
        // On shutdown a session stops reading, except that a client inside a transaction may
        // still finish it (within the daemon's grace period); reading stops once it has.
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                    if self.ledger.send(&self.shared, &mut *write, &answer, true).await.is_err() {
                        break;
                    }
                }
                _ = self.cancel.cancelled(), if reading && !stopping => {
                    stopping = true;
                    if self.tx.is_none() {
                        reading = false;
                        if refuse_arrived(&self.shared, &mut frames, &mut in_flight, &mut self.ledger).is_err() {
                            break;
                        }
                    }
                }
                frame = frames.next(), if reading && in_flight.len() < self.shared.max_in_flight => {
                    match frame {
                        Some(Ok(frame)) => match self.route(frame) {
                            Ok(pending) => in_flight.push_back(pending),
                            Err(frame) => {
                                if drain(&self.shared, &mut in_flight, &mut *write, &mut self.ledger).await.is_err() {
                                    break;
                                }
                                // Boxed: the session task lives as long as its client, and
                                // would otherwise keep room for these requests all along.
                                let (answer, next) = Box::pin(self.run_inline(&frame)).await;
                                if self.ledger.send(&self.shared, &mut *write, &answer, true).await.is_err() {
                                    break;
                                }
                                if matches!(next, Next::Close) {
                                    reading = false;
                                } else if stopping && self.tx.is_none() {
                                    reading = false;
                                    if refuse_arrived(&self.shared, &mut frames, &mut in_flight, &mut self.ledger).is_err() {
                                        break;
                                    }
                                }
                            }
                        },
                        Some(Err(FrameError::TooLarge { len, max })) => {
                            let _ = drain(&self.shared, &mut in_flight, &mut *write, &mut self.ledger).await;
                            let e = Error::new(
                                Code::FrameTooLarge,
                                format!("frame of {len} bytes exceeds the {max}-byte limit; closing the connection"),
                            );
                            tracing::debug!(len, max, "refused oversized frame");
                            self.shared.metrics.count_error(e.code());
                            let _ = self.ledger.send(&self.shared, &mut *write, &Reply::new(None).fail(&e), false).await;
                            break;
                        }
                        Some(Err(FrameError::Io(e))) => {
                            tracing::debug!(error = %e, "client read failed");
                            reading = false;
                        }
                        None => {
                            // The end of the stream. A client that only shut down its writing
                            // side still reads its answers; one that closed the connection
                            // never will, so its requests are dropped now (`ops::Unfinished`):
                            // none still waiting for a connection or in a coalescing queue
                            // starts work for nobody later.
                            if frames.get_ref().peer_closed() {
                                tracing::debug!(in_flight = in_flight.len(), "client closed the connection");
                                break;
                            }
                            reading = false;
                        }
                    }
                }
                else => break,
            }
        }
    }

    /// Independent requests become a pending answer; barriers are handed back to run inline.
    fn route(&mut self, frame: Bytes) -> Result<Pending, Bytes> {
        self.shared.metrics.frame_in(frame.len() + 4);
        let peek = serde_json::from_slice::<Peek<'_>>(&frame).ok();
        let id = peek
            .as_ref()
            .and_then(|p| p.id)
            .map(|id| Box::from(id.get()));
        self.ledger.ids.push_back(id);
        if self.tx.is_some() {
            return Err(frame);
        }
        let op = peek.and_then(|p| p.op).and_then(|op| Op::parse(&op).ok());
        match op {
            Some(op) if op.is_independent() && self.authed => {
                let shared = self.shared.clone();
                let upstream = self.current_upstream();
                let in_flight = self.info.begin_request();
                Ok(Box::pin(async move {
                    let started = Instant::now();
                    let answer = match parse(&frame) {
                        Ok(req) => {
                            let mut reply = Reply::new(req.id.map(RawValue::get));
                            let result = run_independent(
                                &shared,
                                upstream.as_ref(),
                                None,
                                op,
                                &req,
                                &mut reply,
                            )
                            .await;
                            shared
                                .metrics
                                .record(Some(op), started, result.as_ref().err());
                            reply.conclude(result, shared.max_frame)
                        }
                        Err((id, e)) => {
                            shared.metrics.record(Some(op), started, Some(&e));
                            Reply::new(id.map(RawValue::get)).fail(&e)
                        }
                    };
                    drop(in_flight);
                    answer
                }))
            }
            _ => Err(frame),
        }
    }

    /// Runs one request with the session to itself.
    async fn run_inline(&mut self, frame: &[u8]) -> (Vec<u8>, Next) {
        let started = Instant::now();
        let _in_flight = self.info.begin_request();
        let req = match parse(frame) {
            Ok(req) => req,
            Err((id, e)) => {
                self.shared.metrics.record(None, started, Some(&e));
                return (Reply::new(id.map(RawValue::get)).fail(&e), Next::Continue);
            }
        };
        let op = req.op.as_deref().and_then(|name| Op::parse(name).ok());
        let mut reply = Reply::new(req.id.map(RawValue::get));
        let mut next = Next::Continue;
        let result = self.dispatch(&req, &mut reply, &mut next).await;
        self.shared
            .metrics
            .record(op, started, result.as_ref().err());
        (reply.conclude(result, self.shared.max_frame), next)
    }

    async fn dispatch(
        &mut self,
        req: &Request<'_>,
        reply: &mut Reply,
        next: &mut Next,
    ) -> Result<(), Error> {
        let op = Op::parse(req.op.as_deref().unwrap_or_default())?;
        if !self.authed && !op.needs_no_auth() {
            return Err(Error::new(
                Code::AuthFailed,
                "this daemon requires a token: send hello with \"token\" first",
            ));
        }
        match op {
            Op::Hello => {
                self.authed = session_ops::hello(&self.shared, &self.id, req, reply)?;
                if let Some(name) = req.client.as_deref() {
                    self.info.set_name(name);
                    tracing::Span::current().record("client", tracing::field::display(name));
                }
                Ok(())
            }
            Op::Connect | Op::ConnectPg => {
                let up = if op == Op::Connect {
                    session_ops::connect(&self.shared, req, reply)?
                } else {
                    session_ops::connect_pg(&self.shared, req, reply).await?
                };
                if let Some(tx) = &self.tx {
                    if !Arc::ptr_eq(&tx.up, &up) {
                        return Err(Error::new(
                            Code::Forbidden,
                            "cannot switch upstream inside a transaction: commit or roll back first",
                        ));
                    }
                }
                self.info.set_upstream(up.name());
                tracing::Span::current().record("upstream", tracing::field::display(up.name()));
                self.upstream = Some(up);
                Ok(())
            }
            Op::Begin => {
                if self.tx.is_some() {
                    return Err(Error::new(
                        Code::TransactionState,
                        "a transaction is already open: commit or roll back first",
                    ));
                }
                let up = self.current_upstream().ok_or_else(not_connected)?;
                self.tx = Some(transaction::begin(&up, req, reply).await?);
                Ok(())
            }
            Op::Commit | Op::Rollback => {
                let tx = self.tx.take().ok_or_else(|| {
                    Error::new(
                        Code::TransactionState,
                        "no transaction in progress: send begin first",
                    )
                })?;
                if op == Op::Commit {
                    transaction::commit(tx, reply).await
                } else {
                    transaction::rollback(tx, reply).await
                }
            }
            Op::Close => {
                *next = Next::Close;
                Ok(())
            }
            _ => {
                let upstream = self.current_upstream();
                run_independent(
                    &self.shared,
                    upstream.as_ref(),
                    self.tx.as_mut(),
                    op,
                    req,
                    reply,
                )
                .await
            }
        }
    }
}

fn not_connected() -> Error {
    Error::new(
        Code::NotConnected,
        "no upstream selected: send connect or connect_pg first",
    )
}

/// `ping` and the SQL ops.
async fn run_independent(
    shared: &Shared,
    upstream: Option<&Arc<Upstream>>,
    tx: Option<&mut Tx>,
    op: Op,
    req: &Request<'_>,
    reply: &mut Reply,
) -> Result<(), Error> {
    if op == Op::Ping {
        return Ok(());
    }
    let up = upstream.ok_or_else(not_connected)?;
    let limit = match req.timeout_ms {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
        None => shared.statement_timeout,
    };
    ops::run_sql(op, up, tx, req, limit, reply).await
}

/// At shutdown: answers `shutting_down` to every request that has already arrived (without
/// waiting for more), so a client learns why instead of just seeing the connection close.
fn refuse_arrived(
    shared: &Arc<Shared>,
    frames: &mut FramedRead<UnixRead, FrameDecoder>,
    in_flight: &mut FuturesOrdered<Pending>,
    ledger: &mut Ledger,
) -> Result<(), ()> {
    use futures_util::FutureExt;
    while let Some(Some(frame)) = frames.next().now_or_never() {
        let Ok(frame) = frame else {
            return Err(());
        };
        let id = match parse(&frame) {
            Ok(req) => req.id.map(|id| id.get().to_owned()),
            Err((id, _)) => id.map(|id| id.get().to_owned()),
        };
        let e = Error::new(
            Code::ShuttingDown,
            "the daemon is shutting down: retry on a new connection once it is back",
        );
        shared.metrics.count_error(e.code());
        let answer = Reply::new(id.as_deref()).fail(&e);
        ledger.ids.push_back(id.map(String::into_boxed_str));
        in_flight.push_back(Box::pin(std::future::ready(answer)));
    }
    Ok(())
}

/// Writes every queued answer, in order.
async fn drain(
    shared: &Shared,
    in_flight: &mut FuturesOrdered<Pending>,
    write: &mut UnixWrite,
    ledger: &mut Ledger,
) -> std::io::Result<()> {
    while let Some(answer) = in_flight.next().await {
        ledger.send(shared, write, &answer, true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::supervisor::Supervisor;

    /// A session's task lives as long as its client, idle or not: what only some requests need
    /// (a request run inline, rolling back a transaction left open) is boxed when it happens,
    /// so that each connected client does not keep room for it (11.7 KiB in a debug build
    /// before, 2.2 KiB now).
    #[tokio::test]
    async fn a_session_task_keeps_no_room_for_the_requests_it_runs() {
        let toml = "[ipc]\nsocket = \"/tmp/qail-session-unit/q.sock\"\n[[upstreams]]\nname = \"main\"\nuser = \"app\"\npassword = \"pw\"\n";
        let cfg = Config::from_toml_str(toml, &HashMap::new()).unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let supervisor = Supervisor::without_workers(&cfg, metrics.clone());
        let shared = Arc::new(Shared::new(&cfg, supervisor, metrics));
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let info = Arc::new(ClientInfo::new("s1".into(), 0, 0));
        let session = Session::new(shared, "s1".into(), info, CancellationToken::new());
        let task = session.run(UnixConn::new(ours).unwrap());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 4096, "a session's task takes {size} bytes");
    }
}
