//! Bounds on what a Redis (or Sentinel) server may send: SECURITY.md treats
//! the store as hostile, and redis-rs's parser takes a reply's announced
//! sizes at their word (`$9999999999999` buffers until that many bytes
//! came, `*2000000000` collects that many values). [`Bounded`] wraps the
//! byte stream under redis-rs and checks every reply as it arrives, before
//! redis-rs buffers it: a reply over a bound, a reply nobody asked for, or
//! a reply that does not complete within the response timeout is an I/O
//! error, which ends that connection (and only it). The link then makes a
//! fresh one.
//!
//! The bounds are those of the commands the link sends: GET (a sealed
//! session: at most 192 KiB of session plus the seal), SET, DEL, PING,
//! TIME, AUTH, SELECT, CLIENT SETINFO, and to Sentinels `SENTINEL
//! get-master-addr-by-name` and ROLE.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest bulk string accepted: a session is at most 192 KiB, and its
/// seal (nonce, tag, version) adds less than 100 bytes.
pub const MAX_BULK: u64 = 256 * 1024;
/// Largest reply, all of its parts together.
pub const MAX_REPLY: u64 = MAX_BULK + 64 * 1024;
/// Longest line: a status, an error, a number or a header.
pub const MAX_LINE: usize = 4096;
/// Most elements of one array: TIME needs 2, get-master-addr-by-name 2,
/// ROLE 3 plus a list of the master's replicas (3 fields each), and a
/// purge's `SCAN` step a cursor and the key names it found, about
/// `PURGE_SCAN_COUNT` (500) and at times more, as `COUNT` is only a hint.
/// What bounds memory is [`MAX_REPLY`]: 4096 key names of ours would not
/// fit in it.
pub const MAX_ARRAY: i64 = 4096;
/// Most values in one reply, nested ones included (a `SCAN` step: 2 plus
/// its key names).
pub const MAX_VALUES: u64 = 4096 + 2;
/// Deepest nesting (ROLE: 2).
pub const MAX_DEPTH: usize = 3;

/// Why a reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundError {
    /// A bulk string over [`MAX_BULK`].
    #[error("bulk string of {0} bytes (bound {MAX_BULK})")]
    Bulk(i64),
    /// An array over [`MAX_ARRAY`] elements.
    #[error("array of {0} elements (bound {MAX_ARRAY})")]
    Array(i64),
    /// A reply over [`MAX_REPLY`] bytes or [`MAX_VALUES`] values.
    #[error("reply over {MAX_REPLY} bytes or {MAX_VALUES} values")]
    Reply,
    /// A line over [`MAX_LINE`] bytes.
    #[error("line over {MAX_LINE} bytes")]
    Line,
    /// Nesting over [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH}")]
    Depth,
    /// Not RESP.
    #[error("not a RESP reply (byte {0:#04x})")]
    Syntax(u8),
    /// A reply while no command waits for one.
    #[error("a reply nobody asked for")]
    Unsolicited,
}

/// What the scanner expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A type byte.
    Type,
    /// The rest of a line of a value without a body.
    Simple,
    /// A length header (`$`, `=`, `!`: bulk; `*`, `~`, `>`: array; `%`,
    /// `|`: map, two values an entry).
    Header { kind: u8, neg: bool, n: i64 },
    /// The `\n` after a header's `\r`.
    HeaderEnd { kind: u8, n: i64 },
    /// A body and its CRLF: bytes left.
    Body(u64),
}

/// An incremental RESP scanner: it counts whole top-level values, and with
/// `limits` refuses the ones over the bounds. It never buffers.
#[derive(Debug)]
pub struct Scanner {
    limits: bool,
    state: State,
    /// Elements left in each open aggregate, innermost last.
    stack: Vec<i64>,
    line: usize,
    reply_bytes: u64,
    reply_values: u64,
}

impl Scanner {
    /// A scanner; `limits`: enforce the bounds (replies), or only count
    /// (the commands we send).
    pub fn new(limits: bool) -> Scanner {
        Scanner {
            limits,
            state: State::Type,
            stack: Vec::new(),
            line: 0,
            reply_bytes: 0,
            reply_values: 0,
        }
    }

    /// Whether a value is partly read.
    pub fn in_value(&self) -> bool {
        self.state != State::Type || !self.stack.is_empty()
    }

