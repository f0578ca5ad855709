//! Periodic schedules kept by the server (`docs/PROTOCOL.md`,
//! "Schedules"): the command types and the one duty clients have with the
//! scripts engine, computing a schedule's next occurrence after it ran.
//!
//! The server fires each occurrence as the task
//! `schedule:<name>:<occurrence ms>`. With the module its timer does it and
//! computes the next occurrence itself; with the scripts engine each FETCHN
//! does it, and reports the schedules whose next occurrence Lua cannot
//! compute (it parses no cron): the client computes it here and sets it
//! with `VTASKS.SCHEDULENEXT`, a compare-and-set that only the first of
//! many workers wins (all compute the same value from the server's time).

use redis::Value;

use crate::error::{Error, Result};
use crate::protocol::{array, bytes, int, text};
use crate::queue::QueueName;
use vtasks_protocol::{
    DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS, MAX_PRIORITY, MAX_SCHEDULE_NAME, MAX_SCHEDULE_PAYLOAD,
    MIN_PRIORITY,
};
pub use vtasks_schedule::{Spec, SpecError};

/// What happens to occurrences found late (the server was down, or, with
/// the scripts engine, no worker fetched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// One run, however late, for everything missed.
    #[default]
    Last,
    /// Occurrences found more than `SCHEDULE_GRACE_MS` (60 s) late are
    /// skipped.
    None,
}

impl CatchUp {
    pub fn name(self) -> &'static str {
        match self {
            CatchUp::Last => "last",
            CatchUp::None => "none",
        }
    }

    /// `last` or `none`.
    pub fn parse(name: &str) -> Result<CatchUp> {
        match name {
            "last" => Ok(CatchUp::Last),
            "none" => Ok(CatchUp::None),
            other => Err(Error::InvalidInput(format!(
                "catch_up must be \"last\" or \"none\", got {other:?}"
            ))),
        }
    }
}

/// A schedule as `VTASKS.SCHEDULE` sets it.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// 1-128 characters of `A-Z a-z 0-9 _ . : - @ /`, unique in its queue.
    pub name: String,
    pub spec: Spec,
    /// The payload of each occurrence's task, as a worker reads it.
    pub payload: Vec<u8>,
    pub priority: i32,
    pub max_attempts: u32,
    pub catch_up: CatchUp,
    pub enabled: bool,
}

/// What `VTASKS.SCHEDULE` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Added,
    Changed,
    /// The same definition was there: its next and last runs are kept.
    Unchanged,
}

impl Schedule {
    pub fn new(name: impl Into<String>, spec: Spec, payload: Vec<u8>) -> Schedule {
        Schedule {
            name: name.into(),
            spec,
            payload,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS as u32,
            catch_up: CatchUp::Last,
            enabled: true,
        }
    }

    /// Refuses what the server would, and a timing that never occurs.
    pub fn validate(&self, now_ms: i64) -> Result<i64> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_SCHEDULE_NAME
            && self
                .name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.:-@/".contains(&c));
        if !name_ok {
            return Err(Error::InvalidInput(format!(
                "schedule name {:?} must be 1-{MAX_SCHEDULE_NAME} characters of A-Z a-z 0-9 _ . : - @ /",
                self.name
            )));
        }
        if self.payload.len() > MAX_SCHEDULE_PAYLOAD {
            return Err(Error::InvalidInput(format!(
                "schedule {}: its task's payload of {} bytes exceeds the limit of {MAX_SCHEDULE_PAYLOAD} bytes",
                self.name,
                self.payload.len()
            )));
        }
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&(self.priority as i64)) {
            return Err(Error::InvalidInput(format!(
                "schedule {}: priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}",
                self.name
            )));
        }
        if !(1..=MAX_ATTEMPTS).contains(&(self.max_attempts as i64)) {
            return Err(Error::InvalidInput(format!(
                "schedule {}: attempts must be between 1 and {MAX_ATTEMPTS}",
                self.name
            )));
        }
        self.spec.next_after(now_ms).ok_or_else(|| {
            Error::InvalidInput(format!(
                "schedule {}: {:?} never occurs after now",
                self.name,
                self.spec.text()
            ))
        })
    }

    /// `VTASKS.SCHEDULE`, with its next occurrence after `now_ms`.
    pub fn to_cmd(&self, queue: &QueueName, now_ms: i64) -> Result<redis::Cmd> {
        let next = self.validate(now_ms)?;
        let mut cmd = redis::cmd("VTASKS.SCHEDULE");
        cmd.arg(queue.wire())
            .arg(&self.name)
            .arg(self.spec.text())
            .arg(&self.payload)
            .arg("NEXT")
            .arg(next);
        if self.priority != 0 {
            cmd.arg("PRIORITY").arg(self.priority);
        }
        if self.max_attempts as i64 != DEFAULT_MAX_ATTEMPTS {
            cmd.arg("ATTEMPTS").arg(self.max_attempts);
        }
        if self.catch_up == CatchUp::None {
            cmd.arg("CATCHUP").arg("NONE");
        }
        if !self.enabled {
            cmd.arg("DISABLED");
        }
        Ok(cmd)
    }

    pub fn outcome(reply: Value) -> Result<SetOutcome> {
        match text(reply)?.as_str() {
            "added" => Ok(SetOutcome::Added),
            "changed" => Ok(SetOutcome::Changed),
            "unchanged" => Ok(SetOutcome::Unchanged),
            other => Err(Error::protocol(format!("unknown SCHEDULE outcome {other}"))),
        }
    }
}

