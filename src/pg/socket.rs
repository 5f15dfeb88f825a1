//! The socket under a pooled PostgreSQL connection, which the daemon can borrow from
//! tokio-postgres for a burst of its own protocol messages (see `pg::burst`).
//!
//! The daemon opens the socket itself ([`Endpoint::connect`]) and hands tokio-postgres a
//! [`PgStream`] over it. While a [`Borrowed`] guard lives, `PgStream` tells tokio-postgres the
//! socket is not ready and parks its waker; dropping the guard wakes it and tokio-postgres
//! carries on where it was. Invariant: a borrow is only taken while tokio-postgres has no
//! request in flight on the connection, so neither side ever reads the other's answers. The
//! socket sits behind a mutex that is held for one poll at a time, never across an await.
//!
//! To know that without a round trip, `PgStream` follows the message framing of what
//! tokio-postgres writes and reads (`Traffic`): every request it sends ends with a Sync (or is
//! a simple Query), and each of those is answered by exactly one ReadyForQuery. When the counts
//! match, no request is half written and both directions sit at a message boundary,
//! tokio-postgres has nothing in flight.
//!
//! A borrow ends with [`Borrowed::release`] once everything it asked has been answered. A borrow
//! dropped before that (an error, a cancelled future) poisons the socket: the server may still be
//! sending the rest of the burst's answers, so tokio-postgres' reads and writes fail from then on
//! rather than hand those answers to requests of other clients sharing the connection.
//!
//! Under TLS the encryption sits below this layer, not above it: tokio-postgres negotiates TLS
//! through the [`PgStream`] as usual, and `pg::tls` then upgrades the socket in place
//! ([`PgStream::upgrade`]). tokio-postgres, the traffic follower and a borrower all read and
//! write the plaintext of one shared TLS session, so bursts work the same over TLS.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::net::UnixConn;

/// Where an upstream's server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The server's Unix socket file (`<dir>/.s.PGSQL.<port>`, as libpq builds it).
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
    },
}

impl Endpoint {
    /// The host name or address a TLS certificate must name (`""` for a Unix socket).
    pub fn host(&self) -> &str {
        match self {
            Endpoint::Unix(_) => "",
            Endpoint::Tcp { host, .. } => host,
        }
    }

    /// `host` is a socket directory when it starts with `/`, else a host name or address.
    pub fn new(host: &str, port: u16, is_socket_dir: bool) -> Endpoint {
        if is_socket_dir {
            Endpoint::Unix(PathBuf::from(host).join(format!(".s.PGSQL.{port}")))
        } else {
            Endpoint::Tcp {
                host: host.to_string(),
                port,
            }
        }
    }

    /// Opens a socket to the server within `limit`.
    pub async fn connect(&self, limit: Duration) -> io::Result<Sock> {
        let open = async {
            match self {
                Endpoint::Unix(path) => UnixConn::connect(path).await.map(Sock::Unix),
                Endpoint::Tcp { host, port } => {
                    // Every address the name resolves to, in order, as libpq does; TCP
                    // keepalives on (the kernel's timings), as tokio-postgres sets them.
                    let mut last = None;
                    for addr in tokio::net::lookup_host((host.as_str(), *port)).await? {
                        let socket = if addr.is_ipv4() {
                            TcpSocket::new_v4()?
                        } else {
                            TcpSocket::new_v6()?
                        };
                        socket.set_keepalive(true)?;
                        match socket.connect(addr).await {
                            Ok(stream) => {
                                stream.set_nodelay(true)?;
                                return Ok(Sock::Tcp(stream));
                            }
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "the host name has no address")
                    }))
                }
            }
        };
        match tokio::time::timeout(limit, open).await {
            Ok(result) => result.map_err(|e| io::Error::new(e.kind(), format!("{self}: {e}"))),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{self}: no answer within {} ms", limit.as_millis()),
            )),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A connected socket, Unix or TCP, or TCP under TLS.
#[derive(Debug)]
pub enum Sock {
    Unix(UnixConn),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Taken out for a TLS handshake that did not finish: every read and write fails.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection's TLS handshake did not finish",
    )
}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Sock::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Sock::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Sock::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Sock::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Sock::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Unix(s) => Pin::new(s).poll_flush(cx),
            Sock::Tcp(s) => Pin::new(s).poll_flush(cx),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Sock::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Sock::Detached => Poll::Ready(Err(detached())),
        }
    }
}

