//! Unix stream sockets that wake the daemon only for what it waits for.
//!
//! tokio registers every socket it wraps for readability and writability at once
//! (edge-triggered). On a Unix stream socket the kernel signals writability every time the
//! peer reads something written to it (`unix_write_space`), whether or not anybody waits to
//! write. So the daemon, asleep in `epoll_wait` after sending a query to PostgreSQL or an answer
//! to a client, was woken once more when PostgreSQL read the query and once more when the
//! client read the answer: two wake-ups and context switches per sequential query that found
//! nothing to do (measured: 4.5 `epoll_wait` returns per query; 2.3 with this module).
//!
//! [`UnixConn`] registers its socket for readability only and writes to it directly. Only when
//! the socket buffer is full (a large answer to a client that reads slowly) does it register a
//! duplicate of the descriptor for writability, which it keeps until a write goes through
//! whole at the first try. TCP sockets do not need this: the kernel signals their writability
//! only after a write found the buffer full.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// How much one read asks for, at least and at most. Safe code must zero the caller's unused
/// buffer before reading into it, so a read asks for about what the last ones got: a frame of
/// many megabytes is not zeroed again for every read of it, nor is a large buffer zeroed for a
/// small answer. Reads that fill what they asked double the next one; short ones halve it.
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;

/// A connected Unix stream socket, registered for readability only (see the module docs).
#[derive(Debug)]
pub struct UnixConn {
    read: UnixRead,
    write: UnixWrite,
}

/// The reading half of a [`UnixConn`].
#[derive(Debug)]
pub struct UnixRead {
    io: Arc<AsyncFd<StdUnixStream>>,
    /// How much the next read asks for (`READ_MIN`..=`READ_MAX`).
    ask: usize,
}

/// The writing half of a [`UnixConn`].
#[derive(Debug)]
pub struct UnixWrite {
    io: Arc<AsyncFd<StdUnixStream>>,
    /// A duplicate of the descriptor, registered for writability while the buffer is full.
    backlog: Option<AsyncFd<OwnedFd>>,
}

/// The descriptor types [`register`] accepts: each owns one descriptor for its whole life.
trait OwnsFd: std::os::fd::AsRawFd {}
impl OwnsFd for StdUnixStream {}
impl OwnsFd for OwnedFd {}

/// Registers `io` with the runtime's reactor for `interest` only.
///
/// tokio deprecated this safe constructor because a type whose `as_raw_fd` could change while
/// registered would make it unsound; its replacement is `unsafe`, which this crate forbids. The
/// types `OwnsFd` admits keep one descriptor until they are dropped, which is exactly what the
/// replacement asks its callers to promise.
#[allow(deprecated)]
fn register<T: OwnsFd>(io: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(io, interest)
}

impl UnixConn {
    /// Takes over a connected socket (made non-blocking here). Needs a tokio runtime.
    pub fn new(stream: StdUnixStream) -> io::Result<UnixConn> {
        stream.set_nonblocking(true)?;
        let io = Arc::new(register(stream, Interest::READABLE)?);
        Ok(UnixConn {
            read: UnixRead {
                io: io.clone(),
                ask: READ_MIN,
            },
            write: UnixWrite { io, backlog: None },
        })
    }

    /// Connects to the socket file at `path`.
    pub async fn connect(path: &std::path::Path) -> io::Result<UnixConn> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        UnixConn::try_from(stream)
    }

    /// A connected pair, for tests.
    pub fn pair() -> io::Result<(UnixConn, UnixConn)> {
        let (a, b) = StdUnixStream::pair()?;
        Ok((UnixConn::new(a)?, UnixConn::new(b)?))
    }

    /// Splits into halves that can be used from different tasks.
    pub fn into_split(self) -> (UnixRead, UnixWrite) {
        (self.read, self.write)
    }
}

impl TryFrom<tokio::net::UnixStream> for UnixConn {
    type Error = io::Error;

    /// Moves a socket tokio has registered over to a readability-only registration.
    fn try_from(stream: tokio::net::UnixStream) -> io::Result<UnixConn> {
        UnixConn::new(stream.into_std()?)
    }
}

impl UnixRead {
    /// Whether the peer has closed its end entirely. A peer that only shut down its writing
    /// side (the end of the stream, read as EOF) can still read what is written to it; one that
    /// closed cannot. Told apart by `POLLHUP`, which a Unix socket reports only in the second
    /// case.
    pub fn peer_closed(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.io.get_ref().as_fd(), PollFlags::empty())];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP))
    }

    fn poll_read_priv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.io.poll_read_ready(cx))?;
            let want = buf.remaining().min(self.ask);
            let dst = buf.initialize_unfilled_to(want);
            match ready.try_io(|io| io.get_ref().read(dst)) {
                Ok(Ok(n)) => {
                    // A short read emptied the receive queue; the next data brings a new edge.
                    // Saves the read that would only find out (tokio does the same).
                    if n > 0 && n < want {
                        ready.clear_ready();
                    }
                    if n == self.ask {
                        self.ask = (self.ask * 2).min(READ_MAX);
                    } else if n < self.ask / 2 {
                        self.ask = (self.ask / 2).max(READ_MIN);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Would block: readiness is cleared, wait for the next edge.
                Err(_) => continue,
            }
        }
    }
}

