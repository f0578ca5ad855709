//! Enqueues over a connection the caller owns and drives (sans I/O): the
//! bytes to write and the meaning of the bytes read back.
//!
//! The client's own connection is driven by its Tokio runtime, so an
//! asyncio program reaches it across threads: the event loop hands the call
//! to the runtime's thread, and the reply comes back through a socket the
//! loop watches. For the call that producers make most, an enqueue, an
//! event loop can instead own a plain connection and write and read it
//! itself, which saves both crossings. This module builds what it writes
//! (the same command the client would send, for the engine in use) and
//! reads what comes back; anything unusual (a library not loaded yet, an
//! engine that changed) is left to the client, which handles it.
//! `BlockingEnqueuer` does the same for threads that wait for their
//! enqueue (synchronous callers).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, Value};

use crate::client::Client;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::protocol::{Enqueue, NewTask};
use crate::queue::QueueName;
use crate::scripts;

/// How long a caller that waits for an enqueue's reply polls its connection
/// for it before it sleeps until the reply comes. A thread that sleeps on a
/// socket and is woken by the reply pays for the wake-up, which on virtual
/// machines costs more than a round trip to a Valkey on the same host
/// (measured on one: a `PING` 70 µs with the caller asleep, 22 µs with it
/// polling). A reply that takes longer than this comes from a server
/// further away, where polling would only burn the CPU: see `SpinPolicy`.
pub const SPIN_FOR: Duration = Duration::from_micros(100);

/// How many enqueues wait without polling after one whose reply took longer
/// than `SPIN_FOR`; the next one polls again, so a server that comes closer
/// (or a machine that stops being busy) is noticed.
pub const SPIN_PAUSE: u32 = 64;

/// Whether a caller polls for its reply (`SPIN_FOR`): always while replies
/// come within the time it polls, and once every `SPIN_PAUSE` enqueues
/// after one that did not.
#[derive(Debug, Default)]
pub struct SpinPolicy {
    skip: AtomicU32,
}

impl SpinPolicy {
    /// Whether this call polls (one call of the pause is used up if not).
    pub fn polls(&self) -> bool {
        self.skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    /// A reply did not come within `SPIN_FOR`.
    pub fn missed(&self) {
        self.skip.store(SPIN_PAUSE, Ordering::Relaxed);
    }
}

/// Where a caller-owned connection connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix { path: String },
}

/// What an enqueue's reply says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueReply {
    /// Per task, whether it was added.
    Added(Vec<bool>),
    /// The server refused it (an error of the call itself).
    Failed(Error),
    /// Nothing ran, and the client knows what to do about it (load the
    /// scripts library, move to the scripts engine): send it through the
    /// client. Repeating an enqueue is safe: it is idempotent by id.
    UseClient,
}

impl Client {
    /// Where a connection of the caller's own may connect, or None when
    /// the client's connection must be used: TLS (the caller would need
    /// the client's certificates), enqueues that wait for replicas
    /// (`WAIT` must follow the write on the connection that made it, with
    /// the client's handling of its reply), a cluster, partitioned queues,
    /// and a server found through sentinels (it moves on a failover).
    pub fn own_connection_endpoint(&self) -> Option<Endpoint> {
        // A cluster routes each queue to its node, and a partitioned queue's
        // enqueue is one command per partition: the client's connection
        // does both.
        if self.options().wait_replicas.is_some()
            || self.is_cluster()
            || self.is_sentinel()
            || !self.partitions().is_empty()
        {
            return None;
        }
        match self.connection_info().addr() {
            ConnectionAddr::Tcp(host, port) => Some(Endpoint::Tcp {
                host: host.clone(),
                port: *port,
            }),
            ConnectionAddr::Unix(path) => Some(Endpoint::Unix {
                path: path.to_string_lossy().into_owned(),
            }),
            _ => None,
        }
    }

    /// The commands a new connection sends first (`AUTH`, `SELECT`), as
    /// bytes, and how many replies they get (each must be `OK`).
    pub fn own_connection_handshake(&self) -> (Vec<u8>, usize) {
        let settings = self.connection_info().redis_settings();
        let mut bytes = Vec::new();
        let mut count = 0;
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            bytes.extend(auth.get_packed_command());
            count += 1;
        }
        if settings.db() != 0 {
            bytes.extend(redis::cmd("SELECT").arg(settings.db()).get_packed_command());
            count += 1;
        }
        (bytes, count)
    }

    /// An enqueue as the bytes to write, for the engine in use.
    pub fn enqueue_request(
        &self,
        queue: &QueueName,
        tasks: &[NewTask],
        maxlen: Option<u64>,
    ) -> Result<Vec<u8>> {
        let cmd = Enqueue {
            queue,
            tasks,
            maxlen,
        }
        .to_cmd()?;
        Ok(match self.engine() {
            Engine::Module => cmd.get_packed_command(),
            Engine::Scripts => scripts::fcall(&cmd).get_packed_command(),
        })
    }
}

