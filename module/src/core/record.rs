//! A task's small, changing fields packed into one hash field.
//!
//! Leasing, acknowledging and retrying a task rewrite its status, attempts,
//! token and timestamps. Kept as one space-separated field (`record`), each
//! of those operations reads and writes a single field instead of a dozen,
//! which measured several times cheaper inside Valkey than one field each.
//! The text form stays readable with `HGET` and is easy to split in a Lua
//! script: fifteen space-separated words, `-` for an absent value.

use super::error::{VtError, VtResult};

const VERSION: &[u8] = b"1";
const WORDS: usize = 15;
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
    pub max_attempts: i64,
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
}

impl TaskRecord {
    pub fn new(priority: i64, max_attempts: i64, enqueued_at: i64) -> Self {
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

    pub fn encode(&self) -> Vec<u8> {
        let int = |n: i64| n.to_string().into_bytes();
        let opt = |n: Option<i64>| n.map_or_else(|| ABSENT.to_vec(), int);
        let text = |t: &Option<Vec<u8>>| t.clone().unwrap_or_else(|| ABSENT.to_vec());
        let words: [Vec<u8>; WORDS] = [
            VERSION.to_vec(),
            self.state.as_bytes().to_vec(),
            int(self.priority),
            int(self.max_attempts),
            int(self.attempts),
            int(self.seq),
            int(self.token),
            int(self.enqueued_at),
            opt(self.run_at),
            opt(self.ready_at),
            opt(self.started_at),
            opt(self.leased_at),
            opt(self.finished_at),
            text(&self.consumer),
            text(&self.workers),
        ];
        words.join(&b' ')
    }

    pub fn decode(bytes: &[u8]) -> VtResult<TaskRecord> {
        let corrupt = || {
            VtError::Internal(format!(
                "corrupt task record '{}'",
                String::from_utf8_lossy(bytes)
            ))
        };
        let words: Vec<&[u8]> = bytes.split(|c| *c == b' ').collect();
        if words.len() != WORDS || words[0] != VERSION {
            return Err(corrupt());
        }
        let int = |w: &[u8]| -> VtResult<i64> {
            std::str::from_utf8(w)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(corrupt)
        };
        let opt = |w: &[u8]| -> VtResult<Option<i64>> {
            if w == ABSENT {
                Ok(None)
            } else {
                int(w).map(Some)
            }
        };
        let text = |w: &[u8]| (w != ABSENT).then(|| w.to_vec());
        Ok(TaskRecord {
            state: State::parse(words[1]).ok_or_else(corrupt)?,
            priority: int(words[2])?,
            max_attempts: int(words[3])?,
            attempts: int(words[4])?,
            seq: int(words[5])?,
            token: int(words[6])?,
            enqueued_at: int(words[7])?,
            run_at: opt(words[8])?,
            ready_at: opt(words[9])?,
            started_at: opt(words[10])?,
            leased_at: opt(words[11])?,
            finished_at: opt(words[12])?,
            consumer: text(words[13]),
            workers: text(words[14]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_as_text() {
        let mut rec = TaskRecord::new(-5, 3, 1_700_000_000_000);
        assert_eq!(
            rec.encode(),
            b"1 ready -5 3 0 0 0 1700000000000 - - - - - - -".to_vec()
        );
        rec.lease(b"w1", 7, 1_700_000_000_100);
        rec.lease(b"w2", 9, 1_700_000_000_200);
        rec.lease(b"w1", 11, 1_700_000_000_300);
        assert_eq!(rec.attempts, 3);
        assert_eq!(rec.started_at, Some(1_700_000_000_100));
        assert_eq!(rec.workers.as_deref(), Some(&b"w1,w2"[..]));
        assert_eq!(TaskRecord::decode(&rec.encode()).unwrap(), rec);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"1 ready",
            b"2 ready 0 3 0 0 0 1 - - - - - - -",
            b"1 lost 0 3 0 0 0 1 - - - - - - -",
            b"1 ready x 3 0 0 0 1 - - - - - - -",
        ] {
            assert!(TaskRecord::decode(bad).is_err(), "{bad:?}");
        }
    }
}
