//! A whole queue as one value: the module's own data type holds one
//! `TaskQueue` under the queue's key `{name}`.
//!
//! The life cycle is the one `docs/PROTOCOL.md` specifies and
//! `core::queue` implements over the keyspace layout (which the scripts
//! engine keeps); the operations here take the same arguments and give the
//! same outcomes, which `tests.rs` checks against `core::queue` on random
//! command sequences. What differs is the memory: one slab entry and one
//! allocation per task instead of a hash key and sorted-set entries.
//!
//! No FFI, no clock, no randomness that changes an outcome (the id index
//! hashes with a random seed, which decides nothing observable).

pub mod codec;
pub mod layout;
pub mod order;
pub mod task;
#[cfg(test)]
mod tests;

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::error::{VtError, VtResult};
use super::keys::{BULK_BATCH, MAX_ERROR_TEXT};
use super::periodic::{self, Definition, Periodic, Schedules, SetOutcome};
use super::queue::{
    lost_lease_error, AckItem, DeadEntry, LeaseRef, Leased, Maintained, NackItem, NackOutcome,
    NewTask, Retry, Selection, Settled, TaskFields, When,
};
use super::record::State;
use order::{Lanes, TimeIndex};
use task::{Slab, Task, TaskImage, MAX_SEQ};

/// The totals `VTASKS.STATS` reports, in its order.
pub const COUNTER_NAMES: [&str; 13] = [
    "enqueued",
    "acked",
    "failed",
    "retried",
    "expired",
    "dead_lettered",
    "released",
    "requeued",
    "cancelled",
    "purged",
    "vanished",
    "leases_cut",
    "dead_lost",
];

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub enqueued: u64,
    pub acked: u64,
    pub failed: u64,
    pub retried: u64,
    pub expired: u64,
    pub dead: u64,
    pub released: u64,
    pub requeued: u64,
    pub cancelled: u64,
    pub purged: u64,
    /// Ids found without their task when a keyspace-layout queue was
    /// adopted (a queue of the module's type cannot lose a task's record).
    pub vanished: u64,
    /// Leases cut to the grace because the connections holding them closed.
    pub leases_cut: u64,
    /// Tasks dead-lettered because they used up their lost-lease budget.
    pub dead_lost: u64,
}

impl Counters {
    pub fn to_array(self) -> [u64; 13] {
        [
            self.enqueued,
            self.acked,
            self.failed,
            self.retried,
            self.expired,
            self.dead,
            self.released,
            self.requeued,
            self.cancelled,
            self.purged,
            self.vanished,
            self.leases_cut,
            self.dead_lost,
        ]
    }

    pub fn from_array(a: [u64; 13]) -> Counters {
        Counters {
            enqueued: a[0],
            acked: a[1],
            failed: a[2],
            retried: a[3],
            expired: a[4],
            dead: a[5],
            released: a[6],
            requeued: a[7],
            cancelled: a[8],
            purged: a[9],
            vanished: a[10],
            leases_cut: a[11],
            dead_lost: a[12],
        }
    }
}

/// The queue-wide values: counters behind ready order and lease tokens, the
/// pause flag and the totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub seq: u64,
    pub token: u64,
    pub paused: bool,
    pub counters: Counters,
}

pub struct TaskQueue {
    slab: Slab,
    /// Task id -> slot. Holds only slot numbers; the ids live in the tasks.
    index: HashTable<u32>,
    /// foldhash with a per-queue random seed: fast for short ids, and the
    /// seed keeps chosen ids from colliding on purpose.
    hasher: DefaultHashBuilder,
    lanes: Lanes,
    ready: usize,
    delayed: TimeIndex,
    leased: TimeIndex,
    dead: TimeIndex,
    done: TimeIndex,
    meta: Meta,
    /// The queue's periodic schedules (`VTASKS.SCHEDULE`).
    schedules: Schedules,
    /// Tasks that became ready since the caller last asked (`take_woken`):
    /// the command layer wakes blocked consumers when it is not zero.
    woken: u64,
    /// Heap bytes of the tasks themselves (ids, payloads, extras).
    task_bytes: usize,
    /// Whether anything changed since the caller last asked
    /// (`take_changed`): the command layer replicates only commands that
    /// changed something.
    changed: bool,
}

impl Default for TaskQueue {
    fn default() -> Self {
        TaskQueue::new()
    }
}

impl Clone for TaskQueue {
    /// A copy with the same state (`COPY`): rebuilt from the images, so the
    /// copy's memory is laid out afresh.
    fn clone(&self) -> Self {
        let mut copy = TaskQueue::with_meta(self.meta);
        copy.schedules = self.schedules.clone();
        for image in self.images() {
            copy.restore(&image)
                .expect("a queue's own tasks restore into a copy");
        }
        copy
    }
}

fn truncate_error(error: &[u8]) -> &[u8] {
    &error[..error.len().min(MAX_ERROR_TEXT)]
}

fn int(n: i64) -> Vec<u8> {
    n.to_string().into_bytes()
}

impl TaskQueue {
    pub fn new() -> TaskQueue {
        TaskQueue::with_meta(Meta::default())
    }

