//! One type per command, with its request (`to_cmd`) and its reply
//! (`from_reply`) side by side. Syntax and replies: `docs/PROTOCOL.md`.

use std::time::Duration;

use redis::Value;
use vtasks_protocol::{DEFAULT_LEASE_MS, MAX_PRIORITY, MIN_PRIORITY};

use crate::error::{Error, Result};
use crate::queue::QueueName;

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// When an enqueued task becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum When {
    #[default]
    Now,
    After(Duration),
    /// Unix time in milliseconds.
    At(u64),
}

/// A task to enqueue: a client-chosen id and an encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub id: String,
    pub payload: Vec<u8>,
    /// −100..=100, higher first.
    pub priority: i32,
    pub when: When,
    /// Attempts that may fail (the handler reported a failure) before the
    /// task is dead-lettered. None: the server's default
    /// (`vtasks_protocol::DEFAULT_MAX_ATTEMPTS`).
    pub max_attempts: Option<u32>,
    /// Leases that may be lost (the worker running the task vanished:
    /// a crash, a kill, a lost connection) before the task is
    /// dead-lettered. None: the server's default
    /// (`vtasks_protocol::DEFAULT_MAX_LOST_LEASES`).
    pub max_lost_leases: Option<u32>,
    /// Replace a finished task with the same id (unique tasks): at most one
    /// waiting or running task per id.
    pub replace_finished: bool,
}

impl NewTask {
    pub fn new(id: impl Into<String>, payload: Vec<u8>) -> Self {
        NewTask {
            id: id.into(),
            payload,
            priority: 0,
            when: When::Now,
            max_attempts: None,
            max_lost_leases: None,
            replace_finished: false,
        }
    }
}

/// `VTASKS.ENQUEUE`
pub struct Enqueue<'a> {
    pub queue: &'a QueueName,
    pub tasks: &'a [NewTask],
    pub maxlen: Option<u64>,
}

impl Enqueue<'_> {
    pub fn to_cmd(&self) -> Result<redis::Cmd> {
        if self.tasks.is_empty() {
            return Err(Error::InvalidInput(
                "enqueue needs at least one task".into(),
            ));
        }
        let mut cmd = redis::cmd("VTASKS.ENQUEUE");
        cmd.arg(self.queue.wire());
        if let Some(maxlen) = self.maxlen {
            cmd.arg("MAXLEN").arg(maxlen);
        }
        for task in self.tasks {
            if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&i64::from(task.priority)) {
                return Err(Error::InvalidInput(format!(
                    "priority {} of task {}: expected {MIN_PRIORITY}..={MAX_PRIORITY}",
                    task.priority, task.id
                )));
            }
            cmd.arg("TASK").arg(&task.id).arg(&task.payload);
            if task.priority != 0 {
                cmd.arg("PRIORITY").arg(task.priority);
            }
            match task.when {
                When::Now => {}
                When::After(delay) => {
                    cmd.arg("DELAY").arg(millis(delay));
                }
                When::At(at) => {
                    cmd.arg("RUNAT").arg(at);
                }
            }
            if let Some(n) = task.max_attempts {
                cmd.arg("ATTEMPTS").arg(n);
            }
            if let Some(n) = task.max_lost_leases {
                cmd.arg("LOSTLEASES").arg(n);
            }
            if task.replace_finished {
                cmd.arg("REPLACEFINISHED");
            }
        }
        Ok(cmd)
    }

    /// Per task: true if added, false if a task with that id already existed.
    pub fn from_reply(&self, reply: Value) -> Result<Vec<bool>> {
        enqueue_flags(reply, self.tasks.len())
    }
}

/// An ENQUEUE reply for `count` tasks: per task, whether it was added.
pub fn enqueue_flags(reply: Value, count: usize) -> Result<Vec<bool>> {
    let added = array(reply)?
        .into_iter()
        .map(|v| int(v).map(|n| n == 1))
        .collect::<Result<Vec<_>>>()?;
    if added.len() != count {
        return Err(Error::protocol(
            "ENQUEUE answered a different number of tasks",
        ));
    }
    Ok(added)
}

/// A leased task handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub queue: QueueName,
    pub id: String,
    pub token: i64,
    pub attempt: u32,
    pub payload: Vec<u8>,
}