impl UnixWrite {
    fn poll_write_priv(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.backlog.is_none() {
            match self.io.get_ref().write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Registering checks the current state, so room made since the failed write is not
            // missed.
            let fd = self.io.get_ref().as_fd().try_clone_to_owned()?;
            self.backlog = Some(register(fd, Interest::WRITABLE)?);
        }
        let Some(backlog) = &self.backlog else {
            unreachable!("registered above")
        };
        let written = loop {
            let mut ready = ready!(backlog.poll_write_ready(cx))?;
            match ready.try_io(|_| self.io.get_ref().write(buf)) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => break result?,
                Err(_) => continue,
            }
        };
        if written == buf.len() {
            // Room for all of it: the buffer is draining, back to direct writes.
            self.backlog = None;
        }
        Poll::Ready(Ok(written))
    }

    fn shutdown_priv(&self) -> Poll<io::Result<()>> {
        match self.io.get_ref().shutdown(Shutdown::Write) {
            // The peer is gone already: nothing left to shut.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

impl AsyncRead for UnixRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_priv(cx, buf)
    }
}

impl AsyncWrite for UnixWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_priv(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown_priv()
    }
}

impl AsyncRead for UnixConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().read.poll_read_priv(cx, buf)
    }
}

impl AsyncWrite for UnixConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write.poll_write_priv(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write.shutdown_priv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the epoll instances of this process registered for the socket behind descriptor
    /// `fd`: (descriptor, event mask) pairs from `/proc/self/fdinfo`, matched by the socket's
    /// inode, so a duplicate of the descriptor shows too. The reactor's epoll instance may be
    /// listed under more than one descriptor; tests in parallel reuse descriptor numbers.
    fn registrations(fd: i32) -> Vec<(i32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let ino = format!("ino:{ino:x}");
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_epoll = std::fs::read_link(entry.path())
                .map(|t| t.to_string_lossy().contains("eventpoll"))
                .unwrap_or(false);
            let info = std::path::Path::new("/proc/self/fdinfo").join(entry.file_name());
            let text = match std::fs::read_to_string(info) {
                Ok(text) if is_epoll => text,
                _ => continue,
            };
            for line in text.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.len() >= 4 && words[0] == "tfd:" && words.contains(&ino.as_str()) {
                    found.push((
                        words[1].parse().unwrap(),
                        u32::from_str_radix(words[3], 16).unwrap(),
                    ));
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }

    const EPOLLIN: u32 = 0x1;
    const EPOLLOUT: u32 = 0x4;

    /// Descriptors registered for the socket, with what each waits for.
    fn waits(fd: i32) -> Vec<(i32, bool, bool)> {
        registrations(fd)
            .into_iter()
            .map(|(fd, mask)| (fd, mask & EPOLLIN != 0, mask & EPOLLOUT != 0))
            .collect()
    }

    #[tokio::test]
    async fn a_closed_peer_is_told_apart_from_one_that_only_stopped_writing() {
        let (ours, theirs) = StdUnixStream::pair().unwrap();
        let (mut read, mut write) = UnixConn::new(ours).unwrap().into_split();
        assert!(!read.peer_closed());
        // Shut down for writing: the end of the stream, but answers can still be read.
        theirs.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(read.read(&mut buf).await.unwrap(), 0);
        assert!(!read.peer_closed());
        write.write_all(b"answer").await.unwrap();
        let mut got = [0u8; 6];
        (&theirs).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"answer");
        // Closed: gone for good.
        drop(theirs);
        assert!(read.peer_closed());
    }

    #[tokio::test]
    async fn registers_for_reading_only_until_the_buffer_fills() {
        let (mut a, mut b) = UnixConn::pair().unwrap();
        let fd = a.read.io.as_raw_fd();
        assert_eq!(waits(fd), [(fd, true, false)]);

        // Far more than a socket buffer holds: the writer must wait for the reader.
        let big = vec![7u8; 8 << 20];
        let writer = tokio::spawn(async move {
            a.write_all(&big).await.unwrap();
            a
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let blocked = waits(fd);
        assert_eq!(blocked.len(), 2, "{blocked:?}");
        assert_eq!(blocked[0], (fd, true, false));
        assert!(
            matches!(blocked[1], (dup, false, true) if dup != fd),
            "{blocked:?}"
        );

        let mut got = vec![0u8; 8 << 20];
        b.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&x| x == 7));
        let mut a = writer.await.unwrap();

        // Once a write fits whole, the duplicate is gone.
        a.write_all(b"after").await.unwrap();
        assert!(a.write.backlog.is_none());
        assert_eq!(waits(fd), [(fd, true, false)]);
        let mut tail = [0u8; 5];
        b.read_exact(&mut tail).await.unwrap();
        assert_eq!(&tail, b"after");
    }

    #[tokio::test]
    async fn reads_every_piece_and_then_the_end() {
        let (a, mut b) = UnixConn::pair().unwrap();
        let (mut read, mut write) = a.into_split();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            read.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut sent = Vec::new();
        for k in 0..50u8 {
            // Pieces shorter than the read buffer, each after the reader has gone to sleep:
            // a short read clears readiness, and the next piece must still wake it.
            let piece = vec![k; 1 + k as usize * 3];
            b.write_all(&piece).await.unwrap();
            sent.extend_from_slice(&piece);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        b.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), sent);

        // The other direction, then a shutdown the peer reads as the end.
        write.write_all(b"bye").await.unwrap();
        write.shutdown().await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
    }

    #[tokio::test]
    async fn writing_to_a_closed_peer_fails_instead_of_hanging() {
        let (mut a, b) = UnixConn::pair().unwrap();
        drop(b);
        let err = a.write_all(&[1u8; 1 << 20]).await.unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ));
        // Shutting down a socket whose peer has gone is not an error worth reporting.
        a.shutdown().await.unwrap();
    }
}
