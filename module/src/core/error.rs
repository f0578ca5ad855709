//! The one error type of the queue core and the command layer.
//!
//! Every variant renders as a complete Valkey error reply: the first word is
//! the error code (`ERR`, `WRONGTYPE`, `QUEUEFULL`, `NOQUEUE`) so clients can
//! map replies back to variants without parsing prose.

use std::fmt;

use vtasks_protocol::{
    MAX_CONSUMER_LEN, MAX_ID_LEN, MAX_QUEUE_NAME, MAX_SCHEDULES, MAX_SCHEDULE_NAME,
    MAX_SCHEDULE_SPEC,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VtError {
    /// Malformed command: unknown option, missing value, leftover arguments.
    Syntax(String),
    /// A numeric argument that does not parse as an integer.
    NotAnInteger(&'static str),
    /// A numeric argument outside its documented range.
    OutOfRange {
        what: &'static str,
        min: i64,
        max: i64,
    },
    /// A queue argument that is not `{name}` with an allowed name.
    InvalidQueue(String),
    /// A task id that is empty or too long.
    InvalidId,
    /// A consumer name that is empty, too long or has disallowed characters.
    InvalidConsumer,
    /// A schedule name that is empty, too long or has disallowed characters.
    InvalidScheduleName,
    /// A schedule timing that is empty, too long or not printable ASCII.
    InvalidScheduleSpec,
    /// A payload, result or error text larger than the documented limit.
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// A key of the queue holds a value of another type.
    WrongType,
    /// `MAXLEN` backpressure refused the whole enqueue.
    QueueFull {
        queue: String,
        held: u64,
        limit: u64,
    },
    /// A queue already holds `MAX_SCHEDULES` schedules.
    TooManySchedules { queue: String },
    /// A read-only command named a queue that has never been used.
    NoQueue(String),
    /// An ACK/NACK inside FETCHN names a queue the call did not declare.
    UndeclaredQueue(String),
    /// A panic or broken invariant caught at the FFI boundary.
    Internal(String),
}

pub type VtResult<T> = Result<T, VtError>;

impl VtError {
    pub fn syntax(detail: impl Into<String>) -> Self {
        VtError::Syntax(detail.into())
    }
}

impl fmt::Display for VtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VtError::Syntax(detail) => write!(f, "ERR syntax error: {detail}"),
            VtError::NotAnInteger(what) => write!(f, "ERR {what} must be an integer"),
            VtError::OutOfRange { what, min, max } => {
                write!(f, "ERR {what} must be between {min} and {max}")
            }
            VtError::InvalidQueue(given) => write!(
                f,
                "ERR invalid queue '{given}': expected {{name}} where name is 1-{MAX_QUEUE_NAME} characters of A-Z a-z 0-9 _ . : -"
            ),
            VtError::InvalidId => write!(f, "ERR task id must be 1-{MAX_ID_LEN} bytes"),
            VtError::InvalidConsumer => write!(
                f,
                "ERR consumer name must be 1-{MAX_CONSUMER_LEN} characters of A-Z a-z 0-9 _ . : - @ /"
            ),
            VtError::InvalidScheduleName => write!(
                f,
                "ERR schedule name must be 1-{MAX_SCHEDULE_NAME} characters of A-Z a-z 0-9 _ . : - @ /"
            ),
            VtError::InvalidScheduleSpec => write!(
                f,
                "ERR schedule timing must be 1-{MAX_SCHEDULE_SPEC} bytes of printable ASCII"
            ),
            VtError::TooLarge { what, size, limit } => {
                write!(f, "ERR {what} of {size} bytes exceeds the limit of {limit} bytes")
            }
            VtError::WrongType => write!(
                f,
                "WRONGTYPE Operation against a key holding the wrong kind of value"
            ),
            VtError::QueueFull { queue, held, limit } => write!(
                f,
                "QUEUEFULL queue {queue} holds {held} pending tasks; MAXLEN is {limit}"
            ),
            VtError::TooManySchedules { queue } => write!(
                f,
                "ERR queue {queue} holds {MAX_SCHEDULES} schedules, the most one queue holds"
            ),
            VtError::NoQueue(queue) => write!(f, "NOQUEUE no such queue {queue}"),
            VtError::UndeclaredQueue(queue) => write!(
                f,
                "ERR queue {queue} in ACK/NACK is not among the queues this FETCHN names"
            ),
            VtError::Internal(detail) => write!(f, "ERR internal error: {detail}"),
        }
    }
}

impl std::error::Error for VtError {}

/// An argument as error messages quote it: at most its first 64 bytes
/// (then `...`), control characters as `?`, so a hostile argument can
/// neither bloat an error reply nor break its line.
pub fn shown(arg: &[u8]) -> String {
    const MAX: usize = 64;
    let cut = &arg[..arg.len().min(MAX)];
    let mut text: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_ascii_control() { '?' } else { c })
        .collect();
    if arg.len() > MAX {
        text.push_str("...");
    }
    text
}