/// Outcome of an operation that needs the lease (ACK, EXTEND, RELEASE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Ok,
    /// The lease expired and the task moved on; the call changed nothing.
    Stale,
    NoTask,
}

/// Outcome of a NACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    Retrying,
    Dead,
    Refused(Settled),
}

/// What to do with a failed task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    After(Duration),
    /// Dead-letter now: the task can never succeed.
    Never,
}

/// A finished task to acknowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub queue: QueueName,
    pub id: String,
    pub token: i64,
    /// The encoded result to keep, if any.
    pub result: Option<Vec<u8>>,
}

/// A failed attempt to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub queue: QueueName,
    pub id: String,
    pub token: i64,
    pub retry: Retry,
    pub error: String,
}

/// `VTASKS.FETCHN`: settle finished tasks and lease new ones, in one call.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub queues: Vec<QueueName>,
    pub consumer: String,
    pub count: usize,
    pub lease: Duration,
    /// Block server-side for up to this long when nothing is ready.
    pub block: Option<Duration>,
    /// How long finished tasks' records and results are kept.
    pub keep: Option<Duration>,
    pub acks: Vec<Ack>,
    pub nacks: Vec<Nack>,
}

/// What FETCHN answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub tasks: Vec<Delivery>,
    pub acks: Vec<Settled>,
    pub nacks: Vec<NackOutcome>,
}

impl Fetch {
    /// One task from `queues` for `consumer`, with the module's default
    /// lease (`DEFAULT_LEASE_MS`, 30 s), no blocking and nothing to settle; set the other
    /// fields with struct update syntax.
    pub fn new(queues: Vec<QueueName>, consumer: impl Into<String>) -> Fetch {
        Fetch {
            queues,
            consumer: consumer.into(),
            count: 1,
            lease: Duration::from_millis(DEFAULT_LEASE_MS as u64),
            block: None,
            keep: None,
            acks: Vec::new(),
            nacks: Vec::new(),
        }
    }

    pub fn to_cmd(&self) -> Result<redis::Cmd> {
        if self.queues.is_empty() {
            return Err(Error::InvalidInput("fetch needs at least one queue".into()));
        }
        let mut cmd = redis::cmd("VTASKS.FETCHN");
        cmd.arg(self.queues.len());
        for q in &self.queues {
            cmd.arg(q.wire());
        }
        cmd.arg("CONSUMER").arg(&self.consumer);
        cmd.arg("COUNT").arg(self.count.max(1));
        cmd.arg("LEASE").arg(millis(self.lease).max(1));
        if let Some(block) = self.block {
            cmd.arg("BLOCK").arg(millis(block));
        }
        if let Some(keep) = self.keep {
            cmd.arg("KEEP").arg(millis(keep));
        }
        if !self.acks.is_empty() {
            cmd.arg("ACK").arg(self.acks.len());
            for a in &self.acks {
                cmd.arg(a.queue.wire())
                    .arg(&a.id)
                    .arg(a.token)
                    .arg(a.result.as_deref().unwrap_or_default());
            }
        }
        if !self.nacks.is_empty() {
            cmd.arg("NACK").arg(self.nacks.len());
            for n in &self.nacks {
                cmd.arg(n.queue.wire()).arg(&n.id).arg(n.token);
                match n.retry {
                    Retry::After(d) => cmd.arg(millis(d)),
                    Retry::Never => cmd.arg("DEAD"),
                };
                cmd.arg(&n.error);
            }
        }
        Ok(cmd)
    }

    pub fn from_reply(&self, reply: Value) -> Result<Fetched> {
        let mut parts = array(reply)?.into_iter();
        let (Some(tasks), Some(acks), Some(nacks), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::protocol("FETCHN replies [tasks, acks, nacks]"));
        };
        // The tasks of a batch mostly come from one queue: its name is
        // read once and shared.
        let mut queue: Option<QueueName> = None;
        let tasks = array(tasks)?
            .into_iter()
            .map(|task| delivery(task, &mut queue))
            .collect::<Result<Vec<_>>>()?;
        let acks = array(acks)?
            .into_iter()
            .map(settled)
            .collect::<Result<Vec<_>>>()?;
        let nacks = array(nacks)?
            .into_iter()
            .map(nack_outcome)
            .collect::<Result<Vec<_>>>()?;
        Ok(Fetched { tasks, acks, nacks })
    }
}

