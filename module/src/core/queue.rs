//! The task life cycle, as operations on one queue's keys.
//!
//! Every function takes the store, the queue's keys and `now_ms`; none reads
//! a clock. Each command checks key types before its first write, so a wrong
//! type fails the whole command with nothing changed.

use super::error::{VtError, VtResult};
use super::keys::*;
use super::store::{KeyKind, Store, Val};

/// Task hash fields.
mod field {
    pub const PAYLOAD: &str = "payload";
    pub const PRIORITY: &str = "priority";
    pub const MAX_ATTEMPTS: &str = "max_attempts";
    pub const ATTEMPTS: &str = "attempts";
    pub const STATE: &str = "state";
    pub const SEQ: &str = "seq";
    pub const ENQUEUED_AT: &str = "enqueued_at";
    pub const RUN_AT: &str = "run_at";
    pub const READY_AT: &str = "ready_at";
    pub const STARTED_AT: &str = "started_at";
    pub const LEASED_AT: &str = "leased_at";
    pub const TOKEN: &str = "token";
    pub const CONSUMER: &str = "consumer";
    pub const WORKERS: &str = "workers";
    pub const FINISHED_AT: &str = "finished_at";
    pub const ERROR: &str = "error";
    pub const RESULT: &str = "result";
}

/// Queue hash (`{name}`) fields: sequence counters, the pause flag, totals.
mod meta {
    pub const SEQ: &str = "seq";
    pub const TOKEN: &str = "token";
    pub const PAUSED: &str = "paused";
    pub const ENQUEUED: &str = "enqueued";
    pub const ACKED: &str = "acked";
    pub const FAILED: &str = "failed";
    pub const RETRIED: &str = "retried";
    pub const EXPIRED: &str = "expired";
    pub const DEAD: &str = "dead";
    pub const RELEASED: &str = "released";
    pub const REQUEUED: &str = "requeued";
    pub const CANCELLED: &str = "cancelled";
    pub const PURGED: &str = "purged";
}

mod state {
    pub const DELAYED: &[u8] = b"delayed";
    pub const READY: &[u8] = b"ready";
    pub const LEASED: &[u8] = b"leased";
    pub const DONE: &[u8] = b"done";
    pub const DEAD: &[u8] = b"dead";
}

/// Ready-set scores sort by priority band, then by sequence (FIFO). Scores
/// are integers below 2^53, so a double holds them exactly.
const SEQ_BITS: u32 = 44;
const SEQ_LIMIT: i64 = 1 << SEQ_BITS;
const SCORE_MIN: i64 = i64::MIN;
const SCORE_MAX: i64 = i64::MAX;

pub fn ready_score(priority: i64, seq: i64) -> i64 {
    ((MAX_PRIORITY - priority) << SEQ_BITS) + seq
}

fn band_of(score: i64) -> i64 {
    score >> SEQ_BITS
}

/// When an enqueued task becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Now,
    /// Milliseconds from now.
    Delay(i64),
    /// Absolute unix time in ms.
    At(i64),
}

#[derive(Debug, Clone)]
pub struct NewTask<'a> {
    pub id: &'a [u8],
    pub payload: &'a [u8],
    pub priority: i64,
    pub when: When,
    pub max_attempts: i64,
}

impl<'a> NewTask<'a> {
    pub fn new(id: &'a [u8], payload: &'a [u8]) -> Self {
        NewTask {
            id,
            payload,
            priority: 0,
            when: When::Now,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// A task handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub id: Vec<u8>,
    pub token: i64,
    pub attempt: i64,
    pub payload: Vec<u8>,
}

/// Outcome of an operation that needs the caller to hold the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Ok,
    /// The task exists but is not leased under this token (the lease expired
    /// and it went back to the queue, or another consumer holds it now).
    Stale,
    NoTask,
}

impl Settled {
    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Ok => "OK",
            Settled::Stale => "STALE",
            Settled::NoTask => "NOTASK",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    Retrying,
    Dead,
    Refused(Settled),
}

impl NackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            NackOutcome::Retrying => "RETRY",
            NackOutcome::Dead => "DEAD",
            NackOutcome::Refused(s) => s.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    After(i64),
    /// Dead-letter now, whatever attempts remain (a payload that can never run).
    Never,
}