    pub fn with_meta(meta: Meta) -> TaskQueue {
        TaskQueue {
            slab: Slab::default(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            lanes: Lanes::default(),
            ready: 0,
            delayed: TimeIndex::default(),
            leased: TimeIndex::default(),
            dead: TimeIndex::default(),
            done: TimeIndex::default(),
            meta,
            schedules: Schedules::default(),
            woken: 0,
            task_bytes: 0,
            changed: false,
        }
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Counts ids that had lost their task before the queue came here.
    pub fn count_vanished(&mut self, n: u64) {
        self.meta.counters.vanished += n;
    }

    /// Tasks held, in any state.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Makes room for `n` more tasks in the id index (loading a queue whose
    /// size is known), so it does not grow and rehash step by step.
    pub fn reserve(&mut self, n: usize) {
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index.reserve(n, |&s| hasher.hash_one(slab.id(s)));
    }

    /// How many tasks became ready since the last call.
    pub fn take_woken(&mut self) -> u64 {
        std::mem::take(&mut self.woken)
    }

    /// Whether anything changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Bytes the queue holds on the heap, for `MEMORY USAGE` and `INFO`.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<TaskQueue>()
            + self.task_bytes
            + self.schedules.heap_bytes()
            + self.slab.heap_bytes()
            + self.index.capacity() * 5
            + self.lanes.heap_bytes()
            + [&self.delayed, &self.leased, &self.dead, &self.done]
                .iter()
                .map(|t| t.heap_bytes())
                .sum::<usize>()
    }

    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The slot of the task with this id, expired kept records included.
    fn find(&self, id: &[u8]) -> Option<u32> {
        self.find_hashed(self.hash(id), id)
    }

    /// `find`, with the id's hash already computed.
    fn find_hashed(&self, hash: u64, id: &[u8]) -> Option<u32> {
        let slab = &self.slab;
        self.index.find(hash, |&slot| slab.id(slot) == id).copied()
    }

    /// Whether a done task's kept record has expired: it is gone for every
    /// command, whether or not maintenance has removed it yet.
    fn expired(task: &Task, now: i64) -> bool {
        task.state() == State::Done && task.due() <= now
    }

    /// The slot of the task with this id, unless there is none or its kept
    /// record expired.
    fn find_live(&self, id: &[u8], now: i64) -> Option<u32> {
        self.find(id)
            .filter(|slot| !Self::expired(self.slab.get(*slot), now))
    }

    fn insert(&mut self, task: Task) -> u32 {
        let hash = self.hash(task.id());
        self.insert_hashed(task, hash)
    }

    fn insert_hashed(&mut self, task: Task, hash: u64) -> u32 {
        self.changed = true;
        self.task_bytes += task.heap_bytes();
        let slot = self.slab.insert(task);
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index
            .insert_unique(hash, slot, |&s| hasher.hash_one(slab.id(s)));
        slot
    }

    fn unindex(&mut self, slot: u32) {
        let hash = self.hash(self.slab.id(slot));
        self.unindex_hashed(slot, hash);
    }

    fn unindex_hashed(&mut self, slot: u32, hash: u64) {
        self.changed = true;
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        self.task_bytes -= self.slab.get(slot).heap_bytes();
    }

    /// Deletes a task that is in no order any more.
    fn delete(&mut self, slot: u32) {
        let hash = self.hash(self.slab.id(slot));
        self.delete_hashed(slot, hash);
    }

    fn delete_hashed(&mut self, slot: u32, hash: u64) {
        self.unindex_hashed(slot, hash);
        self.slab.remove(slot);
        self.shrink_index();
    }

    /// A queue that drained gives the index's memory back (amortized: the
    /// table is rebuilt only once it is four times too large).
    fn shrink_index(&mut self) {
        let (len, capacity) = (self.index.len(), self.index.capacity());
        if capacity > 64 && len * 4 < capacity {
            let (slab, hasher) = (&self.slab, &self.hasher);
            self.index
                .shrink_to(len * 2, |&s| hasher.hash_one(slab.id(s)));
        }
    }

    /// Changes a task, keeping the byte count right.
    fn update<T>(&mut self, slot: u32, f: impl FnOnce(&mut Task) -> T) -> T {
        self.changed = true;
        let task = self.slab.get_mut(slot);
        let before = task.heap_bytes();
        let out = f(task);
        let after = task.heap_bytes();
        self.task_bytes = self.task_bytes + after - before;
        out
    }

    fn allocate_seq(&mut self, n: u64) -> VtResult<u64> {
        // Ready scores of the keyspace layout hold 44 bits of sequence.
        if self.meta.seq + n > MAX_SEQ {
            return Err(VtError::Internal("queue sequence exhausted".into()));
        }
        let first = self.meta.seq + 1;
        self.meta.seq += n;
        Ok(first)
    }

    /// Makes a task ready under a new sequence number: the back of its
    /// priority.
    fn make_ready(&mut self, slot: u32, seq: u64, now: i64) {
        let priority = self.update(slot, |t| {
            t.set_state(State::Ready);
            t.set_seq(seq);
            t.set_ready_at(Some(now));
            t.priority()
        });
        self.lanes.lane_mut(priority).fifo.push_back(slot);
        self.ready += 1;
    }

    /// Puts a task back at its old place (its old sequence number).
    fn return_ready(&mut self, slot: u32, now: i64) {
        let (priority, seq) = self.update(slot, |t| {
            t.set_state(State::Ready);
            t.set_ready_at(Some(now));
            (t.priority(), t.seq())
        });
        self.lanes.lane_mut(priority).returned.insert((seq, slot));
        self.ready += 1;
    }

    fn make_dead(&mut self, slot: u32, error: &[u8], now: i64) {
        self.update(slot, |t| {
            t.set_state(State::Dead);
            t.set_finished_at(Some(now));
            t.extra_mut().error = Some(truncate_error(error).into());
        });
        let slab = &self.slab;
        self.dead.insert(now, slot, |s| slab.id(s));
    }

    fn pending(&self) -> u64 {
        (self.ready + self.delayed.len() + self.leased.len()) as u64
    }

    /// Adds tasks; per task, true if added and false if a task with that id
    /// already exists (idempotency). `queue` names the queue in errors.
    pub fn enqueue(
        &mut self,
        queue: &[u8],
        tasks: &[NewTask],
        maxlen: Option<u64>,
        now: i64,
    ) -> VtResult<Vec<bool>> {
        let mut added = Vec::with_capacity(tasks.len());
        let mut replaced = Vec::new();
        let hashes: Vec<u64> = tasks.iter().map(|t| self.hash(t.id)).collect();
        // Ids earlier in the same call (task indices, by the ids' hashes).
        let mut seen: HashTable<usize> =
            HashTable::with_capacity(if tasks.len() > 1 { tasks.len() } else { 0 });
        for (i, task) in tasks.iter().enumerate() {
            let mut free = match self.find_hashed(hashes[i], task.id) {
                None => true,
                Some(slot) => {
                    let old = self.slab.get(slot);
                    let finished = matches!(old.state(), State::Done | State::Dead);
                    if Self::expired(old, now) || (task.replace_finished && finished) {
                        replaced.push(slot);
                        true
                    } else {
                        false
                    }
                }
            };
            if tasks.len() > 1 {
                let first = seen.find(hashes[i], |&j| tasks[j].id == task.id).is_none();
                if first {
                    seen.insert_unique(hashes[i], i, |&j| hashes[j]);
                }
                free &= first;
            }
            added.push(free);
        }
        let new_count = added.iter().filter(|a| **a).count();
        if new_count == 0 {
            return Ok(added);
        }
        if let Some(limit) = maxlen {
            let held = self.pending();
            if held + new_count as u64 > limit {
                return Err(VtError::QueueFull {
                    queue: String::from_utf8_lossy(queue).into_owned(),
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
            self.allocate_seq(ready_now as u64)?
        } else {
            0
        };
        replaced.sort_unstable();
        replaced.dedup();
        for slot in replaced {
            self.remove_finished(slot);
        }
        for (i, task) in tasks.iter().enumerate().filter(|(i, _)| added[*i]) {
            let new = Task::new(
                task.id,
                task.payload,
                task.priority,
                task.max_attempts,
                task.max_lost_leases,
                now,
            );
            let at = run_at(task);
            let slot = self.insert_hashed(new, hashes[i]);
            if at <= now {
                self.update(slot, |t| t.set_seq(seq));
                self.lanes
                    .lane_mut(task.priority as i8)
                    .fifo
                    .push_back(slot);
                self.ready += 1;
                seq += 1;
            } else {
                self.update(slot, |t| {
                    t.set_state(State::Delayed);
                    t.set_ready_at(None);
                    t.set_run_at(at);
                });
                let slab = &self.slab;
                self.delayed.insert(at, slot, |s| slab.id(s));
            }
        }
        self.meta.counters.enqueued += new_count as u64;
        self.woken += ready_now as u64;
        Ok(added)
    }

    /// Deletes a done or dead task.
    fn remove_finished(&mut self, slot: u32) {
        let task = self.slab.get(slot);
        let slab = &self.slab;
        match task.state() {
            State::Done => {
                self.done.remove(task.due(), slot, |s| slab.id(s));
            }
            State::Dead => {
                let at = task.finished_at().unwrap_or_default();
                self.dead.remove(at, slot, |s| slab.id(s));
            }
            _ => {}
        }
        self.delete(slot);
    }

    pub fn is_paused(&self) -> bool {
        self.meta.paused
    }

    /// Whether a fetch would hand out a task now: one is ready and the
    /// queue is not paused.
    pub fn has_ready(&self) -> bool {
        !self.meta.paused && self.ready > 0
    }

    /// Takes the next ready task of the highest priority, or None.
    fn pop_ready(&mut self) -> Option<u32> {
        loop {
            let (priority, lane) = self.lanes.iter().next()?;
            let fifo_front = lane.fifo.front();
            if let Some(slot) = fifo_front {
                if self.slab.get(slot).is_tombstone() {
                    self.lanes.lane_mut(priority).fifo.pop_front();
                    self.slab.remove(slot);
                    self.lanes.drop_if_empty(priority);
                    continue;
                }
            }
            let fifo_seq = fifo_front.map(|s| self.slab.get(s).seq());
            let returned = lane.returned.first().copied();
            let lane = self.lanes.lane_mut(priority);
            let slot = match (fifo_seq, returned) {
                (Some(fs), Some((rs, _))) if fs < rs => lane.fifo.pop_front(),
                (_, Some(entry)) => {
                    lane.returned.remove(&entry);
                    Some(entry.1)
                }
                (Some(_), None) => lane.fifo.pop_front(),
                (None, None) => None,
            };
            self.lanes.drop_if_empty(priority);
            if let Some(slot) = slot {
                self.ready -= 1;
                return Some(slot);
            }
        }
    }

    /// Leases up to `count` ready tasks, highest priority first, FIFO within
    /// a priority. A paused queue hands out nothing.
    pub fn fetch(&mut self, consumer: &[u8], count: usize, lease_ms: i64, now: i64) -> Vec<Leased> {
        if count == 0 || self.meta.paused || self.ready == 0 {
            return Vec::new();
        }
        let mut picked = Vec::with_capacity(count.min(self.ready));
        while picked.len() < count {
            match self.pop_ready() {
                Some(slot) => picked.push(slot),
                None => break,
            }
        }
        // Tokens are handed out highest first within a batch, as the
        // keyspace layout's counter arithmetic does.
        let last_token = self.meta.token + picked.len() as u64;
        self.meta.token = last_token;
        let deadline = now + lease_ms;
        let mut leased = Vec::with_capacity(picked.len());
        for (i, slot) in picked.into_iter().enumerate() {
            let token = last_token - i as u64;
            let attempt = self.update(slot, |t| {
                t.lease(consumer, token, deadline, now);
                t.attempts()
            });
            let slab = &self.slab;
            self.leased.insert(deadline, slot, |s| slab.id(s));
            let task = self.slab.get(slot);
            leased.push(Leased {
                id: task.id().to_vec(),
                token: token as i64,
                attempt: attempt as i64,
                payload: task.payload().to_vec(),
            });
        }
        leased
    }

    /// Server-side time: promotes due delayed tasks, returns expired leases
    /// to their place in the queue (or the dead letters once the lost-lease
    /// budget is used up) and forgets expired results. At most `limit` entries of each kind.
    pub fn maintain(&mut self, now: i64, limit: usize) -> VtResult<Maintained> {
        let mut report = Maintained::default();
        let due = self.delayed.pop_due(now, limit);
        report.more |= due.len() == limit;
        report.promoted = due.len() as u64;
        let to_ready: Vec<u32> = due.into_iter().map(|(_, slot)| slot).collect();

        let expired = self.leased.pop_due(now, limit);
        report.more |= expired.len() == limit;
        report.expired = expired.len() as u64;
        // A lease that expired counts against the lost-lease budget, and the
        // task goes back to its old place: it was enqueued before the tasks
        // behind it (docs/DECISIONS.md).
        let mut returned = Vec::new();
        for (_, slot) in expired {
            let (lost, max_lost, attempts) = self.update(slot, |t| {
                let e = t.extra_mut();
                e.lost += 1;
                (e.lost as i64, e.max_lost as i64, e.attempts as i64)
            });
            let error = lost_lease_error(lost, max_lost, attempts);
            if lost >= max_lost {
                self.make_dead(slot, error.as_bytes(), now);
                self.meta.counters.dead += 1;
                self.meta.counters.dead_lost += 1;
            } else {
                self.update(slot, |t| {
                    t.extra_mut().error = Some(error.into_bytes().into())
                });
                returned.push(slot);
            }
        }
        self.meta.counters.expired += report.expired;

        if !to_ready.is_empty() {
            let first = self.allocate_seq(to_ready.len() as u64)?;
            for (seq, slot) in (first..).zip(&to_ready) {
                self.make_ready(*slot, seq, now);
            }
        }
        for slot in &returned {
            self.return_ready(*slot, now);
        }
        self.woken += (to_ready.len() + returned.len()) as u64;

        let forgotten = self.done.pop_due(now, limit);
        report.more |= forgotten.len() == limit;
        report.pruned = forgotten.len() as u64;
        for (_, slot) in forgotten {
            self.delete(slot);
        }

        let (runs, more) = self.schedules.fire(now, limit, periodic::next_occurrence);
        report.more |= more;
        self.changed |= !runs.is_empty() || more;
        self.enqueue_runs(&runs, now)?;
        Ok(report)
    }

    /// Enqueues the tasks of schedules that fired, one at a time in the
    /// order fired (each takes the next sequence number, as the scripts
    /// engine's maintenance gives them).
    fn enqueue_runs(&mut self, runs: &[periodic::Firing], now: i64) -> VtResult<()> {
        for run in runs {
            let Some(p) = self.schedules.get(&run.name) else {
                continue;
            };
            let id = periodic::task_id(&run.name, run.at);
            let payload = p.def.payload.clone();
            let mut task = NewTask::new(&id, &payload);
            task.priority = p.def.priority;
            task.max_attempts = p.def.max_attempts;
            if self.enqueue(b"", &[task], None, now)?[0] {
                self.schedules.count_run(&run.name);
            }
        }
        // Firing changes each schedule's state even when its task existed.
        self.changed |= !runs.is_empty();
        Ok(())
    }

    /// The earliest time at which `maintain` has work.
    pub fn next_due(&self) -> Option<i64> {
        [&self.delayed, &self.leased, &self.done]
            .iter()
            .filter_map(|t| t.first_time())
            .chain(self.schedules.next_due())
            .min()
    }

    /// The queue's schedules.
    pub fn schedules(&self) -> &Schedules {
        &self.schedules
    }

    /// Adds or changes a schedule (`VTASKS.SCHEDULE`), whose next
    /// occurrence the caller computed. Refused past `MAX_SCHEDULES`.
    pub fn set_schedule(
        &mut self,
        queue: &[u8],
        name: &[u8],
        def: Definition,
        next: i64,
    ) -> VtResult<SetOutcome> {
        use super::keys::MAX_SCHEDULES;
        if self.schedules.get(name).is_none() && self.schedules.len() >= MAX_SCHEDULES {
            return Err(VtError::TooManySchedules {
                queue: String::from_utf8_lossy(queue).into_owned(),
            });
        }
        let outcome = self.schedules.set(name, def, next);
        self.changed |= outcome != SetOutcome::Unchanged;
        Ok(outcome)
    }

    /// Removes schedules by name; how many there were.
    pub fn remove_schedules(&mut self, names: &[&[u8]]) -> u64 {
        let removed = names.iter().filter(|n| self.schedules.remove(n)).count();
        self.changed |= removed > 0;
        removed as u64
    }

    /// Sets a pending schedule's next occurrence (`VTASKS.SCHEDULENEXT`).
    pub fn set_schedule_next(&mut self, name: &[u8], after: i64, next: Option<i64>) -> bool {
        let set = self.schedules.set_next(name, after, next);
        self.changed |= set;
        set
    }

    /// Restores a schedule read from the encoding.
    pub fn restore_schedule(&mut self, name: Vec<u8>, periodic: Periodic) {
        self.schedules.insert(name, periodic);
    }

    /// The task's slot and its id's hash if `token` holds its current
    /// lease, else why not.
    fn check_lease(&self, id: &[u8], token: i64, now: i64) -> Result<(u32, u64), Settled> {
        let hash = self.hash(id);
        let slot = self
            .find_hashed(hash, id)
            .filter(|slot| !Self::expired(self.slab.get(*slot), now))
            .ok_or(Settled::NoTask)?;
        let task = self.slab.get(slot);
        if task.state() != State::Leased || task.token() as i64 != token {
            return Err(Settled::Stale);
        }
        Ok((slot, hash))
    }

    fn unlease(&mut self, slot: u32) {
        let slab = &self.slab;
        self.leased
            .remove(slab.get(slot).due(), slot, |s| slab.id(s));
    }

    /// Marks leased tasks done, keeping their record (and result, if any)
    /// for `keep_ms`; with `keep_ms == 0` the task is deleted at once.
    pub fn ack(&mut self, items: &[AckItem], keep_ms: i64, now: i64) -> Vec<Settled> {
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let (slot, hash) = match self.check_lease(item.id, item.token, now) {
                Ok(found) => found,
                Err(refused) => {
                    outcomes.push(refused);
                    continue;
                }
            };
            outcomes.push(Settled::Ok);
            self.meta.counters.acked += 1;
            self.unlease(slot);
            if keep_ms == 0 {
                self.delete_hashed(slot, hash);
                continue;
            }
            let expires = now + keep_ms;
            self.update(slot, |t| {
                t.set_state(State::Done);
                t.set_finished_at(Some(now));
                let e = t.extra_mut();
                e.due = expires;
                if let Some(result) = item.result {
                    e.result = Some(result.into());
                }
            });
            let slab = &self.slab;
            self.done.insert(expires, slot, |s| slab.id(s));
        }
        outcomes
    }

    /// Reports failed attempts: each task is retried after its delay, or
    /// dead-lettered once its attempts are exhausted (or at once with
    /// `Retry::Never`). The error text is kept on the task.
    pub fn nack(&mut self, items: &[NackItem], now: i64) -> VtResult<Vec<NackOutcome>> {
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let slot = match self.check_lease(item.id, item.token, now) {
                Ok((slot, _)) => slot,
                Err(refused) => {
                    outcomes.push(NackOutcome::Refused(refused));
                    continue;
                }
            };
            self.meta.counters.failed += 1;
            self.unlease(slot);
            let failures = self.update(slot, |t| {
                let e = t.extra_mut();
                e.failures += 1;
                e.failures
            });
            let delay = match item.retry {
                Retry::After(ms) if failures < self.slab.get(slot).max_attempts() => ms,
                _ => {
                    self.make_dead(slot, item.error, now);
                    self.meta.counters.dead += 1;
                    outcomes.push(NackOutcome::Dead);
                    continue;
                }
            };
            self.meta.counters.retried += 1;
            self.update(slot, |t| {
                t.extra_mut().error = Some(truncate_error(item.error).into())
            });
            if delay == 0 {
                let seq = self.allocate_seq(1)?;
                self.make_ready(slot, seq, now);
                self.woken += 1;
            } else {
                let at = now + delay;
                self.update(slot, |t| {
                    t.set_state(State::Delayed);
                    t.set_run_at(at);
                });
                let slab = &self.slab;
                self.delayed.insert(at, slot, |s| slab.id(s));
            }
            outcomes.push(NackOutcome::Retrying);
        }
        Ok(outcomes)
    }

    /// Renews leases: each held lease's deadline becomes `now + lease_ms`.
    pub fn extend(&mut self, items: &[LeaseRef], lease_ms: i64, now: i64) -> Vec<Settled> {
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            match self.check_lease(item.id, item.token, now) {
                Ok((slot, _)) => {
                    self.unlease(slot);
                    let deadline = now + lease_ms;
                    self.update(slot, |t| t.extra_mut().due = deadline);
                    let slab = &self.slab;
                    self.leased.insert(deadline, slot, |s| slab.id(s));
                    outcomes.push(Settled::Ok);
                }
                Err(refused) => outcomes.push(refused),
            }
        }
        outcomes
    }

    /// Shortens the leases of a worker that went away (its connections
    /// closed) to end at `until`: only leases still held under the given
    /// token and ending later. Returns how many were cut.
    pub fn cut_leases(&mut self, leases: &[LeaseRef], until: i64, now: i64) -> u64 {
        let mut cut = 0;
        for lease in leases {
            let Ok((slot, _)) = self.check_lease(lease.id, lease.token, now) else {
                continue;
            };
            if self.slab.get(slot).due() <= until {
                continue;
            }
            self.unlease(slot);
            self.update(slot, |t| t.extra_mut().due = until);
            let slab = &self.slab;
            self.leased.insert(until, slot, |s| slab.id(s));
            cut += 1;
        }
        self.meta.counters.leases_cut += cut;
        cut
    }

    /// Gives back leased tasks that were never started: they return to their
    /// old place in the queue and the attempt does not count.
    pub fn release(&mut self, items: &[LeaseRef], now: i64) -> Vec<Settled> {
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            match self.check_lease(item.id, item.token, now) {
                Ok((slot, _)) => {
                    self.meta.counters.released += 1;
                    self.unlease(slot);
                    self.update(slot, |t| {
                        let e = t.extra_mut();
                        e.attempts = e.attempts.saturating_sub(1);
                    });
                    self.return_ready(slot, now);
                    self.woken += 1;
                    outcomes.push(Settled::Ok);
                }
                Err(refused) => outcomes.push(refused),
            }
        }
        outcomes
    }