/// A leased task; `last` is the queue of the task before it, reused when
/// this one names the same queue.
fn delivery(v: Value, last: &mut Option<QueueName>) -> Result<Delivery> {
    let mut f = array(v)?.into_iter();
    let (Some(queue), Some(id), Some(token), Some(attempt), Some(payload)) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(Error::protocol(
            "a leased task is [queue, id, token, attempt, payload]",
        ));
    };
    let queue = match (last.as_ref(), &queue) {
        (Some(known), Value::BulkString(raw)) if known.is_named(raw) => known.clone(),
        _ => {
            let named = QueueName::new(&text(queue)?)?;
            *last = Some(named.clone());
            named
        }
    };
    Ok(Delivery {
        queue,
        id: text(id)?,
        token: int(token)?,
        attempt: int(attempt)? as u32,
        payload: bytes(payload)?,
    })
}

/// `VTASKS.ACK`
pub struct AckCmd<'a> {
    pub queue: &'a QueueName,
    pub items: &'a [(String, i64, Option<Vec<u8>>)],
    pub keep: Option<Duration>,
}

impl AckCmd<'_> {
    pub fn to_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("VTASKS.ACK");
        cmd.arg(self.queue.wire()).arg(self.items.len());
        for (id, token, result) in self.items {
            cmd.arg(id)
                .arg(*token)
                .arg(result.as_deref().unwrap_or_default());
        }
        if let Some(keep) = self.keep {
            cmd.arg("KEEP").arg(millis(keep));
        }
        cmd
    }
}

/// `VTASKS.NACK`
pub struct NackCmd<'a> {
    pub queue: &'a QueueName,
    pub items: &'a [(String, i64, Retry, String)],
}

impl NackCmd<'_> {
    pub fn to_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("VTASKS.NACK");
        cmd.arg(self.queue.wire()).arg(self.items.len());
        for (id, token, retry, error) in self.items {
            cmd.arg(id).arg(*token);
            match retry {
                Retry::After(d) => cmd.arg(millis(*d)),
                Retry::Never => cmd.arg("DEAD"),
            };
            cmd.arg(error);
        }
        cmd
    }
}

/// `VTASKS.EXTEND` (with `lease`) or `VTASKS.RELEASE` (without).
pub struct LeaseCmd<'a> {
    pub queue: &'a QueueName,
    pub items: &'a [(String, i64)],
    pub extend_by: Option<Duration>,
}

impl LeaseCmd<'_> {
    pub fn to_cmd(&self) -> redis::Cmd {
        let mut cmd = match self.extend_by {
            Some(lease) => {
                let mut c = redis::cmd("VTASKS.EXTEND");
                c.arg(self.queue.wire()).arg(millis(lease).max(1));
                c
            }
            None => {
                let mut c = redis::cmd("VTASKS.RELEASE");
                c.arg(self.queue.wire());
                c
            }
        };
        cmd.arg(self.items.len());
        for (id, token) in self.items {
            cmd.arg(id).arg(*token);
        }
        cmd
    }
}

pub fn settled_list(reply: Value) -> Result<Vec<Settled>> {
    array(reply)?.into_iter().map(settled).collect()
}

pub fn nack_list(reply: Value) -> Result<Vec<NackOutcome>> {
    array(reply)?.into_iter().map(nack_outcome).collect()
}

fn settled(v: Value) -> Result<Settled> {
    match text(v)?.as_str() {
        "OK" => Ok(Settled::Ok),
        "STALE" => Ok(Settled::Stale),
        "NOTASK" => Ok(Settled::NoTask),
        other => Err(Error::protocol(format!(
            "unknown settlement status {other}"
        ))),
    }
}

fn nack_outcome(v: Value) -> Result<NackOutcome> {
    match text(v)?.as_str() {
        "RETRY" => Ok(NackOutcome::Retrying),
        "DEAD" => Ok(NackOutcome::Dead),
        "STALE" => Ok(NackOutcome::Refused(Settled::Stale)),
        "NOTASK" => Ok(NackOutcome::Refused(Settled::NoTask)),
        other => Err(Error::protocol(format!("unknown NACK status {other}"))),
    }
}