#[derive(Debug, Clone)]
pub struct AckItem<'a> {
    pub id: &'a [u8],
    pub token: i64,
    pub result: Option<&'a [u8]>,
}

#[derive(Debug, Clone)]
pub struct NackItem<'a> {
    pub id: &'a [u8],
    pub token: i64,
    pub retry: Retry,
    pub error: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
pub struct LeaseRef<'a> {
    pub id: &'a [u8],
    pub token: i64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Maintained {
    pub promoted: u64,
    pub expired: u64,
    pub pruned: u64,
    /// More was due than one pass may handle; run again soon.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadEntry {
    pub id: Vec<u8>,
    pub dead_at: i64,
    pub attempts: i64,
    pub error: Vec<u8>,
}

#[derive(Debug, Clone)]
pub enum Selection<'a> {
    All,
    Ids(Vec<&'a [u8]>),
}

/// Fails with WRONGTYPE if any key of the queue holds a foreign type.
pub fn check_types(store: &mut impl Store, keys: &QueueKeys) -> VtResult<()> {
    if !matches!(
        store.key_kind(&keys.meta)?,
        KeyKind::Missing | KeyKind::Hash
    ) {
        return Err(VtError::WrongType);
    }
    for key in keys.sets() {
        if !matches!(store.key_kind(key)?, KeyKind::Missing | KeyKind::SortedSet) {
            return Err(VtError::WrongType);
        }
    }
    Ok(())
}

fn task_kind(store: &mut impl Store, task_key: &[u8]) -> VtResult<KeyKind> {
    match store.key_kind(task_key)? {
        KeyKind::Other | KeyKind::SortedSet => Err(VtError::WrongType),
        kind => Ok(kind),
    }
}

/// Reserves `n` consecutive ready-order numbers; returns the first.
fn allocate_seq(store: &mut impl Store, keys: &QueueKeys, n: usize) -> VtResult<i64> {
    let last = store.hincrby(&keys.meta, meta::SEQ, n as i64)?;
    if last >= SEQ_LIMIT {
        return Err(VtError::Internal("queue sequence exhausted".into()));
    }
    Ok(last - n as i64 + 1)
}

fn bump(store: &mut impl Store, keys: &QueueKeys, counter: &str, n: u64) -> VtResult<()> {
    if n > 0 {
        store.hincrby(&keys.meta, counter, n as i64)?;
    }
    Ok(())
}

fn make_ready(
    store: &mut impl Store,
    keys: &QueueKeys,
    id: &[u8],
    priority: i64,
    seq: i64,
    now: i64,
) -> VtResult<()> {
    store.zadd(&keys.ready, ready_score(priority, seq), id)?;
    store.hset(
        &keys.task(id),
        &[
            (field::STATE, Val::Bytes(state::READY)),
            (field::SEQ, Val::Int(seq)),
            (field::READY_AT, Val::Int(now)),
        ],
    )
}

fn make_dead(
    store: &mut impl Store,
    keys: &QueueKeys,
    id: &[u8],
    error: &[u8],
    now: i64,
) -> VtResult<()> {
    store.zadd(&keys.dead, now, id)?;
    store.hset(
        &keys.task(id),
        &[
            (field::STATE, Val::Bytes(state::DEAD)),
            (field::FINISHED_AT, Val::Int(now)),
            (field::ERROR, Val::Bytes(truncate_error(error))),
        ],
    )
}

fn truncate_error(error: &[u8]) -> &[u8] {
    &error[..error.len().min(MAX_ERROR_TEXT)]
}

fn pending(store: &mut impl Store, keys: &QueueKeys) -> VtResult<u64> {
    Ok(store.zcard(&keys.ready)? + store.zcard(&keys.delayed)? + store.zcard(&keys.leased)?)
}