/// Follows the message framing of one direction of tokio-postgres' traffic: a type byte, a
/// 4-byte length that counts itself, then the body.
#[derive(Debug, Default)]
struct Framing {
    header: [u8; 5],
    /// Header bytes seen of the current message (0 at a boundary).
    have: usize,
    /// Body bytes still to skip.
    rest: usize,
}

impl Framing {
    /// Feeds bytes; calls `on_type` with the type byte of every message that starts in them.
    fn feed(&mut self, mut bytes: &[u8], mut on_type: impl FnMut(u8)) {
        while !bytes.is_empty() {
            if self.rest > 0 {
                let skip = self.rest.min(bytes.len());
                self.rest -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == 5 {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                on_type(self.header[0]);
                self.rest = (len as usize).saturating_sub(4);
                self.have = 0;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.rest == 0
    }
}

/// What tokio-postgres has asked and been answered on the connection (see the module docs).
/// Followed only once the connection is set up ([`SocketHandle::track`]): the startup
/// exchange has a different framing.
#[derive(Debug, Default)]
struct Traffic {
    on: bool,
    sent: Framing,
    received: Framing,
    /// Syncs and simple Queries written.
    requests: u64,
    /// ReadyForQuery messages read.
    answers: u64,
    /// Part of an extended-protocol request is written, but not its Sync yet (a full socket
    /// buffer can split one request's messages between writes).
    open: bool,
    /// Something was written after which no ReadyForQuery comes (Terminate, COPY data).
    unknown: bool,
}

impl Traffic {
    fn wrote(&mut self, bytes: &[u8]) {
        if !self.on {
            return;
        }
        let (requests, open, unknown) = (&mut self.requests, &mut self.open, &mut self.unknown);
        self.sent.feed(bytes, |t| match t {
            b'S' | b'Q' => {
                *requests += 1;
                *open = false;
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => *open = true,
            _ => *unknown = true,
        });
    }

    fn read(&mut self, bytes: &[u8]) {
        if !self.on {
            return;
        }
        let answers = &mut self.answers;
        self.received.feed(bytes, |t| {
            if t == b'Z' {
                *answers += 1;
            }
        });
    }

    /// tokio-postgres has no request in flight.
    fn idle(&self) -> bool {
        self.on
            && !self.unknown
            && !self.open
            && self.requests == self.answers
            && self.sent.at_boundary()
            && self.received.at_boundary()
    }
}

struct Inner {
    sock: Sock,
    borrowed: bool,
    /// A borrow ended half-way: the server may still be answering the daemon's messages, so
    /// tokio-postgres must never read again (its reads and writes fail from now on).
    poisoned: bool,
    traffic: Traffic,
}

struct Shared {
    inner: Mutex<Inner>,
    /// tokio-postgres' connection task, waiting for a borrow to end.
    parked: AtomicWaker,
}

impl Shared {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner().sock).poll_read(cx, buf)
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner().sock).poll_write(cx, buf)
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner().sock).poll_flush(cx)
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner().sock).poll_shutdown(cx)
    }

    /// The socket for tokio-postgres; `Ok(None)` while it is borrowed, an error once a borrow
    /// was abandoned. The check and the I/O happen under one lock, so a borrow can never start
    /// in between. The waker is kept on every poll: a borrower's reads replace tokio-postgres'
    /// registration for readability, so the end of every borrow wakes it to register again.
    fn for_stream(&self, cx: &mut Context<'_>) -> io::Result<Option<MutexGuard<'_, Inner>>> {
        let inner = self.inner();
        self.parked.register(cx.waker());
        if inner.poisoned {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection was abandoned in the middle of a grouped burst",
            ));
        }
        Ok((!inner.borrowed).then_some(inner))
    }
}

/// The daemon's side of a connection's socket: lends it out for bursts.
#[derive(Clone)]
pub struct SocketHandle(Arc<Shared>);