    /// One task's state (absent fields left out), in `VTASKS.GET` order, or
    /// None.
    pub fn get(&self, id: &[u8], now: i64) -> Option<TaskFields> {
        let task = self.slab.get(self.find_live(id, now)?);
        let deadline = (task.state() == State::Leased).then(|| task.due());
        let mut out: TaskFields = vec![
            ("status", task.state().as_bytes().to_vec()),
            ("priority", int(task.priority() as i64)),
            ("attempts", int(task.attempts() as i64)),
            ("max_attempts", int(task.max_attempts() as i64)),
            ("failed_attempts", int(task.failures() as i64)),
            ("lost_leases", int(task.lost() as i64)),
            ("max_lost_leases", int(task.max_lost() as i64)),
            ("enqueued_at", int(task.enqueued_at())),
        ];
        let times = [
            ("run_at", task.run_at()),
            ("started_at", task.started_at()),
            ("leased_at", task.leased_at()),
            ("deadline", deadline),
            ("finished_at", task.finished_at()),
        ];
        out.extend(
            times
                .into_iter()
                .filter_map(|(name, t)| Some((name, int(t?)))),
        );
        for (name, value) in [
            ("consumer", task.consumer()),
            ("workers", task.workers()),
            ("error", task.error()),
            ("result", task.result()),
            ("payload", Some(task.payload())),
        ] {
            out.extend(value.map(|v| (name, v.to_vec())));
        }
        Some(out)
    }