/// Blocking enqueues for threads that wait for them (synchronous callers):
/// a few connections the calling threads take in turn, each written and
/// read on the calling thread. The client's connection is driven by its
/// runtime's thread, so a blocking call there waits for two hand-overs
/// between threads besides the round trip. When every connection here is
/// in use, or one fails, or the reply says so, the caller uses the client
/// (`None`): an enqueue is idempotent by id, so sending it again is safe.
pub struct BlockingEnqueuer {
    endpoint: Option<Endpoint>,
    handshake: (Vec<u8>, usize),
    timeouts: (Duration, Duration),
    idle: Mutex<Vec<BlockingConnection>>,
    open: AtomicUsize,
    most: usize,
    spin: SpinPolicy,
}

struct BlockingConnection {
    stream: Stream,
    reader: ReplyReader,
    /// The socket's mode: non-blocking while it is polled (`SPIN_FOR`)
    /// and after, until it must block.
    nonblocking: bool,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(bytes),
            Stream::Unix(s) => s.write(bytes),
        }
    }

    fn set_nonblocking(&self, nonblocking: bool) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(nonblocking),
            Stream::Unix(s) => s.set_nonblocking(nonblocking),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl BlockingEnqueuer {
    /// For `client`, with at most `most` connections of its own.
    pub fn new(client: &Client, most: usize) -> Self {
        BlockingEnqueuer {
            endpoint: client.own_connection_endpoint(),
            handshake: client.own_connection_handshake(),
            timeouts: (
                client.options().connect_timeout,
                client.options().response_timeout,
            ),
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            most,
            spin: SpinPolicy::default(),
        }
    }

    /// Sends `request` (an enqueue of `count` tasks, `Client::enqueue_request`)
    /// and waits for its reply; None when the client must send it instead.
    pub fn enqueue(
        &self,
        request: &[u8],
        count: usize,
        engine: Engine,
    ) -> Option<Result<Vec<bool>>> {
        let mut connection = self.take()?;
        let outcome = connection.round_trip(request, count, engine, &self.spin);
        match outcome {
            Ok(EnqueueReply::Added(added)) => {
                self.put_back(connection);
                Some(Ok(added))
            }
            Ok(EnqueueReply::Failed(err)) => {
                self.put_back(connection);
                Some(Err(err))
            }
            Ok(EnqueueReply::UseClient) => {
                self.put_back(connection);
                None
            }
            Err(_) => {
                // Broken or out of step: closed; the client sends it again.
                self.open.fetch_sub(1, Ordering::SeqCst);
                None
            }
        }
    }

    fn take(&self) -> Option<BlockingConnection> {
        if let Some(connection) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Some(connection);
        }
        if self.open.fetch_add(1, Ordering::SeqCst) >= self.most {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        match self.connect() {
            Ok(connection) => Some(connection),
            Err(_) => {
                self.open.fetch_sub(1, Ordering::SeqCst);
                None
            }
        }
    }

    fn put_back(&self, connection: BlockingConnection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(connection);
    }

    fn connect(&self) -> std::io::Result<BlockingConnection> {
        let (connect_timeout, response_timeout) = self.timeouts;
        let stream = match &self.endpoint {
            None => return Err(std::io::ErrorKind::Unsupported.into()),
            Some(Endpoint::Tcp { host, port }) => {
                let addr = (host.as_str(), *port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or(std::io::ErrorKind::NotFound)?;
                let stream = TcpStream::connect_timeout(&addr, connect_timeout)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(response_timeout))?;
                stream.set_write_timeout(Some(response_timeout))?;
                Stream::Tcp(stream)
            }
            Some(Endpoint::Unix { path }) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(response_timeout))?;
                stream.set_write_timeout(Some(response_timeout))?;
                Stream::Unix(stream)
            }
        };
        let mut connection = BlockingConnection {
            stream,
            reader: ReplyReader::new(),
            nonblocking: false,
        };
        let (bytes, count) = &self.handshake;
        if *count > 0 {
            connection.write_all(bytes)?;
            for _ in 0..*count {
                match connection.read_until(|r| r.next_handshake())? {
                    Ok(()) => {}
                    Err(_) => return Err(std::io::ErrorKind::PermissionDenied.into()),
                }
            }
        }
        Ok(connection)
    }
}

