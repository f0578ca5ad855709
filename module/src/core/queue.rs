//! The task life cycle, as operations on one queue's keys.
//!
//! Every function takes the store, the queue's keys and `now_ms`; none reads
//! a clock. Each command checks key types before its first write, so a wrong
//! type fails the whole command with nothing changed.

use super::error::{VtError, VtResult};
use super::keys::*;
use super::record::{State, TaskRecord};
use super::store::{KeyKind, Store, Val};

/// Task hash fields: the payload as enqueued, the packed record of small
/// changing fields (see `record.rs`), the last error and the result.
mod field {
    pub const PAYLOAD: &str = "payload";
    pub const RECORD: &str = "record";
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
    pub const VANISHED: &str = "vanished";
    /// Leases cut to the grace because the connection holding them closed.
    pub const LEASES_CUT: &str = "leases_cut";
    /// Tasks dead-lettered because they used up their lost-lease budget.
    pub const DEAD_LOST: &str = "dead_lost";
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
    /// Failed attempts (NACKs) before the task is dead-lettered.
    pub max_attempts: i64,
    /// Lost leases (the worker vanished) before the task is dead-lettered.
    pub max_lost_leases: i64,
    /// Replace a finished (done or dead) task with the same id instead of
    /// leaving it: at most one waiting or running task per id.
    pub replace_finished: bool,
}