impl SocketHandle {
    /// Wraps a connected socket; the [`PgStream`] goes to tokio-postgres.
    pub fn new(sock: Sock) -> (SocketHandle, PgStream) {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                sock,
                borrowed: false,
                poisoned: false,
                traffic: Traffic::default(),
            }),
            parked: AtomicWaker::new(),
        });
        (SocketHandle(shared.clone()), PgStream(shared))
    }

    /// Starts following tokio-postgres' traffic; called once the connection is ready for
    /// queries (the startup exchange is complete, nothing is in flight).
    pub fn track(&self) {
        self.0.inner().traffic = Traffic {
            on: true,
            ..Traffic::default()
        };
    }

    /// Takes the socket if tokio-postgres has no request in flight right now (see the module
    /// docs); `None` otherwise, and the caller settles the connection with a round trip first.
    ///
    /// Hand the socket back with [`Borrowed::release`] once every answer to what was written
    /// through it has been read; a borrow dropped otherwise poisons the socket (see `Inner`).
    pub fn borrow_if_idle(&self) -> Option<Borrowed<'_>> {
        let mut inner = self.0.inner();
        if inner.borrowed || inner.poisoned || !inner.traffic.idle() {
            return None;
        }
        inner.borrowed = true;
        Some(Borrowed {
            shared: &self.0,
            clean: false,
        })
    }
}

/// The socket, lent to the daemon. Reads and writes (through `&Borrowed`, so one task can
/// read and write at once) go straight to it.
pub struct Borrowed<'a> {
    shared: &'a Shared,
    clean: bool,
}

impl Borrowed<'_> {
    /// Gives the socket back to tokio-postgres: everything written through the borrow has been
    /// answered and read, up to its last ReadyForQuery.
    pub fn release(mut self) {
        self.clean = true;
    }
}

impl AsyncRead for &Borrowed<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.shared.poll_read(cx, buf)
    }
}

impl AsyncWrite for &Borrowed<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.poll_shutdown(cx)
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        {
            let mut inner = self.shared.inner();
            inner.borrowed = false;
            if !self.clean {
                inner.poisoned = true;
            }
        }
        self.shared.parked.wake();
    }
}

/// What tokio-postgres reads and writes; "not ready" while the daemon has the socket borrowed.
pub struct PgStream(Arc<Shared>);