impl BlockingConnection {
    fn round_trip(
        &mut self,
        request: &[u8],
        count: usize,
        engine: Engine,
        spin: &SpinPolicy,
    ) -> std::io::Result<EnqueueReply> {
        self.write_all(request)?;
        let next = |r: &mut ReplyReader| r.next_enqueue(count, engine);
        let polled = if spin.polls() {
            let polled = self.read_reply(next, Some(SPIN_FOR))?;
            if polled.is_none() {
                spin.missed();
            }
            polled
        } else {
            None
        };
        let reply = match polled {
            Some(reply) => reply,
            None => self.read_until(next)?,
        };
        reply.map_err(|_| std::io::ErrorKind::InvalidData.into())
    }

    /// Writes all of `bytes` in whichever mode the socket is in: a
    /// non-blocking socket that cannot take them all now becomes blocking.
    fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.set_nonblocking(false)?
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn set_nonblocking(&mut self, nonblocking: bool) -> std::io::Result<()> {
        if self.nonblocking != nonblocking {
            self.stream.set_nonblocking(nonblocking)?;
            self.nonblocking = nonblocking;
        }
        Ok(())
    }

    /// Reads until `next` finds a whole reply: with `poll`, without
    /// sleeping and for at most that long (None if it has not come by
    /// then; what did come stays in the reader); without, sleeping until
    /// data comes (where a read that times out or is interrupted fails).
    fn read_reply<T>(
        &mut self,
        mut next: impl FnMut(&mut ReplyReader) -> Option<T>,
        poll: Option<Duration>,
    ) -> std::io::Result<Option<T>> {
        self.set_nonblocking(poll.is_some())?;
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(found) = next(&mut self.reader) {
                return Ok(Some(found));
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.reader.feed(&buf[..n]),
                // Only a poll reads on past these: a sleeping read that
                // returns them has timed out or was interrupted.
                Err(e) => match (poll, e.kind()) {
                    (Some(budget), std::io::ErrorKind::WouldBlock) => {
                        if started.elapsed() >= budget {
                            return Ok(None);
                        }
                        std::hint::spin_loop();
                    }
                    (Some(_), std::io::ErrorKind::Interrupted) => {}
                    _ => return Err(e),
                },
            }
        }
    }

    /// `read_reply` sleeping until the reply comes.
    fn read_until<T>(
        &mut self,
        next: impl FnMut(&mut ReplyReader) -> Option<T>,
    ) -> std::io::Result<T> {
        // Without a poll, only a whole reply or an error ends the read.
        self.read_reply(next, None)?
            .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
    }
}

/// What the reply to an enqueue of `count` tasks says, as the client would
/// read it.
pub fn enqueue_reply(reply: Value, count: usize, engine: Engine) -> EnqueueReply {
    let err = match reply {
        Value::ServerError(err) => redis::RedisError::from(err),
        reply => {
            return match crate::protocol::enqueue_flags(reply, count) {
                Ok(added) => EnqueueReply::Added(added),
                Err(err) => EnqueueReply::Failed(err),
            }
        }
    };
    if scripts::is_not_loaded(&err) {
        return EnqueueReply::UseClient;
    }
    let err = match engine {
        Engine::Scripts => scripts::script_error(err),
        Engine::Module => Error::from(err),
    };
    match &err {
        Error::Server { code, message }
            if code == "ERR" && message.starts_with("unknown command") =>
        {
            EnqueueReply::UseClient
        }
        _ => EnqueueReply::Failed(err),
    }
}

/// Splits a byte stream of replies into whole replies.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
}

impl ReplyReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole reply, read as an enqueue's of `count` tasks (see
    /// `enqueue_reply`), if one has arrived.
    pub fn next_enqueue(&mut self, count: usize, engine: Engine) -> Option<Result<EnqueueReply>> {
        Some(
            self.next_reply()?
                .map(|reply| enqueue_reply(reply, count, engine)),
        )
    }

    /// The next whole reply, which must be a handshake's `OK`, if one has
    /// arrived; else the error it carries.
    pub fn next_handshake(&mut self) -> Option<Result<()>> {
        Some(self.next_reply()?.and_then(|reply| match reply {
            Value::Okay => Ok(()),
            Value::ServerError(err) => Err(Error::from(redis::RedisError::from(err))),
            other => Err(Error::protocol(format!("expected OK, got {other:?}"))),
        }))
    }

    /// The next whole reply, if one has arrived; an error if the stream is
    /// not RESP (the connection is then unusable).
    pub fn next_reply(&mut self) -> Option<Result<Value>> {
        let len = reply_len(&self.buf, 0)?;
        let reply = redis::parse_redis_value(&self.buf[..len])
            .map_err(|err| Error::protocol(format!("an unreadable reply: {err}")));
        self.buf.drain(..len);
        Some(reply)
    }
}