/// One schedule as `VTASKS.SCHEDULES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleInfo {
    pub name: String,
    /// The timing's text form (`every 30`, `cron Europe/Berlin 0 3 * * *`).
    pub timing: String,
    pub payload: Vec<u8>,
    pub priority: i32,
    pub max_attempts: u32,
    pub catch_up: CatchUp,
    pub enabled: bool,
    /// Next occurrence, unix ms (None: pending, or no further occurrence).
    pub next: Option<i64>,
    /// The run (unix ms, server time) after which the next occurrence is
    /// still to be computed (scripts engine, between a run and its client's
    /// SCHEDULENEXT).
    pub pending_since: Option<i64>,
    /// The occurrence of the last task enqueued, unix ms, and its task id.
    pub last: Option<i64>,
    pub last_id: Option<String>,
    pub runs: u64,
    pub skipped: u64,
}

impl ScheduleInfo {
    pub fn list_from_reply(reply: Value) -> Result<Vec<ScheduleInfo>> {
        array(reply)?
            .into_iter()
            .map(ScheduleInfo::from_item)
            .collect()
    }

    fn from_item(item: Value) -> Result<ScheduleInfo> {
        let mut fields = std::collections::HashMap::new();
        let mut it = array(item)?.into_iter();
        while let (Some(name), Some(value)) = (it.next(), it.next()) {
            fields.insert(text(name)?, value);
        }
        let mut take = |name: &str| fields.remove(name);
        let num = |v: Option<Value>| v.map(int).transpose();
        Ok(ScheduleInfo {
            name: take("name").map(text).transpose()?.unwrap_or_default(),
            timing: take("timing").map(text).transpose()?.unwrap_or_default(),
            payload: take("payload").map(bytes).transpose()?.unwrap_or_default(),
            priority: num(take("priority"))?.unwrap_or(0) as i32,
            max_attempts: num(take("attempts"))?.unwrap_or(0) as u32,
            catch_up: CatchUp::parse(&take("catch_up").map(text).transpose()?.unwrap_or_default())
                .map_err(|e| Error::protocol(e.to_string()))?,
            enabled: num(take("enabled"))?.unwrap_or(0) == 1,
            next: num(take("next"))?,
            pending_since: num(take("pending_since"))?,
            last: num(take("last"))?,
            last_id: take("last_id").map(text).transpose()?,
            runs: num(take("runs"))?.unwrap_or(0) as u64,
            skipped: num(take("skipped"))?.unwrap_or(0) as u64,
        })
    }
}

/// A schedule the scripts engine ran whose next occurrence awaits a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSchedule {
    pub queue: Vec<u8>,
    pub name: Vec<u8>,
    pub timing: Vec<u8>,
    /// The server's time of the run: the next occurrence is the first after.
    pub after: i64,
}

impl PendingSchedule {
    /// `VTASKS.SCHEDULENEXT` with the next occurrence computed from the
    /// server's time of the run, so every client computes the same; `NONE`
    /// for a timing with no further occurrence. None for a timing this
    /// client cannot read (left pending, and logged by the caller).
    pub fn next_cmd(&self) -> std::result::Result<redis::Cmd, SpecError> {
        let text = std::str::from_utf8(&self.timing)
            .map_err(|_| SpecError("the timing is not UTF-8".into()))?;
        let spec = Spec::parse(text)?;
        let mut cmd = redis::cmd("VTASKS.SCHEDULENEXT");
        cmd.arg(&self.queue).arg(&self.name).arg(self.after);
        match spec.next_after(self.after) {
            Some(next) => cmd.arg(next),
            None => cmd.arg("NONE"),
        };
        Ok(cmd)
    }
}

/// Takes the scripts engine's pending schedules off a FETCHN reply: a last
/// element `["schedules", [queue, name, timing, after], ...]`. The module
/// never adds one.
pub fn split_pending(reply: Value) -> (Value, Vec<PendingSchedule>) {
    let Value::Array(mut items) = reply else {
        return (reply, Vec::new());
    };
    let is_pending = matches!(
        items.last(),
        Some(Value::Array(last)) if matches!(last.first(), Some(Value::SimpleString(s)) if s == "schedules")
    );
    if items.len() < 4 || !is_pending {
        return (Value::Array(items), Vec::new());
    }
    let Some(Value::Array(entries)) = items.pop() else {
        unreachable!("checked above")
    };
    let pending = entries
        .into_iter()
        .skip(1)
        .filter_map(|entry| {
            let mut it = array(entry).ok()?.into_iter();
            Some(PendingSchedule {
                queue: bytes(it.next()?).ok()?,
                name: bytes(it.next()?).ok()?,
                timing: bytes(it.next()?).ok()?,
                after: int(it.next()?).ok()?,
            })
        })
        .collect();
    (Value::Array(items), pending)
}

/// This machine's clock, unix ms: where a new schedule's first occurrence
/// is counted from (the server's own time counts for every later one).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