/// Adds tasks. Returns, per task, true if added and false if a task with that
/// id already exists (the enqueue is then a no-op for it: idempotency).
pub fn enqueue(
    store: &mut impl Store,
    keys: &QueueKeys,
    tasks: &[NewTask],
    maxlen: Option<u64>,
    now: i64,
) -> VtResult<Vec<bool>> {
    check_types(store, keys)?;
    let mut added = Vec::with_capacity(tasks.len());
    let mut seen = std::collections::HashSet::with_capacity(tasks.len());
    for task in tasks {
        let exists = task_kind(store, &keys.task(task.id))? != KeyKind::Missing;
        added.push(!exists && seen.insert(task.id));
    }
    let new_count = added.iter().filter(|a| **a).count();
    if new_count == 0 {
        return Ok(added);
    }
    if let Some(limit) = maxlen {
        let held = pending(store, keys)?;
        if held + new_count as u64 > limit {
            return Err(VtError::QueueFull {
                queue: keys.queue_str(),
                held,
                limit,
            });
        }
    }
    let run_at = |task: &NewTask| match task.when {
        When::Now => now,
        When::Delay(ms) => now + ms,
        When::At(at) => at,
    };
    let ready_now = tasks
        .iter()
        .zip(&added)
        .filter(|(t, a)| **a && run_at(t) <= now)
        .count();
    let mut seq = if ready_now > 0 {
        allocate_seq(store, keys, ready_now)?
    } else {
        0
    };
    for (task, _) in tasks.iter().zip(&added).filter(|(_, a)| **a) {
        let task_key = keys.task(task.id);
        let at = run_at(task);
        let mut fields = vec![
            (field::PAYLOAD, Val::Bytes(task.payload)),
            (field::PRIORITY, Val::Int(task.priority)),
            (field::MAX_ATTEMPTS, Val::Int(task.max_attempts)),
            (field::ENQUEUED_AT, Val::Int(now)),
        ];
        if at <= now {
            fields.extend([
                (field::STATE, Val::Bytes(state::READY)),
                (field::SEQ, Val::Int(seq)),
                (field::READY_AT, Val::Int(now)),
            ]);
            store.hset(&task_key, &fields)?;
            store.zadd(&keys.ready, ready_score(task.priority, seq), task.id)?;
            seq += 1;
        } else {
            fields.extend([
                (field::STATE, Val::Bytes(state::DELAYED)),
                (field::RUN_AT, Val::Int(at)),
            ]);
            store.hset(&task_key, &fields)?;
            store.zadd(&keys.delayed, at, task.id)?;
        }
    }
    bump(store, keys, meta::ENQUEUED, new_count as u64)?;
    if ready_now > 0 {
        store.wake(&keys.ready);
    }
    Ok(added)
}

pub fn is_paused(store: &mut impl Store, keys: &QueueKeys) -> VtResult<bool> {
    Ok(store.hget(&keys.meta, meta::PAUSED)?.as_deref() == Some(b"1"))
}

/// Leases up to `count` ready tasks, highest priority first, FIFO within a
/// priority. A paused queue hands out nothing.
pub fn fetch(
    store: &mut impl Store,
    keys: &QueueKeys,
    consumer: &[u8],
    count: usize,
    lease_ms: i64,
    now: i64,
) -> VtResult<Vec<Leased>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    check_types(store, keys)?;
    if is_paused(store, keys)? {
        return Ok(Vec::new());
    }
    let picked = store.zrange_by_score(&keys.ready, SCORE_MIN, SCORE_MAX, 0, count)?;
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let last_token = store.hincrby(&keys.meta, meta::TOKEN, picked.len() as i64)?;
    let deadline = now + lease_ms;
    let mut leased = Vec::with_capacity(picked.len());
    for (i, (id, _)) in picked.into_iter().enumerate() {
        store.zrem(&keys.ready, &id)?;
        let task_key = keys.task(&id);
        if task_kind(store, &task_key)? == KeyKind::Missing {
            continue; // deleted behind the queue's back: nothing to run
        }
        let payload = store.hget(&task_key, field::PAYLOAD)?.unwrap_or_default();
        let attempt = store.hget_int(&task_key, field::ATTEMPTS)?.unwrap_or(0) + 1;
        let token = last_token - (i as i64);
        let workers = store.hget(&task_key, field::WORKERS)?;
        let joined = join_worker(workers.as_deref(), consumer);
        let mut fields = vec![
            (field::STATE, Val::Bytes(state::LEASED)),
            (field::ATTEMPTS, Val::Int(attempt)),
            (field::TOKEN, Val::Int(token)),
            (field::CONSUMER, Val::Bytes(consumer)),
            (field::LEASED_AT, Val::Int(now)),
        ];
        if let Some(joined) = &joined {
            fields.push((field::WORKERS, Val::Bytes(joined)));
        }
        if attempt == 1 {
            fields.push((field::STARTED_AT, Val::Int(now)));
        }
        store.hset(&task_key, &fields)?;
        store.zadd(&keys.leased, deadline, &id)?;
        leased.push(Leased {
            id,
            token,
            attempt,
            payload,
        });
    }
    Ok(leased)
}