impl<'a> NewTask<'a> {
    pub fn new(id: &'a [u8], payload: &'a [u8]) -> Self {
        NewTask {
            id,
            replace_finished: false,
            payload,
            priority: 0,
            when: When::Now,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_lost_leases: DEFAULT_MAX_LOST_LEASES,
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
    /// Due delayed tasks and expired leases whose task had vanished.
    pub vanished: u64,
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

/// Fails with WRONGTYPE if `key` exists with another kind than `kind`.
fn check_kind(store: &mut impl Store, key: &[u8], kind: KeyKind) -> VtResult<()> {
    match store.key_kind(key)? {
        KeyKind::Missing => Ok(()),
        found if found == kind => Ok(()),
        _ => Err(VtError::WrongType),
    }
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

/// A task's record, or None if the task does not exist.
fn load(store: &mut impl Store, keys: &QueueKeys, id: &[u8]) -> VtResult<Option<TaskRecord>> {
    load_at(store, &keys.task(id))
}

fn load_at(store: &mut impl Store, task_key: &[u8]) -> VtResult<Option<TaskRecord>> {
    if task_kind(store, task_key)? == KeyKind::Missing {
        return Ok(None);
    }
    match store.hget(task_key, field::RECORD)? {
        Some(bytes) => TaskRecord::decode(&bytes).map(Some),
        None => Err(VtError::Internal("task hash without a record".into())),
    }
}

/// The record of a task whose id was found in one of the queue's sets, or
/// None if the task vanished: its key is gone (evicted by a
/// `maxmemory-policy` other than `noeviction`, deleted by hand) or holds no
/// record, in which case its remains are deleted (nothing runs without one).
fn load_queued(
    store: &mut impl Store,
    keys: &QueueKeys,
    id: &[u8],
) -> VtResult<Option<TaskRecord>> {
    let task_key = keys.task(id);
    if task_kind(store, &task_key)? == KeyKind::Missing {
        return Ok(None);
    }
    match store.hget(&task_key, field::RECORD)? {
        Some(bytes) => TaskRecord::decode(&bytes).map(Some),
        None => {
            store.del(&task_key)?;
            Ok(None)
        }
    }
}

/// Counts tasks that vanished from under their ids (`vanished` in STATS)
/// and says so in the server log: they are dropped, never run or retried.
fn vanished(store: &mut impl Store, keys: &QueueKeys, set: &str, n: u64) -> VtResult<()> {
    if n == 0 {
        return Ok(());
    }
    bump(store, keys, meta::VANISHED, n)?;
    store.warn(&format!(
        "queue {}: {n} task(s) in the {set} set had no record (evicted: the server's \
         maxmemory-policy is not noeviction, or deleted by hand) and were dropped; \
         STATS counts them as vanished",
        keys.queue_str()
    ));
    Ok(())
}

fn save(store: &mut impl Store, keys: &QueueKeys, id: &[u8], rec: &TaskRecord) -> VtResult<()> {
    store.hset(
        &keys.task(id),
        &[(field::RECORD, Val::Bytes(&rec.encode()))],
    )
}

fn make_ready(
    store: &mut impl Store,
    keys: &QueueKeys,
    id: &[u8],
    rec: &mut TaskRecord,
    seq: i64,
    now: i64,
) -> VtResult<()> {
    rec.state = State::Ready;
    rec.seq = seq;
    rec.ready_at = Some(now);
    save(store, keys, id, rec)?;
    store.zadd(&keys.ready, ready_score(rec.priority, seq), id)
}

fn make_dead(
    store: &mut impl Store,
    keys: &QueueKeys,
    id: &[u8],
    rec: &mut TaskRecord,
    error: &[u8],
    now: i64,
) -> VtResult<()> {
    rec.state = State::Dead;
    rec.finished_at = Some(now);
    store.hset(
        &keys.task(id),
        &[
            (field::RECORD, Val::Bytes(&rec.encode())),
            (field::ERROR, Val::Bytes(truncate_error(error))),
        ],
    )?;
    store.zadd(&keys.dead, now, id)
}

fn truncate_error(error: &[u8]) -> &[u8] {
    &error[..error.len().min(MAX_ERROR_TEXT)]
}

/// Wakes consumers of a queue that gained `n` ready tasks: the module's
/// blocked clients (the ready key is signalled) and the scripts engine's
/// sleepers, which wait in `BLPOP` on the wake list: one token per new task,
/// never more tokens than sleepers, the list expiring with the last sleep.
/// Both engines follow this rule, so either one wakes the other's consumers.
/// A foreign key in place of the wake list or the waiting set only means no
/// wake-ups for sleepers.
fn wake(store: &mut impl Store, keys: &QueueKeys, n: u64) -> VtResult<()> {
    store.wake(&keys.ready);
    let sleepers = match store.zcard(&keys.waiting) {
        Ok(0) | Err(_) => return Ok(()),
        Ok(n) => n,
    };
    let Ok(tokens) = store.llen(&keys.wake) else {
        return Ok(());
    };
    let n = n.min(sleepers.saturating_sub(tokens));
    if n == 0 {
        return Ok(());
    }
    store.push_tokens(&keys.wake, n)?;
    let last = store.zrange_by_score(
        &keys.waiting,
        SCORE_MIN,
        SCORE_MAX,
        sleepers as usize - 1,
        1,
    )?;
    if let Some((_, until)) = last.first() {
        store.pexpire_at(&keys.wake, *until)?;
    }
    Ok(())
}

/// Consumers of the scripts engine sleeping on this queue's wake list now.
fn sleepers(store: &mut impl Store, keys: &QueueKeys, now: i64) -> u64 {
    store.zcount(&keys.waiting, now, SCORE_MAX).unwrap_or(0)
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
    // An enqueue checks the keys it uses (not the leased, dead and done sets
    // unless MAXLEN or a replacement needs them), all before its first
    // write; the scripts engine checks the same ones.
    check_kind(store, &keys.meta, KeyKind::Hash)?;
    check_kind(store, &keys.ready, KeyKind::SortedSet)?;
    check_kind(store, &keys.delayed, KeyKind::SortedSet)?;
    if maxlen.is_some() {
        check_kind(store, &keys.leased, KeyKind::SortedSet)?;
    }
    let mut added = Vec::with_capacity(tasks.len());
    let mut replaced = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(tasks.len());
    for task in tasks {
        let mut free = match load(store, keys, task.id)? {
            None => true,
            Some(old)
                if task.replace_finished && matches!(old.state, State::Done | State::Dead) =>
            {
                replaced.push(task.id);
                true
            }
            Some(_) => false,
        };
        free &= seen.insert(task.id);
        added.push(free);
    }
    let new_count = added.iter().filter(|a| **a).count();
    if new_count == 0 {
        return Ok(added);
    }
    if !replaced.is_empty() {
        check_kind(store, &keys.done, KeyKind::SortedSet)?;
        check_kind(store, &keys.dead, KeyKind::SortedSet)?;
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
    for id in replaced {
        store.zrem(&keys.done, id)?;
        store.zrem(&keys.dead, id)?;
        store.del(&keys.task(id))?;
    }
    for (task, _) in tasks.iter().zip(&added).filter(|(_, a)| **a) {
        let mut rec = TaskRecord::new(task.priority, task.max_attempts, task.max_lost_leases, now);
        let at = run_at(task);
        if at <= now {
            rec.seq = seq;
            rec.ready_at = Some(now);
        } else {
            rec.state = State::Delayed;
            rec.run_at = Some(at);
        }
        store.hset(
            &keys.task(task.id),
            &[
                (field::PAYLOAD, Val::Bytes(task.payload)),
                (field::RECORD, Val::Bytes(&rec.encode())),
            ],
        )?;
        if at <= now {
            store.zadd(&keys.ready, ready_score(task.priority, seq), task.id)?;
            seq += 1;
        } else {
            store.zadd(&keys.delayed, at, task.id)?;
        }
    }
    bump(store, keys, meta::ENQUEUED, new_count as u64)?;
    if ready_now > 0 {
        wake(store, keys, ready_now as u64)?;
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
    let deadline = now + lease_ms;
    let mut leased = Vec::with_capacity(count.min(MAX_FETCH_COUNT as usize));
    let mut lost = 0;
    // Ids whose task vanished are dropped and more are taken in their
    // place, up to VANISHED_PER_FETCH of them per call (the next call goes
    // on), so a fetch neither hands out less than is there nor scans an
    // unbounded number of them.
    while leased.len() < count && lost < VANISHED_PER_FETCH as u64 {
        let wanted = count - leased.len();
        let picked = store.zrange_by_score(&keys.ready, SCORE_MIN, SCORE_MAX, 0, wanted)?;
        if picked.is_empty() {
            break;
        }
        let mut found = Vec::with_capacity(picked.len());
        for (id, _) in picked {
            store.zrem(&keys.ready, &id)?;
            match load_queued(store, keys, &id)? {
                Some(rec) => found.push((id, rec)),
                None => lost += 1,
            }
        }
        if found.is_empty() {
            continue;
        }
        let last_token = store.hincrby(&keys.meta, meta::TOKEN, found.len() as i64)?;
        for (i, (id, mut rec)) in found.into_iter().enumerate() {
            let token = last_token - (i as i64);
            rec.lease(consumer, token, now);
            save(store, keys, &id, &rec)?;
            store.zadd(&keys.leased, deadline, &id)?;
            let payload = store
                .hget(&keys.task(&id), field::PAYLOAD)?
                .unwrap_or_default();
            leased.push(Leased {
                id,
                token,
                attempt: rec.attempts,
                payload,
            });
        }
    }
    vanished(store, keys, "ready", lost)?;
    Ok(leased)
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
    let mut lost = 0;
    // Returned leases keep their sequence number, and so their place ahead
    // of the tasks enqueued after them (docs/DECISIONS.md).
    let mut returned = Vec::new();
    for (id, _) in due {
        store.zrem(&keys.delayed, &id)?;
        match load_queued(store, keys, &id)? {
            Some(rec) => {
                to_ready.push((id, rec));
                report.promoted += 1;
            }
            None => lost += 1,
        }
    }
    vanished(store, keys, "delayed", lost)?;
    report.vanished += lost;

    let expired = store.zrange_by_score(&keys.leased, SCORE_MIN, now, 0, limit)?;
    report.more |= expired.len() == limit;
    let mut lost = 0;
    for (id, _) in expired {
        store.zrem(&keys.leased, &id)?;
        let Some(mut rec) = load_queued(store, keys, &id)? else {
            lost += 1;
            continue;
        };
        report.expired += 1;
        rec.lost += 1;
        let error = lost_lease_error(rec.lost, rec.max_lost, rec.attempts);
        if rec.lost >= rec.max_lost {
            make_dead(store, keys, &id, &mut rec, error.as_bytes(), now)?;
            bump(store, keys, meta::DEAD, 1)?;
            bump(store, keys, meta::DEAD_LOST, 1)?;
        } else {
            store.hset(
                &keys.task(&id),
                &[(field::ERROR, Val::Bytes(error.as_bytes()))],
            )?;
            returned.push((id, rec));
        }
    }
    bump(store, keys, meta::EXPIRED, report.expired)?;
    vanished(store, keys, "leased", lost)?;
    report.vanished += lost;

    if !to_ready.is_empty() {
        let first = allocate_seq(store, keys, to_ready.len())?;
        for (seq, (id, rec)) in (first..).zip(to_ready.iter_mut()) {
            make_ready(store, keys, id, rec, seq, now)?;
        }
    }
    for (id, rec) in returned.iter_mut() {
        let seq = rec.seq;
        make_ready(store, keys, id, rec, seq, now)?;
    }
    if to_ready.len() + returned.len() > 0 {
        wake(store, keys, (to_ready.len() + returned.len()) as u64)?;
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

/// The error kept on a task whose lease expired: its worker stopped (a
/// crash, a kill, a lost connection) or stopped renewing. It names that
/// cause, so a task that keeps taking its worker down is recognisable in
/// the dead letters. `rec.lost` already counts this loss.
pub(crate) fn lost_lease_error(lost: i64, max_lost: i64, attempts: i64) -> String {
    if lost >= max_lost {
        format!(
            "lease lost {} {}, its budget: the worker running it stopped (crash, kill, or lost \
             connection) before finishing it (last on attempt {})",
            lost,
            if lost == 1 { "time" } else { "times" },
            attempts
        )
    } else {
        format!(
            "lease lost on attempt {} ({} of {} lost leases allowed): the worker running it \
             stopped (crash, kill, or lost connection) before finishing it",
            attempts, lost, max_lost
        )
    }
}

/// Shortens the leases of a worker that went away (its connection closed)
/// to end at `until`, so they come back in seconds instead of at their full
/// deadline. Only leases still held under the given token and ending later
/// than `until` change. Returns how many were cut.
pub fn cut_leases(
    store: &mut impl Store,
    keys: &QueueKeys,
    leases: &[LeaseRef],
    until: i64,
) -> VtResult<u64> {
    check_types(store, keys)?;
    let mut cut = 0;
    for lease in leases {
        if check_lease(store, keys, lease.id, lease.token)?.is_err() {
            continue;
        }
        match store.zscore(&keys.leased, lease.id)? {
            Some(deadline) if deadline > until => {
                store.zadd(&keys.leased, until, lease.id)?;
                cut += 1;
            }
            _ => {}
        }
    }
    bump(store, keys, meta::LEASES_CUT, cut)?;
    Ok(cut)
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

/// The task's record if `token` holds its current lease, else why not.
fn check_lease(
    store: &mut impl Store,
    keys: &QueueKeys,
    id: &[u8],
    token: i64,
) -> VtResult<Result<TaskRecord, Settled>> {
    Ok(match load(store, keys, id)? {
        None => Err(Settled::NoTask),
        Some(rec) if rec.state != State::Leased || rec.token != token => Err(Settled::Stale),
        Some(rec) => Ok(rec),
    })
}

fn outcome<T>(held: &Result<T, Settled>) -> Settled {
    match held {
        Ok(_) => Settled::Ok,
        Err(refused) => *refused,
    }
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
        let held = check_lease(store, keys, item.id, item.token)?;
        outcomes.push(outcome(&held));
        let Ok(mut rec) = held else {
            continue;
        };
        acked += 1;
        store.zrem(&keys.leased, item.id)?;
        let task_key = keys.task(item.id);
        if keep_ms == 0 {
            store.del(&task_key)?;
            continue;
        }
        rec.state = State::Done;
        rec.finished_at = Some(now);
        let encoded = rec.encode();
        let mut fields = vec![(field::RECORD, Val::Bytes(&encoded))];
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
    let mut ready_now = 0;
    for item in items {
        let mut rec = match check_lease(store, keys, item.id, item.token)? {
            Ok(rec) => rec,
            Err(refused) => {
                outcomes.push(NackOutcome::Refused(refused));
                continue;
            }
        };
        failed += 1;
        rec.failures += 1;
        store.zrem(&keys.leased, item.id)?;
        let delay = match item.retry {
            Retry::After(ms) if rec.failures < rec.max_attempts => ms,
            _ => {
                make_dead(store, keys, item.id, &mut rec, item.error, now)?;
                dead += 1;
                outcomes.push(NackOutcome::Dead);
                continue;
            }
        };
        retried += 1;
        store.hset(
            &keys.task(item.id),
            &[(field::ERROR, Val::Bytes(truncate_error(item.error)))],
        )?;
        if delay == 0 {
            let seq = allocate_seq(store, keys, 1)?;
            make_ready(store, keys, item.id, &mut rec, seq, now)?;
            ready_now += 1;
        } else {
            rec.state = State::Delayed;
            rec.run_at = Some(now + delay);
            save(store, keys, item.id, &rec)?;
            store.zadd(&keys.delayed, now + delay, item.id)?;
        }
        outcomes.push(NackOutcome::Retrying);
    }
    bump(store, keys, meta::FAILED, failed)?;
    bump(store, keys, meta::RETRIED, retried)?;
    bump(store, keys, meta::DEAD, dead)?;
    if ready_now > 0 {
        wake(store, keys, ready_now)?;
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
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let held = check_lease(store, keys, item.id, item.token)?;
        if held.is_ok() {
            store.zadd(&keys.leased, now + lease_ms, item.id)?;
        }
        outcomes.push(outcome(&held));
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
        let held = check_lease(store, keys, item.id, item.token)?;
        outcomes.push(outcome(&held));
        let Ok(mut rec) = held else {
            continue;
        };
        released += 1;
        store.zrem(&keys.leased, item.id)?;
        rec.attempts = (rec.attempts - 1).max(0);
        let seq = rec.seq;
        make_ready(store, keys, item.id, &mut rec, seq, now)?;
    }
    bump(store, keys, meta::RELEASED, released)?;
    if released > 0 {
        wake(store, keys, released)?;
    }
    Ok(outcomes)
}

/// A task's state as name/value pairs, in `VTASKS.GET` order.
pub type TaskFields = Vec<(&'static str, Vec<u8>)>;

/// One task's state (absent fields left out), or None.
pub fn get(store: &mut impl Store, keys: &QueueKeys, id: &[u8]) -> VtResult<Option<TaskFields>> {
    let Some(rec) = load(store, keys, id)? else {
        return Ok(None);
    };
    let task_key = keys.task(id);
    let int = |n: i64| n.to_string().into_bytes();
    let deadline = match rec.state {
        State::Leased => store.zscore(&keys.leased, id)?,
        _ => None,
    };
    let mut out: TaskFields = vec![
        ("status", rec.state.as_bytes().to_vec()),
        ("priority", int(rec.priority)),
        ("attempts", int(rec.attempts)),
        ("max_attempts", int(rec.max_attempts)),
        ("failed_attempts", int(rec.failures)),
        ("lost_leases", int(rec.lost)),
        ("max_lost_leases", int(rec.max_lost)),
        ("enqueued_at", int(rec.enqueued_at)),
    ];
    let times = [
        ("run_at", rec.run_at),
        ("started_at", rec.started_at),
        ("leased_at", rec.leased_at),
        ("deadline", deadline),
        ("finished_at", rec.finished_at),
    ];
    out.extend(
        times
            .into_iter()
            .filter_map(|(name, t)| Some((name, int(t?)))),
    );
    out.extend(rec.consumer.map(|c| ("consumer", c)));
    out.extend(rec.workers.map(|w| ("workers", w)));
    for (name, stored) in [
        ("error", field::ERROR),
        ("result", field::RESULT),
        ("payload", field::PAYLOAD),
    ] {
        out.extend(store.hget(&task_key, stored)?.map(|v| (name, v)));
    }
    Ok(Some(out))
}

/// Counts and totals of one queue; `blocked` comes from the caller, which
/// knows its blocked clients; the scripts engine's sleepers are added.
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
        ("blocked", (blocked + sleepers(store, keys, now)) as i64),
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
        ("vanished", meta::VANISHED),
        ("leases_cut", meta::LEASES_CUT),
        ("dead_lost", meta::DEAD_LOST),
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
    let ready_at = load(store, keys, &id)?
        .and_then(|r| r.ready_at)
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
        let attempts = load(store, keys, &id)?.map_or(0, |r| r.attempts);
        let error = store
            .hget(&keys.task(&id), field::ERROR)?
            .unwrap_or_default();
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
        let Some(mut rec) = load(store, keys, id)? else {
            continue;
        };
        rec.attempts = 0;
        rec.failures = 0;
        rec.lost = 0;
        rec.finished_at = None;
        make_ready(store, keys, id, &mut rec, seq, now)?;
    }
    bump(store, keys, meta::REQUEUED, ids.len() as u64)?;
    wake(store, keys, ids.len() as u64)?;
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
        let ready = store.zcard(&keys.ready)?;
        wake(store, keys, ready)?;
    }
    Ok(())
}

/// Deletes up to `limit` waiting tasks (`VTASKS.CLEAR`): ready ones first,
/// in the order FETCHN hands them out (ready-set score order), then delayed
/// ones, earliest due first (ties by id, as the sorted set orders them).
/// Leased, done and dead tasks are left alone. Each deleted task is what a
/// CANCEL of its id would have deleted, and counts in `cancelled`. Returns
/// how many; the caller repeats until 0.
pub fn clear(store: &mut impl Store, keys: &QueueKeys, limit: usize) -> VtResult<u64> {
    check_types(store, keys)?;
    let mut cleared = 0;
    for set in [&keys.ready, &keys.delayed] {
        let room = limit - cleared;
        if room == 0 {
            break;
        }
        for (id, _) in store.zrange_by_score(set, SCORE_MIN, SCORE_MAX, 0, room)? {
            store.zrem(set, &id)?;
            store.del(&keys.task(&id))?;
            cleared += 1;
        }
    }
    bump(store, keys, meta::CANCELLED, cleared as u64)?;
    Ok(cleared as u64)
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