    /// Counts and totals, in `VTASKS.STATS` order; `blocked` comes from the
    /// caller, which knows its blocked clients.
    pub fn stats(&self, now: i64, blocked: u64) -> Vec<(&'static str, i64)> {
        let mut out = vec![
            ("ready", self.ready as i64),
            ("delayed", self.delayed.len() as i64),
            ("leased", self.leased.len() as i64),
            ("dead", self.dead.len() as i64),
            ("done", (self.done.len() - self.done.count_upto(now)) as i64),
            ("overdue_leases", self.leased.count_upto(now) as i64),
            ("paused", self.meta.paused as i64),
            ("blocked", blocked as i64),
            ("oldest_ready_age_ms", self.oldest_ready_age(now)),
        ];
        for (name, value) in COUNTER_NAMES.iter().zip(self.meta.counters.to_array()) {
            out.push((name, value as i64));
        }
        out
    }

    /// The first live entry of a lane's fifo (tombstones skipped).
    fn fifo_front(&self, lane: &order::Lane) -> Option<u32> {
        lane.fifo
            .iter()
            .find(|slot| !self.slab.get(*slot).is_tombstone())
    }

    /// Age of the ready task with the lowest sequence number (the one that
    /// has waited longest in ready order), across the priorities.
    fn oldest_ready_age(&self, now: i64) -> i64 {
        let mut oldest: Option<(u64, u32)> = None;
        for (_, lane) in self.lanes.iter() {
            let fifo = self
                .fifo_front(lane)
                .map(|slot| (self.slab.get(slot).seq(), slot));
            for candidate in [fifo, lane.returned.first().copied()].into_iter().flatten() {
                if oldest.is_none_or(|o| candidate.0 < o.0) {
                    oldest = Some(candidate);
                }
            }
        }
        let Some((_, slot)) = oldest else {
            return 0;
        };
        let ready_at = self.slab.get(slot).ready_at().unwrap_or(now);
        (now - ready_at).max(0)
    }