/// Comma-separated consumers that leased a task, each once, in first-seen
/// order; None when `consumer` is already in the list.
fn join_worker(existing: Option<&[u8]>, consumer: &[u8]) -> Option<Vec<u8>> {
    match existing {
        None => Some(consumer.to_vec()),
        Some(list) if list.split(|c| *c == b',').any(|w| w == consumer) => None,
        Some(list) => Some([list, b",", consumer].concat()),
    }
}

/// Server-side time: promotes due delayed tasks, returns expired leases to
/// the queue (or the dead letters when attempts are exhausted) and forgets
/// expired results. At most `limit` entries of each kind per call.
pub fn maintain(
    store: &mut impl Store,
    keys: &QueueKeys,
    now: i64,
    limit: usize,
) -> VtResult<Maintained> {
    check_types(store, keys)?;
    let mut report = Maintained::default();

    let due = store.zrange_by_score(&keys.delayed, SCORE_MIN, now, 0, limit)?;
    report.more |= due.len() == limit;
    let mut to_ready = Vec::with_capacity(due.len());
    for (id, _) in due {
        store.zrem(&keys.delayed, &id)?;
        let task_key = keys.task(&id);
        if task_kind(store, &task_key)? == KeyKind::Missing {
            continue;
        }
        let priority = store.hget_int(&task_key, field::PRIORITY)?.unwrap_or(0);
        to_ready.push((id, priority));
        report.promoted += 1;
    }

    let expired = store.zrange_by_score(&keys.leased, SCORE_MIN, now, 0, limit)?;
    report.more |= expired.len() == limit;
    for (id, _) in expired {
        store.zrem(&keys.leased, &id)?;
        let task_key = keys.task(&id);
        if task_kind(store, &task_key)? == KeyKind::Missing {
            continue;
        }
        report.expired += 1;
        let attempts = store.hget_int(&task_key, field::ATTEMPTS)?.unwrap_or(0);
        let max = store.hget_int(&task_key, field::MAX_ATTEMPTS)?.unwrap_or(1);
        let error = format!(
            "lease expired on attempt {attempts} of {max}: no acknowledgement before the deadline"
        );
        store.hset(&task_key, &[(field::ERROR, Val::Bytes(error.as_bytes()))])?;
        if attempts >= max {
            make_dead(store, keys, &id, error.as_bytes(), now)?;
            bump(store, keys, meta::DEAD, 1)?;
        } else {
            let priority = store.hget_int(&task_key, field::PRIORITY)?.unwrap_or(0);
            to_ready.push((id, priority));
        }
    }
    bump(store, keys, meta::EXPIRED, report.expired)?;

    if !to_ready.is_empty() {
        let first = allocate_seq(store, keys, to_ready.len())?;
        for (seq, (id, priority)) in (first..).zip(&to_ready) {
            make_ready(store, keys, id, *priority, seq, now)?;
        }
        store.wake(&keys.ready);
    }

    // Done entries index results that expire by key TTL; drop the index entries.
    let forgotten = store.zrange_by_score(&keys.done, SCORE_MIN, now, 0, limit)?;
    report.more |= forgotten.len() == limit;
    for (id, _) in forgotten {
        store.zrem(&keys.done, &id)?;
        report.pruned += 1;
    }
    Ok(report)
}

