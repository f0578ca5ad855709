//! A task's small, changing fields packed into one hash field.
//!
//! Leasing, acknowledging and retrying a task rewrite its status, attempts,
//! token and timestamps. Kept as one space-separated field (`record`), each
//! of those operations reads and writes a single field instead of a dozen,
//! which measured several times cheaper inside Valkey than one field each.
//! The text form stays readable with `HGET` and is easy to split in a Lua
//! script: eighteen space-separated words, `-` for an absent value, times
//! after the enqueue time as offsets from it.
//!
//! Version 2 added the separate budgets (failed attempts, lost leases and the
//! lost-lease budget) as three words at the end. Version-1 records, written
//! by earlier releases, are still read: see `TaskRecord::decode`.

use super::error::{VtError, VtResult};
use super::keys::DEFAULT_MAX_LOST_LEASES;

const VERSION: &[u8] = b"2";
const VERSION_1: &[u8] = b"1";
const ABSENT: &[u8] = b"-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Delayed,
    Ready,
    Leased,
    Done,
    Dead,
}

impl State {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            State::Delayed => b"delayed",
            State::Ready => b"ready",
            State::Leased => b"leased",
            State::Done => b"done",
            State::Dead => b"dead",
        }
    }

    fn parse(word: &[u8]) -> Option<State> {
        Some(match word {
            b"delayed" => State::Delayed,
            b"ready" => State::Ready,
            b"leased" => State::Leased,
            b"done" => State::Done,
            b"dead" => State::Dead,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub state: State,
    pub priority: i64,
    /// Budget of failed attempts (NACKs).
    pub max_attempts: i64,
    /// Attempts started so far (leases taken, less those released).
    pub attempts: i64,
    /// Ready-order number (see the ready score).
    pub seq: i64,
    /// The current lease's fencing token (0 before the first lease).
    pub token: i64,
    pub enqueued_at: i64,
    pub run_at: Option<i64>,
    pub ready_at: Option<i64>,
    pub started_at: Option<i64>,
    pub leased_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The consumer holding, or that last held, the lease.
    pub consumer: Option<Vec<u8>>,
    /// Every consumer that leased the task, comma-separated, first-seen order.
    pub workers: Option<Vec<u8>>,
    /// Attempts the worker reported as failed (NACK), counted against
    /// `max_attempts`.
    pub failures: i64,
    /// Leases that expired because their worker vanished (or stopped
    /// renewing), counted against `max_lost`.
    pub lost: i64,
    /// Budget of lost leases.
    pub max_lost: i64,
}

impl TaskRecord {
    pub fn new(priority: i64, max_attempts: i64, max_lost: i64, enqueued_at: i64) -> Self {
        TaskRecord {
            state: State::Ready,
            priority,
            max_attempts,
            attempts: 0,
            seq: 0,
            token: 0,
            enqueued_at,
            run_at: None,
            ready_at: None,
            started_at: None,
            leased_at: None,
            finished_at: None,
            consumer: None,
            workers: None,
            failures: 0,
            lost: 0,
            max_lost,
        }
    }

    /// Records a lease by `consumer`.
    pub fn lease(&mut self, consumer: &[u8], token: i64, now: i64) {
        self.state = State::Leased;
        self.attempts += 1;
        self.token = token;
        self.leased_at = Some(now);
        self.started_at.get_or_insert(now);
        self.consumer = Some(consumer.to_vec());
        match &mut self.workers {
            None => self.workers = Some(consumer.to_vec()),
            Some(list) if list.split(|c| *c == b',').any(|w| w == consumer) => {}
            Some(list) => {
                list.push(b',');
                list.extend_from_slice(consumer);
            }
        }
    }

    /// Times after `enqueued_at` are written as offsets from it, which
    /// keeps a record short enough for Valkey's compact hash encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let absent = |out: &mut Vec<u8>| out.extend_from_slice(ABSENT);
        out.extend_from_slice(VERSION);
        out.push(b' ');
        out.extend_from_slice(self.state.as_bytes());
        for n in [
            self.priority,
            self.max_attempts,
            self.attempts,
            self.seq,
            self.token,
            self.enqueued_at,
        ] {
            out.push(b' ');
            push_int(&mut out, n);
        }
        for time in [
            self.run_at,
            self.ready_at,
            self.started_at,
            self.leased_at,
            self.finished_at,
        ] {
            out.push(b' ');
            match time {
                Some(t) => push_int(&mut out, t - self.enqueued_at),
                None => absent(&mut out),
            }
        }
        for text in [&self.consumer, &self.workers] {
            out.push(b' ');
            match text {
                Some(t) => out.extend_from_slice(t),
                None => absent(&mut out),
            }
        }
        for n in [self.failures, self.lost, self.max_lost] {
            out.push(b' ');
            push_int(&mut out, n);
        }
        out
    }

    /// Reads a version-2 record, or a version-1 record as written by
    /// earlier releases. Version 1 counted every started attempt (failed
    /// or lost) against `max_attempts`; those attempts are read as failed
    /// ones (less the one running, for a leased task), so an upgrade never
    /// grants a task more retries than it was promised, and its lost-lease
    /// budget starts afresh at the default.
    pub fn decode(bytes: &[u8]) -> VtResult<TaskRecord> {
        let corrupt = || {
            VtError::Internal(format!(
                "corrupt task record '{}'",
                crate::core::error::shown(bytes)
            ))
        };
        let mut words = bytes.split(|c| *c == b' ');
        let mut next = || words.next().ok_or_else(corrupt);
        let int = |w: &[u8]| parse_int(w).ok_or_else(corrupt);
        let version = next()?;
        let v1 = version == VERSION_1;
        if !v1 && version != VERSION {
            return Err(corrupt());
        }
        let state = State::parse(next()?).ok_or_else(corrupt)?;
        let priority = int(next()?)?;
        let max_attempts = int(next()?)?;
        let attempts = int(next()?)?;
        let seq = int(next()?)?;
        let token = int(next()?)?;
        let enqueued_at = int(next()?)?;
        let mut time = || -> VtResult<Option<i64>> {
            let w = next()?;
            if w == ABSENT {
                Ok(None)
            } else {
                Ok(Some(enqueued_at + int(w)?))
            }
        };
        let (run_at, ready_at, started_at, leased_at, finished_at) =
            (time()?, time()?, time()?, time()?, time()?);
        let text = |w: &[u8]| (w != ABSENT).then(|| w.to_vec());
        let consumer = text(next()?);
        let workers = text(next()?);
        let (failures, lost, max_lost) = if v1 {
            let running = (state == State::Leased) as i64;
            ((attempts - running).max(0), 0, DEFAULT_MAX_LOST_LEASES)
        } else {
            (int(next()?)?, int(next()?)?, int(next()?)?)
        };
        if next().is_ok() {
            return Err(corrupt());
        }
        Ok(TaskRecord {
            state,
            priority,
            max_attempts,
            attempts,
            seq,
            token,
            enqueued_at,
            run_at,
            ready_at,
            started_at,
            leased_at,
            finished_at,
            consumer,
            workers,
            failures,
            lost,
            max_lost,
        })
    }
}

/// Decimal formatting without the formatting machinery: records are
/// written for every task on every lease.
fn push_int(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut rest = n.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn parse_int(word: &[u8]) -> Option<i64> {
    let (negative, digits) = match word.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, word),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_as_text() {
        let mut rec = TaskRecord::new(-5, 3, 4, 1_700_000_000_000);
        assert_eq!(
            rec.encode(),
            b"2 ready -5 3 0 0 0 1700000000000 - - - - - - - 0 0 4".to_vec()
        );
        rec.lease(b"w1", 7, 1_700_000_000_100);
        rec.lease(b"w2", 9, 1_700_000_000_200);
        rec.lease(b"w1", 11, 1_700_000_000_300);
        assert_eq!(rec.attempts, 3);
        assert_eq!(rec.started_at, Some(1_700_000_000_100));
        assert_eq!(rec.workers.as_deref(), Some(&b"w1,w2"[..]));
        rec.failures = 1;
        rec.lost = 1;
        assert_eq!(
            rec.encode(),
            b"2 leased -5 3 3 0 11 1700000000000 - - 100 300 - w1 w1,w2 1 1 4".to_vec()
        );
        assert_eq!(TaskRecord::decode(&rec.encode()).unwrap(), rec);
    }

    #[test]
    fn version_1_records_are_read_with_their_attempts_as_failures() {
        let leased =
            TaskRecord::decode(b"1 leased 0 3 2 17 40 1764190000000 - 0 12 5034 - w2 w1,w2")
                .unwrap();
        assert_eq!(leased.state, State::Leased);
        assert_eq!((leased.attempts, leased.max_attempts), (2, 3));
        // One attempt ended before; the second is running.
        assert_eq!(leased.failures, 1);
        assert_eq!((leased.lost, leased.max_lost), (0, DEFAULT_MAX_LOST_LEASES));
        assert_eq!(leased.workers.as_deref(), Some(&b"w1,w2"[..]));
        let ready = TaskRecord::decode(b"1 ready 0 3 2 17 40 1764190000000 - 0 12 5034 - w2 w1,w2")
            .unwrap();
        assert_eq!(ready.failures, 2);
        // Written back as version 2.
        assert!(ready.encode().starts_with(b"2 ready 0 3 2 17 40 "));
        assert!(ready.encode().ends_with(b" w2 w1,w2 2 0 3"));
    }

    #[test]
    fn integers_format_and_parse_like_std() {
        for n in [0, 7, -7, 1_700_000_000_000, i64::MAX, i64::MIN + 1, -100] {
            let mut out = Vec::new();
            push_int(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
            assert_eq!(parse_int(&out), Some(n));
        }
        for bad in [&b""[..], b"-", b"1x", b"99999999999999999999", b"+1"] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"1 ready",
            b"3 ready 0 3 0 0 0 1 - - - - - - - 0 0 3",
            b"2 ready 0 3 0 0 0 1 - - - - - - -",
            b"1 ready 0 3 0 0 0 1 - - - - - - - 0 0 3",
            b"1 lost 0 3 0 0 0 1 - - - - - - -",
            b"1 ready x 3 0 0 0 1 - - - - - - -",
            b"2 ready 0 3 0 0 0 1 - - - - - - - 0 x 3",
        ] {
            assert!(TaskRecord::decode(bad).is_err(), "{bad:?}");
        }
    }
}
