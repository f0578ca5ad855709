//! Errors of the client, with the server's error code kept.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The server answered with an error reply; `code` is its first word
    /// (`ERR`, `WRONGTYPE`, `QUEUEFULL`, `NOQUEUE`, `NOPERM`, ...).
    Server { code: String, message: String },
    /// The server could not be reached, or the connection broke.
    Connection(String),
    /// An argument the client refuses before sending anything.
    InvalidInput(String),
    /// A reply that does not have the shape `docs/PROTOCOL.md` specifies.
    Protocol(String),
    /// A payload that is not valid JSON (or not valid compressed JSON).
    Payload(String),
    /// The module engine was asked for on a server without the module.
    ModuleMissing(String),
    /// The write succeeded on the primary, but fewer replicas than asked
    /// for (`ClientOptions::wait_replicas`) confirmed it in time: it may
    /// not survive a failover. Repeating an enqueue with the same ids is
    /// safe (ENQUEUE is idempotent by id).
    NotReplicated { acked: u64, wanted: u64 },
    /// The server is at its `maxmemory` and refused a command that adds
    /// work (an enqueue, a requeue of dead letters); nothing was written.
    /// Holds the server's own text. Workers still fetch, settle and read
    /// on a full server (only adding work is refused), so the backlog
    /// drains; memory comes back as kept results expire.
    ServerFull(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// `reply`, or a connection error once `limit` has passed without it (for
/// connections with no response timeout of their own: they block in
/// fetches).
pub(crate) async fn reply_within<T>(
    limit: std::time::Duration,
    reply: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, reply)
        .await
        .unwrap_or_else(|_| Err(Error::Connection(format!("no reply within {limit:?}"))))
}

impl Error {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            Error::ServerFull(_) => Some("OOM"),
            _ => None,
        }
    }

    /// Whether retrying the same call after reconnecting can succeed.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Connection(_))
    }

    /// Whether the same call is worth retrying after a pause: the
    /// connection broke, or the server is briefly unable to serve (loading
    /// its data after a restart, busy with a script, failing over, full
    /// until workers and expiring results free memory).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connection(_) | Error::ServerFull(_) => true,
            Error::Server { code, .. } => matches!(
                code.as_str(),
                "LOADING"
                    | "BUSY"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "MASTERDOWN"
                    | "READONLY"
                    | "MOVED"
                    | "ASK"
            ),
            _ => false,
        }
    }

    pub(crate) fn protocol(what: impl Into<String>) -> Self {
        Error::Protocol(what.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Server { code, message } => write!(f, "{code} {message}"),
            Error::Connection(detail) => write!(f, "connection to Valkey failed: {detail}"),
            Error::InvalidInput(detail) => write!(f, "invalid input: {detail}"),
            Error::Protocol(detail) => write!(f, "unexpected reply from Valkey: {detail}"),
            Error::Payload(detail) => write!(f, "bad payload: {detail}"),
            Error::ModuleMissing(detail) => f.write_str(detail),
            Error::ServerFull(detail) => write!(
                f,
                "Valkey is full and refused to add work: {detail} Its memory is at its \
                 `maxmemory` limit, so nothing was written; workers keep draining the \
                 queues. Retry later, raise `maxmemory`, or keep results for less time \
                 (RESULT_TTL, keep_results)"
            ),
            Error::NotReplicated { acked, wanted } => write!(
                f,
                "written on the primary but confirmed by {acked} of {wanted} replicas in time: \
                 it may be lost if the primary fails now"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || err.is_unrecoverable_error()
        {
            return Error::Connection(err.to_string());
        }
        match err.code() {
            Some("OOM") => Error::ServerFull(format!("OOM {}", err.detail().unwrap_or_default())),
            Some(code) => Error::Server {
                code: code.to_string(),
                message: err.detail().unwrap_or_default().to_string(),
            },
            None => Error::Connection(err.to_string()),
        }
    }
}