/// A task's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Delayed,
    Ready,
    Leased,
    Done,
    Dead,
}

/// `VTASKS.GET`: one task's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub status: Status,
    pub priority: i32,
    /// Attempts started (leases taken, less those released unstarted).
    pub attempts: u32,
    /// Budget of failed attempts.
    pub max_attempts: u32,
    /// Attempts the worker reported as failed.
    pub failed_attempts: u32,
    /// Leases lost because the worker running the task vanished.
    pub lost_leases: u32,
    /// Budget of lost leases.
    pub max_lost_leases: u32,
    /// Unix times in milliseconds.
    pub enqueued_at: i64,
    pub run_at: Option<i64>,
    pub started_at: Option<i64>,
    pub leased_at: Option<i64>,
    pub deadline: Option<i64>,
    pub finished_at: Option<i64>,
    pub consumer: Option<String>,
    pub workers: Vec<String>,
    pub error: Option<String>,
    pub result: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl TaskInfo {
    pub fn from_reply(reply: Value) -> Result<Option<TaskInfo>> {
        if reply == Value::Nil {
            return Ok(None);
        }
        let pairs = array(reply)?;
        let mut fields = std::collections::HashMap::new();
        let mut it = pairs.into_iter();
        while let (Some(name), Some(value)) = (it.next(), it.next()) {
            fields.insert(text(name)?, value);
        }
        let mut take = |name: &str| fields.remove(name);
        let num = |v: Option<Value>| v.map(int).transpose();
        let status = match take("status").map(text).transpose()?.as_deref() {
            Some("delayed") => Status::Delayed,
            Some("ready") => Status::Ready,
            Some("leased") => Status::Leased,
            Some("done") => Status::Done,
            Some("dead") => Status::Dead,
            other => return Err(Error::protocol(format!("unknown task status {other:?}"))),
        };
        Ok(Some(TaskInfo {
            status,
            priority: num(take("priority"))?.unwrap_or(0) as i32,
            attempts: num(take("attempts"))?.unwrap_or(0) as u32,
            max_attempts: num(take("max_attempts"))?.unwrap_or(0) as u32,
            failed_attempts: num(take("failed_attempts"))?.unwrap_or(0) as u32,
            lost_leases: num(take("lost_leases"))?.unwrap_or(0) as u32,
            max_lost_leases: num(take("max_lost_leases"))?.unwrap_or(0) as u32,
            enqueued_at: num(take("enqueued_at"))?.unwrap_or(0),
            run_at: num(take("run_at"))?,
            started_at: num(take("started_at"))?,
            leased_at: num(take("leased_at"))?,
            deadline: num(take("deadline"))?,
            finished_at: num(take("finished_at"))?,
            consumer: take("consumer").map(text).transpose()?,
            workers: take("workers")
                .map(text)
                .transpose()?
                .map(|w| w.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            error: take("error").map(text).transpose()?,
            result: take("result").map(bytes).transpose()?,
            payload: take("payload").map(bytes).transpose()?.unwrap_or_default(),
        }))
    }
}

/// `VTASKS.STATS`: counts and totals, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub values: Vec<(String, i64)>,
}

impl QueueStats {
    pub fn from_reply(reply: Value) -> Result<QueueStats> {
        let mut values = Vec::new();
        let mut it = array(reply)?.into_iter();
        while let (Some(name), Some(value)) = (it.next(), it.next()) {
            values.push((text(name)?, int(value)?));
        }
        Ok(QueueStats { values })
    }

    /// A count by its `VTASKS.STATS` name (`ready`, `leased`, `acked`, ...).
    pub fn get(&self, name: &str) -> Option<i64> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// One dead-lettered task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadTask {
    pub id: String,
    pub dead_at: i64,
    pub attempts: u32,
    pub error: String,
}

pub fn dead_list(reply: Value) -> Result<Vec<DeadTask>> {
    array(reply)?
        .into_iter()
        .map(|entry| {
            let mut f = array(entry)?.into_iter();
            let (Some(id), Some(at), Some(attempts), Some(error)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                return Err(Error::protocol(
                    "a dead entry is [id, dead_at, attempts, error]",
                ));
            };
            Ok(DeadTask {
                id: text(id)?,
                dead_at: int(at)?,
                attempts: int(attempts)? as u32,
                error: text(error)?,
            })
        })
        .collect()
}