    /// Dead-lettered tasks, oldest first.
    pub fn dead_list(&self, offset: usize, count: usize) -> Vec<DeadEntry> {
        self.dead
            .iter()
            .skip(offset)
            .take(count)
            .map(|(dead_at, slot)| {
                let task = self.slab.get(slot);
                DeadEntry {
                    id: task.id().to_vec(),
                    dead_at,
                    attempts: task.attempts() as i64,
                    error: task.error().unwrap_or_default().to_vec(),
                }
            })
            .collect()
    }

    /// The dead tasks a selection names, in its order (an id named twice
    /// counts twice, as in the keyspace layout).
    fn select_dead(&self, selection: &Selection) -> Vec<u32> {
        match selection {
            Selection::All => self
                .dead
                .iter()
                .take(BULK_BATCH)
                .map(|(_, slot)| slot)
                .collect(),
            Selection::Ids(ids) => ids
                .iter()
                .filter_map(|id| self.find(id))
                .filter(|slot| self.slab.get(*slot).state() == State::Dead)
                .collect(),
        }
    }

    /// Puts dead tasks back in the queue with their attempts reset. `All`
    /// moves at most `BULK_BATCH` per call. Returns how many moved.
    pub fn requeue(&mut self, selection: &Selection, now: i64) -> VtResult<u64> {
        let slots = self.select_dead(selection);
        if slots.is_empty() {
            return Ok(0);
        }
        let first = self.allocate_seq(slots.len() as u64)?;
        // An id named twice ends with the later sequence number.
        let mut last_seq: Vec<(u64, u32)> = Vec::with_capacity(slots.len());
        for (seq, slot) in (first..).zip(&slots) {
            match last_seq.iter_mut().find(|(_, s)| s == slot) {
                Some(entry) => entry.0 = seq,
                None => last_seq.push((seq, *slot)),
            }
        }
        last_seq.sort_unstable();
        for (seq, slot) in last_seq {
            let slab = &self.slab;
            let died = slab.get(slot).finished_at().unwrap_or_default();
            self.dead.remove(died, slot, |s| slab.id(s));
            self.update(slot, |t| {
                let e = t.extra_mut();
                e.attempts = 0;
                e.failures = 0;
                e.lost = 0;
                t.set_finished_at(None);
            });
            self.make_ready(slot, seq, now);
        }
        let n = slots.len() as u64;
        self.meta.counters.requeued += n;
        self.woken += n;
        Ok(n)
    }

