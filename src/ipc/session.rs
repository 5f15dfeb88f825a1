//! One client connection: reads frames, runs requests, writes answers in request order.
//!
//! Outside a transaction, independent requests (SQL ops and `ping`) run concurrently — up to
//! `max_in_flight` of them, each on its own pooled connection — and their answers are queued in
//! a `FuturesOrdered`, so they leave in request order. Requests that change the session (`hello`,
//! `connect`, `begin`, …) and everything inside a transaction are barriers: the queue is drained
//! first, then they run alone. On shutdown or end of input the session stops reading, answers
//! what is in flight, rolls back an open transaction and ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::error::{Code, Error};
use crate::ipc::codec::{FrameDecoder, FrameError};
use crate::ipc::ops::{self, session_ops, transaction, Op, Tx};
use crate::ipc::reply::Reply;
use crate::ipc::request::{parse, Peek, Request};
use crate::ipc::Shared;
use crate::upstream::Upstream;

type Pending = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// Initial read buffer per connection; it grows only for large frames.
const READ_BUFFER: usize = 2048;

/// One client connection's state.
pub struct Session {
    shared: Arc<Shared>,
    id: String,
    upstream: Option<Arc<Upstream>>,
    tx: Option<Tx>,
    authed: bool,
    cancel: CancellationToken,
}

enum Next {
    Continue,
    Close,
}

impl Session {
    pub fn new(shared: Arc<Shared>, id: String, cancel: CancellationToken) -> Session {
        let authed = shared.token.is_none();
        Session {
            shared,
            id,
            upstream: None,
            tx: None,
            authed,
            cancel,
        }
    }

    /// Serves the connection until the client leaves, sends `close`, or the daemon stops.
    pub async fn run(mut self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut frames =
            FramedRead::with_capacity(read, FrameDecoder::new(self.shared.max_frame), READ_BUFFER);
        let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut reading = true;
        loop {
            tokio::select! {
                biased;
                Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                    if write.write_all(&answer).await.is_err() {
                        break;
                    }
                }
                _ = self.cancel.cancelled(), if reading => reading = false,
                frame = frames.next(), if reading && in_flight.len() < self.shared.max_in_flight => {
                    match frame {
                        Some(Ok(frame)) => match self.route(frame) {
                            Ok(pending) => in_flight.push_back(pending),
                            Err(frame) => {
                                if drain(&mut in_flight, &mut write).await.is_err() {
                                    break;
                                }
                                let (answer, next) = self.run_inline(&frame).await;
                                if write.write_all(&answer).await.is_err() {
                                    break;
                                }
                                if let Next::Close = next {
                                    reading = false;
                                }
                            }
                        },
                        Some(Err(FrameError::TooLarge { len, max })) => {
                            let _ = drain(&mut in_flight, &mut write).await;
                            let e = Error::new(
                                Code::FrameTooLarge,
                                format!("frame of {len} bytes exceeds the {max}-byte limit; closing the connection"),
                            );
                            tracing::debug!(len, max, "refused oversized frame");
                            let _ = write.write_all(&Reply::new(None).fail(&e)).await;
                            break;
                        }
                        Some(Err(FrameError::Io(e))) => {
                            tracing::debug!(error = %e, "client read failed");
                            reading = false;
                        }
                        None => reading = false,
                    }
                }
                else => break,
            }
        }
        let _ = write.shutdown().await;
        if let Some(tx) = self.tx.take() {
            transaction::abandon(tx).await;
        }
    }

    /// Independent requests become a pending answer; barriers are handed back to run inline.
    fn route(&self, frame: Bytes) -> Result<Pending, Bytes> {
        if self.tx.is_some() {
            return Err(frame);
        }
        let op = match serde_json::from_slice::<Peek<'_>>(&frame) {
            Ok(Peek { op: Some(op) }) => Op::parse(&op).ok(),
            _ => None,
        };
        match op {
            Some(op) if op.is_independent() && self.authed => {
                let shared = self.shared.clone();
                let upstream = self.upstream.clone();
                Ok(Box::pin(async move {
                    match parse(&frame) {
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
                            reply.conclude(result, shared.max_frame)
                        }
                        Err((id, e)) => Reply::new(id.map(RawValue::get)).fail(&e),
                    }
                }))
            }
            _ => Err(frame),
        }
    }

    /// Runs one request with the session to itself.
    async fn run_inline(&mut self, frame: &[u8]) -> (Vec<u8>, Next) {
        let req = match parse(frame) {
            Ok(req) => req,
            Err((id, e)) => return (Reply::new(id.map(RawValue::get)).fail(&e), Next::Continue),
        };
        let mut reply = Reply::new(req.id.map(RawValue::get));
        let mut next = Next::Continue;
        let result = self.dispatch(&req, &mut reply, &mut next).await;
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
                let up = self.upstream.clone().ok_or_else(not_connected)?;
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
                run_independent(
                    &self.shared,
                    self.upstream.as_ref(),
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

/// Writes every queued answer, in order.
async fn drain(
    in_flight: &mut FuturesOrdered<Pending>,
    write: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    while let Some(answer) = in_flight.next().await {
        write.write_all(&answer).await?;
    }
    Ok(())
}