/// The earliest time at which `maintain` has work on this queue.
pub fn next_due(store: &mut impl Store, keys: &QueueKeys) -> VtResult<Option<i64>> {
    let mut due: Option<i64> = None;
    for key in [&keys.delayed, &keys.leased, &keys.done] {
        if let Some((_, score)) = store
            .zrange_by_score(key, SCORE_MIN, SCORE_MAX, 0, 1)?
            .into_iter()
            .next()
        {
            due = Some(due.map_or(score, |d| d.min(score)));
        }
    }
    Ok(due)
}

/// Whether `token` holds the current lease of task `id`.
fn check_lease(
    store: &mut impl Store,
    keys: &QueueKeys,
    id: &[u8],
    token: i64,
) -> VtResult<Settled> {
    let task_key = keys.task(id);
    if task_kind(store, &task_key)? == KeyKind::Missing {
        return Ok(Settled::NoTask);
    }
    let leased = store.hget(&task_key, field::STATE)?.as_deref() == Some(state::LEASED);
    if !leased || store.hget_int(&task_key, field::TOKEN)? != Some(token) {
        return Ok(Settled::Stale);
    }
    Ok(Settled::Ok)
}

/// Marks leased tasks done, keeping their record (and result, if any) for
/// `keep_ms`; with `keep_ms == 0` the task is deleted at once.
pub fn ack(
    store: &mut impl Store,
    keys: &QueueKeys,
    items: &[AckItem],
    keep_ms: i64,
    now: i64,
) -> VtResult<Vec<Settled>> {
    check_types(store, keys)?;
    let mut outcomes = Vec::with_capacity(items.len());
    let mut acked = 0;
    for item in items {
        let outcome = check_lease(store, keys, item.id, item.token)?;
        outcomes.push(outcome);
        if outcome != Settled::Ok {
            continue;
        }
        acked += 1;
        store.zrem(&keys.leased, item.id)?;
        let task_key = keys.task(item.id);
        if keep_ms == 0 {
            store.del(&task_key)?;
            continue;
        }
        let mut fields = vec![
            (field::STATE, Val::Bytes(state::DONE)),
            (field::FINISHED_AT, Val::Int(now)),
        ];
        if let Some(result) = item.result {
            fields.push((field::RESULT, Val::Bytes(result)));
        }
        store.hset(&task_key, &fields)?;
        store.pexpire_at(&task_key, now + keep_ms)?;
        store.zadd(&keys.done, now + keep_ms, item.id)?;
    }
    bump(store, keys, meta::ACKED, acked)?;
    Ok(outcomes)
}

/// Reports failed attempts: each task is retried after its delay, or
/// dead-lettered once its attempts are exhausted (or at once with
/// `Retry::Never`). The error text is kept on the task.
pub fn nack(
    store: &mut impl Store,
    keys: &QueueKeys,
    items: &[NackItem],
    now: i64,
) -> VtResult<Vec<NackOutcome>> {
    check_types(store, keys)?;
    let mut outcomes = Vec::with_capacity(items.len());
    let (mut failed, mut retried, mut dead) = (0, 0, 0);
    let mut woke = false;
    for item in items {
        let held = check_lease(store, keys, item.id, item.token)?;
        if held != Settled::Ok {
            outcomes.push(NackOutcome::Refused(held));
            continue;
        }
        failed += 1;
        store.zrem(&keys.leased, item.id)?;
        let task_key = keys.task(item.id);
        let attempts = store.hget_int(&task_key, field::ATTEMPTS)?.unwrap_or(0);
        let max = store.hget_int(&task_key, field::MAX_ATTEMPTS)?.unwrap_or(1);
        let delay = match item.retry {
            Retry::After(ms) if attempts < max => ms,
            _ => {
                make_dead(store, keys, item.id, item.error, now)?;
                dead += 1;
                outcomes.push(NackOutcome::Dead);
                continue;
            }
        };
        retried += 1;
        store.hset(
            &task_key,
            &[(field::ERROR, Val::Bytes(truncate_error(item.error)))],
        )?;
        if delay == 0 {
            let priority = store.hget_int(&task_key, field::PRIORITY)?.unwrap_or(0);
            let seq = allocate_seq(store, keys, 1)?;
            make_ready(store, keys, item.id, priority, seq, now)?;
            woke = true;
        } else {
            store.hset(
                &task_key,
                &[
                    (field::STATE, Val::Bytes(state::DELAYED)),
                    (field::RUN_AT, Val::Int(now + delay)),
                ],
            )?;
            store.zadd(&keys.delayed, now + delay, item.id)?;
        }
        outcomes.push(NackOutcome::Retrying);
    }
    bump(store, keys, meta::FAILED, failed)?;
    bump(store, keys, meta::RETRIED, retried)?;
    bump(store, keys, meta::DEAD, dead)?;
    if woke {
        store.wake(&keys.ready);
    }
    Ok(outcomes)
}