pub(crate) fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(Error::protocol(format!("expected an array, got {other:?}"))),
    }
}

pub(crate) fn int(v: Value) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(n),
        Value::BulkString(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::protocol("expected an integer")),
        other => Err(Error::protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

pub(crate) fn bytes(v: Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        other => Err(Error::protocol(format!("expected a string, got {other:?}"))),
    }
}

pub(crate) fn text(v: Value) -> Result<String> {
    String::from_utf8(bytes(v)?).map_err(|_| Error::protocol("expected UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn enqueue_writes_only_the_options_it_needs() {
        let q = QueueName::new("q").unwrap();
        let tasks = [
            NewTask::new("a", b"{}".to_vec()),
            NewTask {
                priority: 5,
                when: When::After(Duration::from_millis(250)),
                max_attempts: Some(2),
                max_lost_leases: Some(4),
                ..NewTask::new("b", b"[]".to_vec())
            },
        ];
        let cmd = Enqueue {
            queue: &q,
            tasks: &tasks,
            maxlen: Some(10),
        }
        .to_cmd()
        .unwrap();
        let words: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(
            words,
            [
                "VTASKS.ENQUEUE",
                "{q}",
                "MAXLEN",
                "10",
                "TASK",
                "a",
                "{}",
                "TASK",
                "b",
                "[]",
                "PRIORITY",
                "5",
                "DELAY",
                "250",
                "ATTEMPTS",
                "2",
                "LOSTLEASES",
                "4"
            ]
        );
        let bad = [NewTask {
            priority: 101,
            ..NewTask::new("c", vec![])
        }];
        assert!(Enqueue {
            queue: &q,
            tasks: &bad,
            maxlen: None
        }
        .to_cmd()
        .is_err());
    }

    #[test]
    fn fetch_reply_parses_tasks_and_outcomes() {
        let fetch = Fetch::new(vec![QueueName::new("q").unwrap()], "w");
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![
                bulk("{q}"),
                bulk("t1"),
                Value::Int(7),
                Value::Int(1),
                bulk("{}"),
            ])]),
            Value::Array(vec![
                Value::SimpleString("OK".into()),
                Value::SimpleString("STALE".into()),
            ]),
            Value::Array(vec![Value::SimpleString("DEAD".into())]),
        ]);
        let got = fetch.from_reply(reply).unwrap();
        assert_eq!(got.tasks[0].id, "t1");
        assert_eq!(got.tasks[0].token, 7);
        assert_eq!(got.tasks[0].queue.name(), "q");
        assert_eq!(got.acks, [Settled::Ok, Settled::Stale]);
        assert_eq!(got.nacks, [NackOutcome::Dead]);
        assert!(fetch.from_reply(Value::Array(vec![])).is_err());
    }

    #[test]
    fn fetch_reply_names_each_task_s_own_queue() {
        let fetch = Fetch::new(
            vec![QueueName::new("a").unwrap(), QueueName::new("b").unwrap()],
            "w",
        );
        let task = |queue: &str, id: &str| {
            Value::Array(vec![
                bulk(queue),
                bulk(id),
                Value::Int(1),
                Value::Int(1),
                bulk("{}"),
            ])
        };
        let reply = |tasks: &[(&str, &str)]| {
            let tasks = tasks.iter().map(|(queue, id)| task(queue, id)).collect();
            Value::Array(vec![
                Value::Array(tasks),
                Value::Array(vec![]),
                Value::Array(vec![]),
            ])
        };
        let valid = [
            ("{a}", "1"),
            ("{a}", "2"),
            ("{b}", "3"),
            ("a", "4"),
            ("{ab}", "5"),
        ];
        // A name the server should never send fails the whole reply, even
        // after one it sent before.
        assert!(fetch
            .from_reply(reply(&[&valid[..], &[("{a b}", "6")]].concat()))
            .is_err());
        let got = fetch.from_reply(reply(&valid)).unwrap();
        let names: Vec<(&str, &str)> = got
            .tasks
            .iter()
            .map(|t| (t.queue.name(), t.id.as_str()))
            .collect();
        assert_eq!(
            names,
            [("a", "1"), ("a", "2"), ("b", "3"), ("a", "4"), ("ab", "5")]
        );
    }
}