/// Where the line starting at `at` ends (just past its CRLF).
fn line_end(buf: &[u8], at: usize) -> Option<usize> {
    buf.get(at..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| at + i + 2)
}

/// Where the reply starting at `at` ends, or None if it has not all
/// arrived. RESP2 and RESP3 scalar and aggregate types.
fn reply_len(buf: &[u8], at: usize) -> Option<usize> {
    let kind = *buf.get(at)?;
    let end = line_end(buf, at)?;
    let number = || -> Option<i64> {
        std::str::from_utf8(&buf[at + 1..end - 2])
            .ok()?
            .parse()
            .ok()
    };
    match kind {
        b'$' | b'=' | b'!' => match number() {
            Some(n) if n >= 0 => {
                let total = end + n as usize + 2;
                (buf.len() >= total).then_some(total)
            }
            _ => Some(end),
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => match number() {
            Some(n) if n >= 0 => {
                let items = if matches!(kind, b'%' | b'|') {
                    n * 2
                } else {
                    n
                };
                let mut pos = end;
                for _ in 0..items {
                    pos = reply_len(buf, pos)?;
                }
                Some(pos)
            }
            _ => Some(end),
        },
        _ => Some(end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_that_overran_the_poll_pauses_polling_for_spin_pause_enqueues() {
        let policy = SpinPolicy::default();
        assert!(
            policy.polls() && policy.polls(),
            "replies in time: every enqueue polls"
        );
        policy.missed();
        let skipped = std::iter::repeat_with(|| policy.polls())
            .take(SPIN_PAUSE as usize)
            .filter(|polls| !polls)
            .count();
        assert_eq!(skipped, SPIN_PAUSE as usize);
        assert!(policy.polls(), "the one after the pause polls again");
    }

    #[test]
    fn replies_are_split_where_they_end() {
        let mut reader = ReplyReader::new();
        reader.feed(b"*2\r\n:1\r\n:0\r\n-ERR bad\r\n$3\r\nab");
        assert_eq!(
            reader.next_reply().unwrap().unwrap(),
            Value::Array(vec![Value::Int(1), Value::Int(0)])
        );
        assert!(matches!(
            reader.next_reply().unwrap().unwrap(),
            Value::ServerError(_)
        ));
        assert!(reader.next_reply().is_none(), "a bulk string half read");
        reader.feed(b"c\r\n*-1\r\n+OK\r\n*1\r\n*1\r\n");
        assert_eq!(
            reader.next_reply().unwrap().unwrap(),
            Value::BulkString(b"abc".to_vec())
        );
        assert_eq!(reader.next_reply().unwrap().unwrap(), Value::Nil);
        assert_eq!(reader.next_reply().unwrap().unwrap(), Value::Okay);
        assert!(reader.next_reply().is_none(), "nested arrays half read");
        reader.feed(b":7\r\n");
        assert_eq!(
            reader.next_reply().unwrap().unwrap(),
            Value::Array(vec![Value::Array(vec![Value::Int(7)])])
        );
        assert!(reader.next_reply().is_none());
    }

    #[test]
    fn enqueue_replies_read_as_the_client_reads_them() {
        let added = Value::Array(vec![Value::Int(1), Value::Int(0)]);
        assert_eq!(
            enqueue_reply(added.clone(), 2, Engine::Module),
            EnqueueReply::Added(vec![true, false])
        );
        assert!(matches!(
            enqueue_reply(added, 3, Engine::Module),
            EnqueueReply::Failed(Error::Protocol(_))
        ));
        let error =
            |text: &str| redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).unwrap();
        assert_eq!(
            enqueue_reply(error("ERR Function not found"), 1, Engine::Scripts),
            EnqueueReply::UseClient
        );
        assert_eq!(
            enqueue_reply(
                error("ERR unknown command 'VTASKS.ENQUEUE', with args beginning with: "),
                1,
                Engine::Module
            ),
            EnqueueReply::UseClient
        );
        match enqueue_reply(
            error("QUEUEFULL queue {q} holds 3 of 3 script: abc, on @user_function:12."),
            1,
            Engine::Scripts,
        ) {
            EnqueueReply::Failed(Error::Server { code, message }) => {
                assert_eq!(code, "QUEUEFULL");
                assert_eq!(message, "queue {q} holds 3 of 3");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            enqueue_reply(error("OOM command not allowed"), 1, Engine::Module),
            EnqueueReply::Failed(Error::ServerFull(_))
        ));
    }
}