    /// Deletes dead tasks for good. `All` deletes at most `BULK_BATCH` per
    /// call. Returns how many (an id named twice counts twice).
    pub fn purge(&mut self, selection: &Selection) -> u64 {
        let slots = self.select_dead(selection);
        let mut unique = slots.clone();
        unique.sort_unstable();
        unique.dedup();
        for slot in unique {
            self.remove_finished(slot);
        }
        self.meta.counters.purged += slots.len() as u64;
        slots.len() as u64
    }

    pub fn pause(&mut self) {
        self.changed = true;
        self.meta.paused = true;
    }

    pub fn resume(&mut self) {
        self.changed = true;
        if self.meta.paused {
            self.woken += self.ready as u64;
        }
        self.meta.paused = false;
    }

    /// Deletes up to `limit` waiting tasks (`VTASKS.CLEAR`): ready ones
    /// first, in the order FETCHN hands them out, then delayed ones,
    /// earliest due first (ties by id). Leased, done and dead tasks stay.
    /// Each deleted task is what a CANCEL of its id would have deleted, and
    /// counts in `cancelled`. Returns how many; the caller repeats until 0.
    pub fn clear(&mut self, limit: usize) -> u64 {
        let mut cleared = 0;
        while cleared < limit {
            // Taken from the fronts of the ready lanes, so no tombstone is
            // left behind (those in the way are dropped as a fetch drops them).
            let Some(slot) = self.pop_ready() else {
                break;
            };
            self.delete(slot);
            cleared += 1;
        }
        for (_, slot) in self.delayed.pop_due(i64::MAX, limit - cleared) {
            self.delete(slot);
            cleared += 1;
        }
        self.meta.counters.cancelled += cleared as u64;
        cleared as u64
    }