    /// Scans `buf`; returns how many top-level values it completed.
    /// `may_start(n)`: whether a new top-level value may begin after `n`
    /// completed ones in this call.
    pub fn scan(
        &mut self,
        buf: &[u8],
        mut may_start: impl FnMut(u64) -> bool,
    ) -> Result<u64, BoundError> {
        let mut done = 0u64;
        let mut i = 0;
        if self.limits {
            self.reply_bytes = self.reply_bytes.saturating_add(buf.len() as u64);
        }
        while i < buf.len() {
            match self.state {
                State::Body(left) => {
                    let take = left.min((buf.len() - i) as u64);
                    i += take as usize;
                    if take == left {
                        if self.value_done() {
                            done += 1;
                        }
                    } else {
                        self.state = State::Body(left - take);
                    }
                    continue;
                }
                State::Type => {
                    if self.stack.is_empty() {
                        if !may_start(done) {
                            return Err(BoundError::Unsolicited);
                        }
                        // A new reply: its bytes count from here.
                        if self.limits {
                            self.reply_bytes = (buf.len() - i) as u64;
                        }
                        self.reply_values = 0;
                    }
                    self.reply_values += 1;
                    if self.limits && self.reply_values > MAX_VALUES {
                        return Err(BoundError::Reply);
                    }
                    let b = buf[i];
                    self.line = 0;
                    self.state = match b {
                        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => State::Simple,
                        b'$' | b'=' | b'!' | b'*' | b'~' | b'>' | b'%' | b'|' => State::Header {
                            kind: b,
                            neg: false,
                            n: 0,
                        },
                        _ => return Err(BoundError::Syntax(b)),
                    };
                }
                State::Simple => {
                    self.line += 1;
                    if self.limits && self.line > MAX_LINE {
                        return Err(BoundError::Line);
                    }
                    if buf[i] == b'\n' && self.value_done() {
                        done += 1;
                    }
                }
                State::Header { kind, neg, n } => {
                    self.line += 1;
                    if self.line > 24 {
                        return Err(BoundError::Line);
                    }
                    let b = buf[i];
                    self.state = match b {
                        b'-' if n == 0 && !neg => State::Header { kind, neg: true, n },
                        b'0'..=b'9' => State::Header {
                            kind,
                            neg,
                            n: n.checked_mul(10)
                                .and_then(|n| n.checked_add(i64::from(b - b'0')))
                                .ok_or(BoundError::Syntax(b))?,
                        },
                        b'\r' => State::HeaderEnd {
                            kind,
                            n: if neg { -n } else { n },
                        },
                        _ => return Err(BoundError::Syntax(b)),
                    };
                }
                State::HeaderEnd { kind, n } => {
                    if buf[i] != b'\n' {
                        return Err(BoundError::Syntax(buf[i]));
                    }
                    if self.header(kind, n)? {
                        done += 1;
                    }
                }
            }
            i += 1;
        }
        if self.limits && self.in_value() && self.reply_bytes > MAX_REPLY {
            return Err(BoundError::Reply);
        }
        Ok(done)
    }

    /// A header read: opens a body or an aggregate. True when that
    /// completed a top-level value (a null, an empty aggregate).
    fn header(&mut self, kind: u8, n: i64) -> Result<bool, BoundError> {
        let bulk = matches!(kind, b'$' | b'=' | b'!');
        if n < 0 {
            // Null bulk or array (RESP2): no body.
            return Ok(self.value_done());
        }
        if bulk {
            if self.limits && n as u64 > MAX_BULK {
                return Err(BoundError::Bulk(n));
            }
            self.state = State::Body(n as u64 + 2);
            return Ok(false);
        }
        let elements = if matches!(kind, b'%' | b'|') {
            n.saturating_mul(2)
        } else {
            n
        };
        // A map of n entries is 2n values; its bound is on n.
        if self.limits && n > MAX_ARRAY {
            return Err(BoundError::Array(n));
        }
        // An attribute (`|`) is followed by the value it annotates.
        let elements = if kind == b'|' { elements + 1 } else { elements };
        if elements == 0 {
            return Ok(self.value_done());
        }
        if self.limits && self.stack.len() >= MAX_DEPTH {
            return Err(BoundError::Depth);
        }
        self.stack.push(elements);
        self.state = State::Type;
        Ok(false)
    }

    /// A value ended: counts it in its aggregate. True when it was
    /// top-level (or closed the top-level aggregate).
    fn value_done(&mut self) -> bool {
        self.state = State::Type;
        while let Some(left) = self.stack.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.stack.pop();
        }
        true
    }
}

