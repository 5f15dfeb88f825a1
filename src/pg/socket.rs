//! The socket under a pooled PostgreSQL connection, which the daemon can borrow from
//! tokio-postgres for a burst of its own protocol messages (see `pg::burst`).
//!
//! The daemon opens the socket itself ([`Endpoint::connect`]) and hands tokio-postgres a
//! [`PgStream`] over it. While a [`Borrowed`] guard lives, `PgStream` tells tokio-postgres the
//! socket is not ready and parks its waker; dropping the guard wakes it and tokio-postgres
//! carries on where it was. Invariant: a borrow is only taken while tokio-postgres has no
//! request in flight on the connection, so neither side ever reads the other's answers. The
//! socket sits behind a mutex that is held for one poll at a time, never across an await.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

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
                Endpoint::Unix(path) => UnixStream::connect(path).await.map(Sock::Unix),
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

/// A connected socket, Unix or TCP.
#[derive(Debug)]
pub enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Unix(s) => Pin::new(s).poll_flush(cx),
            Sock::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

struct Shared {
    sock: Mutex<Sock>,
    borrowed: AtomicBool,
    /// tokio-postgres' connection task, waiting for a borrow to end.
    parked: AtomicWaker,
}

impl Shared {
    fn sock(&self) -> MutexGuard<'_, Sock> {
        self.sock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.sock()).poll_read(cx, buf)
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.sock()).poll_write(cx, buf)
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.sock()).poll_flush(cx)
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.sock()).poll_shutdown(cx)
    }

    /// Whether tokio-postgres must wait; registers its waker when so.
    fn park(&self, cx: &mut Context<'_>) -> bool {
        if !self.borrowed.load(Ordering::SeqCst) {
            return false;
        }
        self.parked.register(cx.waker());
        self.borrowed.load(Ordering::SeqCst)
    }
}

/// The daemon's side of a connection's socket: lends it out for bursts.
#[derive(Clone)]
pub struct SocketHandle(Arc<Shared>);

impl SocketHandle {
    /// Wraps a connected socket; the [`PgStream`] goes to tokio-postgres.
    pub fn new(sock: Sock) -> (SocketHandle, PgStream) {
        let shared = Arc::new(Shared {
            sock: Mutex::new(sock),
            borrowed: AtomicBool::new(false),
            parked: AtomicWaker::new(),
        });
        (SocketHandle(shared.clone()), PgStream(shared))
    }

    /// Takes the socket from tokio-postgres until the guard is dropped. The caller must hold
    /// the connection exclusively and have nothing in flight through tokio-postgres.
    pub fn borrow(&self) -> Borrowed<'_> {
        self.0.borrowed.store(true, Ordering::SeqCst);
        Borrowed(&self.0)
    }
}

/// The socket, lent to the daemon. Reads and writes (through `&Borrowed`, so one task can
/// read and write at once) go straight to it.
pub struct Borrowed<'a>(&'a Shared);

impl AsyncRead for &Borrowed<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.poll_read(cx, buf)
    }
}

impl AsyncWrite for &Borrowed<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_shutdown(cx)
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        self.0.borrowed.store(false, Ordering::SeqCst);
        self.0.parked.wake();
    }
}

/// What tokio-postgres reads and writes; "not ready" while the daemon has the socket borrowed.
pub struct PgStream(Arc<Shared>);

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.0.park(cx) {
            return Poll::Pending;
        }
        self.0.poll_read(cx, buf)
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.0.park(cx) {
            return Poll::Pending;
        }
        self.0.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.0.park(cx) {
            return Poll::Pending;
        }
        self.0.poll_flush(cx)
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
        let (a, mut b) = UnixStream::pair().unwrap();
        let (handle, mut stream) = SocketHandle::new(Sock::Unix(a));
        b.write_all(b"hello").await.unwrap();
        let borrowed = handle.borrow();
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
        drop(borrowed);
        b.write_all(b"again").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");
    }

    #[test]
    fn socket_dir_endpoint_names_the_socket_file() {
        let e = Endpoint::new("/run/postgresql", 5433, true);
        assert_eq!(e.to_string(), "/run/postgresql/.s.PGSQL.5433");
        let e = Endpoint::new("db.internal", 5432, false);
        assert_eq!(e.to_string(), "db.internal:5432");
    }
}