    /// Removes tasks that are waiting (ready or delayed). Returns, per id,
    /// whether it was cancelled.
    pub fn cancel(&mut self, ids: &[&[u8]]) -> Vec<bool> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let slot = self.find(id);
            let removed = match slot.map(|s| (s, self.slab.get(s).state())) {
                Some((slot, State::Ready)) => {
                    self.cancel_ready(slot);
                    true
                }
                Some((slot, State::Delayed)) => {
                    let slab = &self.slab;
                    let at = slab.get(slot).run_at().unwrap_or_default();
                    self.delayed.remove(at, slot, |s| slab.id(s));
                    self.delete(slot);
                    true
                }
                _ => false,
            };
            out.push(removed);
        }
        self.meta.counters.cancelled += out.iter().filter(|c| **c).count() as u64;
        out
    }

    fn cancel_ready(&mut self, slot: u32) {
        let (priority, seq) = {
            let t = self.slab.get(slot);
            (t.priority(), t.seq())
        };
        self.ready -= 1;
        let lane = self.lanes.lane_mut(priority);
        if lane.returned.remove(&(seq, slot)) {
            self.lanes.drop_if_empty(priority);
            self.delete(slot);
            return;
        }
        // In the fifo: leave a tombstone, cleared when it reaches the front.
        self.unindex(slot);
        self.slab.bury(slot);
        self.shrink_index();
        let lane = self.lanes.lane_mut(priority);
        while let Some(front) = lane.fifo.front() {
            if !self.slab.get(front).is_tombstone() {
                break;
            }
            lane.fifo.pop_front();
            self.slab.remove(front);
        }
        self.lanes.drop_if_empty(priority);
    }

    /// Hands every allocation of the tasks, from slot `start` on, to
    /// `moved` (which may move it: defragmentation; see `Task::relocate`)
    /// until `stop` says so; then returns the slot to continue from, or
    /// None when done.
    pub fn relocate_allocations(
        &mut self,
        start: u32,
        mut moved: impl FnMut(*mut u8, usize) -> *mut u8,
        mut stop: impl FnMut() -> bool,
    ) -> Option<u32> {
        for slot in start..self.slab.capacity() as u32 {
            if let Some(task) = self.slab.try_get_mut(slot) {
                task.relocate(&mut moved);
                if stop() {
                    return Some(slot + 1);
                }
            }
        }
        None
    }

    /// Every task's full state, in a canonical order (ready by priority and
    /// sequence, then delayed, leased, dead and done tasks by their times):
    /// two queues with the same state give the same images in the same
    /// order, whatever their history.
    pub fn images(&self) -> impl Iterator<Item = TaskImage> + '_ {
        // Each lane's fifo and returned set are both in sequence order:
        // merged as they go, with no copy of a large queue's order.
        let ready = self.lanes.iter().flat_map(move |(_, lane)| {
            let mut fifo = lane
                .fifo
                .iter()
                .filter(|s| !self.slab.get(*s).is_tombstone())
                .map(|s| (self.slab.get(s).seq(), s))
                .peekable();
            let mut returned = lane.returned.iter().copied().peekable();
            std::iter::from_fn(move || match (fifo.peek(), returned.peek()) {
                (Some(f), Some(r)) if f < r => fifo.next(),
                (_, Some(_)) => returned.next(),
                (Some(_), None) => fifo.next(),
                (None, None) => None,
            })
            .map(|(_, s)| s)
        });
        let timed = [&self.delayed, &self.leased, &self.dead, &self.done]
            .into_iter()
            .flat_map(|t| t.iter().map(|(_, s)| s));
        ready.chain(timed).map(move |s| self.slab.get(s).image())
    }

    /// Adds a task from its full state (loading, copying, adopting). Ready
    /// tasks must come in ready order within their priority, as `images`
    /// gives them.
    pub fn restore(&mut self, image: &TaskImage) -> VtResult<()> {
        image.check()?;
        if self.find(&image.id).is_some() {
            return Err(VtError::Internal(format!(
                "task '{}' appears twice",
                super::error::shown(&image.id)
            )));
        }
        let rec = &image.rec;
        if self.meta.seq < rec.seq as u64 || self.meta.token < rec.token as u64 {
            return Err(VtError::Internal(
                "a task's sequence or token is ahead of its queue's".into(),
            ));
        }
        if rec.state == State::Ready {
            if let Some(back) = self
                .lanes
                .lane(rec.priority as i8)
                .and_then(|l| l.fifo.back())
            {
                if self.slab.get(back).seq() >= rec.seq as u64 {
                    return Err(VtError::Internal("ready tasks out of order".into()));
                }
            }
        }
        let slot = self.insert(Task::from_image(image));
        let slab = &self.slab;
        let id_of = |s| slab.id(s);
        match rec.state {
            State::Ready => {
                self.lanes.lane_mut(rec.priority as i8).fifo.push_back(slot);
                self.ready += 1;
            }
            State::Delayed => self
                .delayed
                .insert(rec.run_at.unwrap_or_default(), slot, id_of),
            State::Leased => self
                .leased
                .insert(image.due.unwrap_or_default(), slot, id_of),
            State::Dead => self
                .dead
                .insert(rec.finished_at.unwrap_or_default(), slot, id_of),
            State::Done => self.done.insert(image.due.unwrap_or_default(), slot, id_of),
        }
        Ok(())
    }
}