/// Ends a connection from outside: what [`Bounded`] reads next is an error.
#[derive(Debug, Default)]
pub struct Kill {
    dead: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Kill {
    /// Ends the connection (its pending reads fail at once).
    pub fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            w.wake();
        }
    }

    /// Whether it was ended.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

/// A byte stream whose replies are checked against the bounds, and timed:
/// once a command is sent, the next reply must be complete within
/// `response_timeout`.
pub struct Bounded<S> {
    inner: S,
    replies: Scanner,
    commands: Scanner,
    /// Commands sent whose replies have not come (all of them).
    outstanding: u64,
    response_timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    kill: Arc<Kill>,
    failed: Option<io::ErrorKind>,
    /// A pub/sub connection: messages come without being asked for (each
    /// still within the bounds), and replies to our commands are timed.
    pushes: bool,
}

impl<S> Bounded<S> {
    /// Wraps `inner`; `kill` ends it from outside.
    pub fn new(inner: S, response_timeout: Duration, kill: Arc<Kill>) -> Bounded<S> {
        Bounded {
            inner,
            replies: Scanner::new(true),
            commands: Scanner::new(false),
            outstanding: 0,
            response_timeout,
            timer: None,
            kill,
            failed: None,
            pushes: false,
        }
    }

    /// Wraps the stream of a subscriber (`SUBSCRIBE`): values that no
    /// command asked for are messages, accepted one by one under the same
    /// bounds as replies.
    pub fn subscriber(inner: S, response_timeout: Duration, kill: Arc<Kill>) -> Bounded<S> {
        Bounded {
            pushes: true,
            ..Bounded::new(inner, response_timeout, kill)
        }
    }

    fn arm(&mut self) {
        if self.outstanding > 0 {
            let at = tokio::time::Instant::now() + self.response_timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        } else {
            self.timer = None;
        }
    }

    fn late(&mut self) -> io::Error {
        let ms = self.response_timeout.as_millis();
        self.fail(
            io::ErrorKind::TimedOut,
            format!("no complete reply within {ms} ms"),
        )
    }

    fn fail(&mut self, kind: io::ErrorKind, why: String) -> io::Error {
        self.failed = Some(kind);
        self.kill.kill();
        io::Error::new(kind, why)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(kind) = this.failed {
            return Poll::Ready(Err(io::Error::new(kind, "connection ended")));
        }
        if let Ok(mut w) = this.kill.waker.lock() {
            *w = Some(cx.waker().clone());
        }
        if this.kill.is_dead() {
            return Poll::Ready(Err(
                this.fail(io::ErrorKind::ConnectionAborted, "connection ended".into())
            ));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let outstanding = this.outstanding;
                let pushes = this.pushes;
                let got = &buf.filled()[before..];
                match this.replies.scan(got, |n| pushes || n < outstanding) {
                    Ok(n) => {
                        // A subscriber cannot tell a message from a reply:
                        // any value ends the wait for one.
                        this.outstanding = this.outstanding.saturating_sub(n);
                        if n > 0 {
                            this.arm();
                        }
                        // A reply that trickles in never leaves the inner
                        // stream pending: the deadline is checked here too.
                        let late = this
                            .timer
                            .as_ref()
                            .is_some_and(|t| t.deadline() <= tokio::time::Instant::now());
                        if late {
                            return Poll::Ready(Err(this.late()));
                        }
                        Poll::Ready(Ok(()))
                    }
                    Err(e) => Poll::Ready(Err(
                        this.fail(io::ErrorKind::InvalidData, format!("reply refused: {e}"))
                    )),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(t) = &mut this.timer {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(this.late()));
                    }
                }
                Poll::Pending
            }
        }
    }
}