/// Renews leases: each held lease's deadline becomes `now + lease_ms`.
pub fn extend(
    store: &mut impl Store,
    keys: &QueueKeys,
    items: &[LeaseRef],
    lease_ms: i64,
    now: i64,
) -> VtResult<Vec<Settled>> {
    check_types(store, keys)?;
    let deadline = now + lease_ms;
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let outcome = check_lease(store, keys, item.id, item.token)?;
        if outcome == Settled::Ok {
            store.zadd(&keys.leased, deadline, item.id)?;
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Gives back leased tasks that were never started: they return to their
/// old place in the queue and the attempt does not count.
pub fn release(
    store: &mut impl Store,
    keys: &QueueKeys,
    items: &[LeaseRef],
    now: i64,
) -> VtResult<Vec<Settled>> {
    check_types(store, keys)?;
    let mut outcomes = Vec::with_capacity(items.len());
    let mut released = 0;
    for item in items {
        let outcome = check_lease(store, keys, item.id, item.token)?;
        outcomes.push(outcome);
        if outcome != Settled::Ok {
            continue;
        }
        released += 1;
        store.zrem(&keys.leased, item.id)?;
        let task_key = keys.task(item.id);
        let attempts = store.hget_int(&task_key, field::ATTEMPTS)?.unwrap_or(1);
        let priority = store.hget_int(&task_key, field::PRIORITY)?.unwrap_or(0);
        let seq = store.hget_int(&task_key, field::SEQ)?.unwrap_or(0);
        store.hset(
            &task_key,
            &[(field::ATTEMPTS, Val::Int((attempts - 1).max(0)))],
        )?;
        make_ready(store, keys, item.id, priority, seq, now)?;
    }
    bump(store, keys, meta::RELEASED, released)?;
    if released > 0 {
        store.wake(&keys.ready);
    }
    Ok(outcomes)
}

/// Fields `VTASKS.GET` reports, in reply order, renamed where the stored
/// name is an implementation detail.
const GET_FIELDS: [(&str, &str); 14] = [
    ("status", field::STATE),
    ("priority", field::PRIORITY),
    ("attempts", field::ATTEMPTS),
    ("max_attempts", field::MAX_ATTEMPTS),
    ("enqueued_at", field::ENQUEUED_AT),
    ("run_at", field::RUN_AT),
    ("started_at", field::STARTED_AT),
    ("leased_at", field::LEASED_AT),
    ("finished_at", field::FINISHED_AT),
    ("consumer", field::CONSUMER),
    ("workers", field::WORKERS),
    ("error", field::ERROR),
    ("result", field::RESULT),
    ("payload", field::PAYLOAD),
];

/// A task's state as name/value pairs, in `VTASKS.GET` order.
pub type TaskFields = Vec<(&'static str, Vec<u8>)>;

/// One task's state (absent fields left out), or None.
pub fn get(store: &mut impl Store, keys: &QueueKeys, id: &[u8]) -> VtResult<Option<TaskFields>> {
    let task_key = keys.task(id);
    if task_kind(store, &task_key)? == KeyKind::Missing {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(GET_FIELDS.len() + 1);
    for (name, stored) in GET_FIELDS {
        match store.hget(&task_key, stored)? {
            Some(value) => out.push((name, value)),
            None if stored == field::ATTEMPTS => out.push((name, b"0".to_vec())),
            None => {}
        }
        if name == "leased_at" {
            // The lease deadline lives only in the leased set's score.
            if let Some(deadline) = store.zscore(&keys.leased, id)? {
                out.push(("deadline", deadline.to_string().into_bytes()));
            }
        }
    }
    Ok(Some(out))
}

/// Counts and totals of one queue; `blocked` comes from the caller, which
/// knows its waiting consumers.
pub fn stats(
    store: &mut impl Store,
    keys: &QueueKeys,
    now: i64,
    blocked: u64,
) -> VtResult<Vec<(&'static str, i64)>> {
    check_types(store, keys)?;
    if store.key_kind(&keys.meta)? == KeyKind::Missing {
        return Err(VtError::NoQueue(keys.queue_str()));
    }
    let counter = |store: &mut _, name| -> VtResult<i64> {
        Ok(Store::hget_int(store, &keys.meta, name)?.unwrap_or(0))
    };
    let mut out = vec![
        ("ready", store.zcard(&keys.ready)? as i64),
        ("delayed", store.zcard(&keys.delayed)? as i64),
        ("leased", store.zcard(&keys.leased)? as i64),
        ("dead", store.zcard(&keys.dead)? as i64),
        ("done", store.zcount(&keys.done, now + 1, SCORE_MAX)? as i64),
        (
            "overdue_leases",
            store.zcount(&keys.leased, SCORE_MIN, now)? as i64,
        ),
        ("paused", is_paused(store, keys)? as i64),
        ("blocked", blocked as i64),
        ("oldest_ready_age_ms", oldest_ready_age(store, keys, now)?),
    ];
    for (name, stored) in [
        ("enqueued", meta::ENQUEUED),
        ("acked", meta::ACKED),
        ("failed", meta::FAILED),
        ("retried", meta::RETRIED),
        ("expired", meta::EXPIRED),
        ("dead_lettered", meta::DEAD),
        ("released", meta::RELEASED),
        ("requeued", meta::REQUEUED),
        ("cancelled", meta::CANCELLED),
        ("purged", meta::PURGED),
    ] {
        out.push((name, counter(store, stored)?));
    }
    Ok(out)
}

/// Age of the task that has waited longest in the ready set. Sequence
/// numbers grow with time, so it is the lowest sequence across the priority
/// bands; only non-empty bands are visited.
fn oldest_ready_age(store: &mut impl Store, keys: &QueueKeys, now: i64) -> VtResult<i64> {
    let mut oldest: Option<(i64, Vec<u8>)> = None;
    let mut from = SCORE_MIN;
    while let Some((id, score)) = store
        .zrange_by_score(&keys.ready, from, SCORE_MAX, 0, 1)?
        .into_iter()
        .next()
    {
        let seq = score & (SEQ_LIMIT - 1);
        if oldest.as_ref().is_none_or(|(s, _)| seq < *s) {
            oldest = Some((seq, id));
        }
        from = (band_of(score) + 1) << SEQ_BITS;
    }
    let Some((_, id)) = oldest else {
        return Ok(0);
    };
    let ready_at = store
        .hget_int(&keys.task(&id), field::READY_AT)?
        .unwrap_or(now);
    Ok((now - ready_at).max(0))
}

/// Dead-lettered tasks, oldest first.
pub fn dead_list(
    store: &mut impl Store,
    keys: &QueueKeys,
    offset: usize,
    count: usize,
) -> VtResult<Vec<DeadEntry>> {
    check_types(store, keys)?;
    let mut out = Vec::new();
    for (id, dead_at) in store.zrange_by_score(&keys.dead, SCORE_MIN, SCORE_MAX, offset, count)? {
        let task_key = keys.task(&id);
        let attempts = store.hget_int(&task_key, field::ATTEMPTS)?.unwrap_or(0);
        let error = store.hget(&task_key, field::ERROR)?.unwrap_or_default();
        out.push(DeadEntry {
            id,
            dead_at,
            attempts,
            error,
        });
    }
    Ok(out)
}

fn select_dead(
    store: &mut impl Store,
    keys: &QueueKeys,
    selection: &Selection,
) -> VtResult<Vec<Vec<u8>>> {
    Ok(match selection {
        Selection::All => store
            .zrange_by_score(&keys.dead, SCORE_MIN, SCORE_MAX, 0, BULK_BATCH)?
            .into_iter()
            .map(|(id, _)| id)
            .collect(),
        Selection::Ids(ids) => {
            let mut found = Vec::new();
            for id in ids {
                if store.zscore(&keys.dead, id)?.is_some() {
                    found.push(id.to_vec());
                }
            }
            found
        }
    })
}

/// Puts dead tasks back in the queue with their attempts reset. `All` moves
/// at most `BULK_BATCH` per call. Returns how many moved.
pub fn requeue(
    store: &mut impl Store,
    keys: &QueueKeys,
    selection: &Selection,
    now: i64,
) -> VtResult<u64> {
    check_types(store, keys)?;
    let ids = select_dead(store, keys, selection)?;
    if ids.is_empty() {
        return Ok(0);
    }
    let first = allocate_seq(store, keys, ids.len())?;
    for (seq, id) in (first..).zip(&ids) {
        store.zrem(&keys.dead, id)?;
        let task_key = keys.task(id);
        let priority = store.hget_int(&task_key, field::PRIORITY)?.unwrap_or(0);
        store.hset(&task_key, &[(field::ATTEMPTS, Val::Int(0))])?;
        store.hdel(&task_key, &[field::FINISHED_AT])?;
        make_ready(store, keys, id, priority, seq, now)?;
    }
    bump(store, keys, meta::REQUEUED, ids.len() as u64)?;
    store.wake(&keys.ready);
    Ok(ids.len() as u64)
}

/// Deletes dead tasks for good. `All` deletes at most `BULK_BATCH` per call.
pub fn purge(store: &mut impl Store, keys: &QueueKeys, selection: &Selection) -> VtResult<u64> {
    check_types(store, keys)?;
    let ids = select_dead(store, keys, selection)?;
    for id in &ids {
        store.zrem(&keys.dead, id)?;
        store.del(&keys.task(id))?;
    }
    bump(store, keys, meta::PURGED, ids.len() as u64)?;
    Ok(ids.len() as u64)
}

pub fn pause(store: &mut impl Store, keys: &QueueKeys) -> VtResult<()> {
    check_types(store, keys)?;
    store.hset(&keys.meta, &[(meta::PAUSED, Val::Int(1))])
}

pub fn resume(store: &mut impl Store, keys: &QueueKeys) -> VtResult<()> {
    check_types(store, keys)?;
    let was_paused = is_paused(store, keys)?;
    // The field stays (as 0) so the queue hash, and so the queue, exists.
    store.hset(&keys.meta, &[(meta::PAUSED, Val::Int(0))])?;
    if was_paused {
        store.wake(&keys.ready);
    }
    Ok(())
}

/// Removes tasks that are waiting (ready or delayed). Leased, done and dead
/// tasks are left alone. Returns, per id, whether it was cancelled.
pub fn cancel(store: &mut impl Store, keys: &QueueKeys, ids: &[&[u8]]) -> VtResult<Vec<bool>> {
    check_types(store, keys)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let removed = store.zrem(&keys.ready, id)? || store.zrem(&keys.delayed, id)?;
        if removed {
            store.del(&keys.task(id))?;
        }
        out.push(removed);
    }
    bump(
        store,
        keys,
        meta::CANCELLED,
        out.iter().filter(|c| **c).count() as u64,
    )?;
    Ok(out)
}