impl PgStream {
    /// Runs a TLS handshake over the TCP socket (the server has just agreed to TLS) and puts
    /// the encrypted stream in its place; returns the server's end-entity certificate. Called
    /// during the startup exchange, before anything follows the traffic or borrows the socket.
    pub async fn upgrade(
        &self,
        connector: &tokio_rustls::TlsConnector,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<Option<rustls::pki_types::CertificateDer<'static>>> {
        let sock = std::mem::replace(&mut self.0.inner().sock, Sock::Detached);
        let Sock::Tcp(tcp) = sock else {
            self.0.inner().sock = sock;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS runs over TCP connections only",
            ));
        };
        let tls = connector.connect(server_name, tcp).await?;
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| c.clone().into_owned());
        self.0.inner().sock = Sock::Tls(Box::new(tls));
        Ok(certificate)
    }
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(mut inner) = self.0.for_stream(cx)? else {
            return Poll::Pending;
        };
        let before = buf.filled().len();
        let polled = Pin::new(&mut inner.sock).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            inner.traffic.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(mut inner) = self.0.for_stream(cx)? else {
            return Poll::Pending;
        };
        let polled = Pin::new(&mut inner.sock).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            inner.traffic.wrote(&buf[..n]);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(mut inner) = self.0.for_stream(cx)? else {
            return Poll::Pending;
        };
        Pin::new(&mut inner.sock).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_borrow_hides_the_socket_from_the_stream_until_dropped() {
        let (a, mut b) = UnixConn::pair().unwrap();
        let (handle, mut stream) = SocketHandle::new(Sock::Unix(a));
        handle.track();
        b.write_all(b"hello").await.unwrap();
        let borrowed = handle.borrow_if_idle().expect("nothing is in flight");
        let mut buf = [0u8; 5];
        let blocked = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await;
        assert!(
            blocked.is_err(),
            "the stream must wait while the socket is borrowed"
        );
        // The borrower reads what arrived.
        let mut got = [0u8; 5];
        (&borrowed).read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        borrowed.release();
        b.write_all(b"again").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn traffic_is_idle_only_when_every_sync_is_answered_at_a_message_boundary() {
        let mut t = Traffic::default();
        t.wrote(&message(b'Q', b"SELECT 1\0"));
        assert!(!t.idle(), "not followed before track()");
        t.on = true;
        assert!(t.idle());
        let mut request = message(b'B', b"\0s1\0\0\0\0\0\0\0");
        request.extend(message(b'E', b"\0\0\0\0\0"));
        request.extend(message(b'S', b""));
        // Written in pieces that split headers and bodies.
        for piece in request.chunks(3) {
            t.wrote(piece);
        }
        assert_eq!(t.requests, 1);
        assert!(!t.idle(), "a Sync is in flight");
        let mut answer = message(b'2', b"");
        answer.extend(message(b'D', &[0, 1, 0, 0, 0, 1, b'7']));
        answer.extend(message(b'C', b"SELECT 1\0"));
        answer.extend(message(b'Z', b"I"));
        let (head, tail) = answer.split_at(answer.len() - 1);
        t.read(head);
        assert_eq!(t.answers, 1, "the ReadyForQuery header has arrived");
        assert!(!t.idle(), "its body has not");
        t.read(tail);
        assert!(t.idle());
        // Something that is never answered with ReadyForQuery: never idle again.
        t.wrote(&message(b'X', b""));
        assert!(!t.idle());
    }

    #[tokio::test]
    async fn a_borrow_waits_for_what_the_stream_has_in_flight() {
        let (a, mut b) = UnixConn::pair().unwrap();
        let (handle, mut stream) = SocketHandle::new(Sock::Unix(a));
        handle.track();
        stream.write_all(&message(b'S', b"")).await.unwrap();
        assert!(handle.borrow_if_idle().is_none(), "the Sync is unanswered");
        let mut sync = [0u8; 5];
        b.read_exact(&mut sync).await.unwrap();
        b.write_all(&message(b'Z', b"I")).await.unwrap();
        let mut ready = [0u8; 6];
        stream.read_exact(&mut ready).await.unwrap();
        let borrowed = handle.borrow_if_idle().expect("idle once answered");
        borrowed.release();
    }

    #[test]
    fn a_request_cut_between_writes_is_in_flight_until_its_sync() {
        let mut t = Traffic {
            on: true,
            ..Traffic::default()
        };
        // A full socket buffer took the Bind and the Execute, not yet the Sync.
        t.wrote(&message(b'B', b"\0s1\0\0\0\0\0\0\0"));
        t.wrote(&message(b'E', b"\0\0\0\0\0"));
        assert!(t.sent.at_boundary() && t.requests == t.answers);
        assert!(!t.idle(), "half a request is in flight");
        t.wrote(&message(b'S', b""));
        t.read(&message(b'Z', b"I"));
        assert!(t.idle());
    }

    #[tokio::test]
    async fn an_abandoned_borrow_fails_the_stream_instead_of_handing_it_the_rest() {
        let (a, _b) = UnixConn::pair().unwrap();
        let (handle, mut stream) = SocketHandle::new(Sock::Unix(a));
        handle.track();
        drop(handle.borrow_if_idle().expect("idle"));
        assert!(handle.borrow_if_idle().is_none(), "never lent again");
        let mut buf = [0u8; 1];
        let read = stream.read(&mut buf).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert!(stream.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn the_stream_hears_of_data_after_a_borrower_read_in_its_place() {
        let (a, mut b) = UnixConn::pair().unwrap();
        let (handle, mut stream) = SocketHandle::new(Sock::Unix(a));
        handle.track();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 2];
            stream.read_exact(&mut buf).await.map(|_| buf)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let borrowed = handle.borrow_if_idle().expect("idle");
        // The borrower waits for readability itself, taking over the socket's read waker.
        let mut one = [0u8; 1];
        let waited =
            tokio::time::timeout(Duration::from_millis(20), (&borrowed).read(&mut one)).await;
        assert!(waited.is_err(), "nothing to read yet");
        borrowed.release();
        b.write_all(b"ok").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the stream was woken once the borrow ended")
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"ok");
    }

    #[test]
    fn socket_dir_endpoint_names_the_socket_file() {
        let e = Endpoint::new("/run/postgresql", 5433, true);
        assert_eq!(e.to_string(), "/run/postgresql/.s.PGSQL.5433");
        let e = Endpoint::new("db.internal", 5432, false);
        assert_eq!(e.to_string(), "db.internal:5432");
    }
}