impl TaskImage {
    /// Refuses a task that no command could have made: what is loaded from
    /// an RDB file, a `RESTORE` payload or an AOF may be corrupt or hostile.
    pub fn check(&self) -> VtResult<()> {
        use super::keys::*;
        let bad = |what: &str| {
            Err(VtError::Internal(format!(
                "invalid task '{}': {what}",
                super::error::shown(&self.id)
            )))
        };
        let rec = &self.rec;
        if self.id.is_empty() || self.id.len() > MAX_ID_LEN {
            return bad("id length");
        }
        if self.payload.len() > MAX_PAYLOAD
            || self.result.as_ref().is_some_and(|r| r.len() > MAX_PAYLOAD)
        {
            return bad("payload or result too large");
        }
        if self
            .error
            .as_ref()
            .is_some_and(|e| e.len() > MAX_ERROR_TEXT)
        {
            return bad("error text too long");
        }
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&rec.priority)
            || !(1..=MAX_ATTEMPTS).contains(&rec.max_attempts)
            || !(1..=MAX_LOST_LEASES).contains(&rec.max_lost)
            || !(0..=u32::MAX as i64).contains(&rec.attempts)
            || !(0..=u32::MAX as i64).contains(&rec.failures)
            || !(0..=u32::MAX as i64).contains(&rec.lost)
            || !(0..=MAX_SEQ as i64).contains(&rec.seq)
            || rec.token < 0
            || !(0..=task::MAX_ENQUEUED_AT).contains(&rec.enqueued_at)
        {
            return bad("a number out of range");
        }
        let workers = rec.workers.as_deref().unwrap_or_default();
        if workers.len() > MAX_PAYLOAD {
            return bad("worker list too long");
        }
        if let Some(consumer) = &rec.consumer {
            validate_consumer(consumer).or_else(|_| bad("consumer name"))?;
            if !workers
                .split(|c| *c == b',')
                .any(|w| w == consumer.as_slice())
            {
                return bad("consumer not among its workers");
            }
        }
        let has = |t: Option<i64>| t.is_some();
        let ok = match rec.state {
            State::Ready => has(rec.ready_at),
            State::Delayed => has(rec.run_at),
            State::Leased => has(self.due) && rec.consumer.is_some(),
            State::Done => has(self.due) && has(rec.finished_at),
            State::Dead => has(rec.finished_at),
        };
        if !ok {
            return bad("missing a time its state needs");
        }
        Ok(())
    }
}