use std::future::Future;

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.kill.is_dead() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection ended",
            )));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                // Our own commands: counted, never refused.
                let sent = this.commands.scan(&buf[..n], |_| true).unwrap_or(0);
                if sent > 0 {
                    let idle = this.outstanding == 0;
                    this.outstanding += sent;
                    if idle {
                        this.arm();
                    }
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scan(bytes: &[u8]) -> Result<u64, BoundError> {
        Scanner::new(true).scan(bytes, |_| true)
    }

    #[test]
    fn counts_whole_replies_in_any_split() {
        let replies: &[u8] =
            b"+OK\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$10\r\n1700000000\r\n$1\r\n5\r\n*0\r\n:7\r\n-ERR x\r\n";
        assert_eq!(scan(replies), Ok(7));
        for cut in 1..replies.len() {
            let mut s = Scanner::new(true);
            let a = s.scan(&replies[..cut], |_| true).unwrap();
            let b = s.scan(&replies[cut..], |_| true).unwrap();
            assert_eq!(a + b, 7, "cut at {cut}");
            assert!(!s.in_value());
        }
    }

    #[test]
    fn role_of_a_master_with_replicas_passes() {
        let role = b"*3\r\n$6\r\nmaster\r\n:42\r\n*2\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n$2\r\n42\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6381\r\n$2\r\n42\r\n";
        assert_eq!(scan(role), Ok(1));
    }

    #[test]
    fn refuses_what_is_over_a_bound() {
        assert_eq!(
            scan(b"$9999999999999\r\n"),
            Err(BoundError::Bulk(9999999999999))
        );
        assert_eq!(
            scan(b"*2000000000\r\n:1\r\n"),
            Err(BoundError::Array(2000000000))
        );
        assert_eq!(scan(b"%5000\r\n"), Err(BoundError::Array(5000)));
        assert_eq!(
            scan(b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"),
            Err(BoundError::Depth)
        );
        assert_eq!(
            scan(b"$99999999999999999999999\r\n"),
            Err(BoundError::Syntax(b'9'))
        );
        assert_eq!(scan(&[b'+'; MAX_LINE + 2]), Err(BoundError::Line));
        assert_eq!(scan(b"hello"), Err(BoundError::Syntax(b'h')));
        let mut big = format!("${MAX_BULK}\r\n").into_bytes();
        big.extend(std::iter::repeat_n(b'x', MAX_BULK as usize));
        big.extend(b"\r\n");
        assert_eq!(scan(&big), Ok(1));
        // Many values, each array in bounds, in one reply.
        let mut many = b"*64\r\n".to_vec();
        for _ in 0..64 {
            many.extend(b"*64\r\n");
            many.extend(b":1\r\n".repeat(64));
        }
        assert_eq!(scan(&many), Err(BoundError::Reply));
    }

    #[test]
    fn refuses_a_reply_nobody_asked_for() {
        let mut s = Scanner::new(true);
        assert_eq!(
            s.scan(b"+OK\r\n+OK\r\n", |n| n < 1),
            Err(BoundError::Unsolicited)
        );
    }

    /// A stream over an in-memory pipe, and the server's end of it.
    fn pipe(timeout: Duration) -> (Bounded<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        (
            Bounded::new(ours, timeout, Arc::new(Kill::default())),
            theirs,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_still_arriving_after_the_response_timeout_ends_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, mut server) = pipe(Duration::from_secs(1));
        s.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 20];
        server.read_exact(&mut buf).await.unwrap();
        // A byte every 300 ms: in bounds, but never done in time.
        server.write_all(b"$100\r\n").await.unwrap();
        let mut err = None;
        for _ in 0..10 {
            server.write_all(b"x").await.unwrap();
            if let Ok(Err(e)) =
                tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
            {
                err = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let e = err.unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(s.kill.is_dead());
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_reply_and_an_idle_link_are_fine() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, mut server) = pipe(Duration::from_secs(1));
        s.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        server.write_all(b"+PONG\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.unwrap(), 7);
        // Nothing asked: no timer runs, however long the link idles.
        let idle = tokio::time::timeout(Duration::from_secs(3600), s.read(&mut buf)).await;
        assert!(idle.is_err());
        // Unsolicited bytes end it.
        server.write_all(b"+OK\r\n").await.unwrap();
        assert_eq!(
            s.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_takes_messages_within_the_bounds_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut server) = tokio::io::duplex(1 << 20);
        let mut s = Bounded::subscriber(ours, Duration::from_secs(1), Arc::new(Kill::default()));
        let mut buf = [0u8; 256];
        // Messages nobody asked for, one after the other: taken.
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nabc\r\n";
        for _ in 0..3 {
            server.write_all(message).await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), message.len());
        }
        // Nothing asked, nothing sent: no timer, however long it is quiet.
        let quiet = tokio::time::timeout(Duration::from_secs(3600), s.read(&mut buf)).await;
        assert!(quiet.is_err());
        // One over the bounds ends it.
        server.write_all(b"*2000000000\r\n").await.unwrap();
        assert_eq!(
            s.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(s.kill.is_dead());
    }

    #[test]
    fn the_commands_side_only_counts() {
        let mut s = Scanner::new(false);
        let mut cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$300000\r\n".to_vec();
        cmd.extend(std::iter::repeat_n(b'*', 300_000));
        cmd.extend(b"\r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(s.scan(&cmd, |_| true), Ok(2));
    }
}
