//! One task in memory, and the slab that numbers them.
//!
//! Memory is what this layout is for: a queued task is one 8-byte slab
//! entry, a pointer to one allocation holding a 28-byte head, its id and
//! its payload. The fields every task has are packed into two words of the
//! head; what only a task that was leased, delayed or finished has
//! (attempts, token, times, workers, error, result) lives in an `Extra`
//! allocated on first need.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

use super::super::keys::DEFAULT_MAX_LOST_LEASES;
use super::super::record::{State, TaskRecord};

/// A time that is not set.
const NONE: i64 = i64::MIN;

fn opt(t: i64) -> Option<i64> {
    (t != NONE).then_some(t)
}

fn raw(t: Option<i64>) -> i64 {
    t.unwrap_or(NONE)
}

/// Fields of tasks that left the plain "just enqueued, ready" shape.
#[derive(Clone, Default)]
pub struct Extra {
    pub token: u64,
    pub attempts: u32,
    /// Attempts the worker reported failed (NACK), against `max_attempts`.
    pub failures: u32,
    /// Leases that expired (the worker vanished), against `max_lost`.
    pub lost: u32,
    /// The lost-lease budget (a task enqueued with the default has it only
    /// once it has an `Extra` for other reasons).
    pub max_lost: u32,
    /// Where the current consumer's name sits in `workers`.
    consumer_at: u32,
    consumer_len: u32,
    ready_at: i64,
    run_at: i64,
    started_at: i64,
    leased_at: i64,
    finished_at: i64,
    /// The lease deadline (leased) or when the kept record expires (done).
    pub due: i64,
    /// Every consumer that leased the task, comma-separated, first-seen order.
    workers: Option<Box<[u8]>>,
    pub error: Option<Box<[u8]>>,
    pub result: Option<Box<[u8]>>,
}

impl Extra {
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Extra>()
            + [&self.workers, &self.error, &self.result]
                .iter()
                .map(|b| b.as_ref().map_or(0, |b| b.len()))
                .sum::<usize>()
    }
}

// word: seq (44 bits) | priority + 100 (8) | state (3) | id length (9)
const SEQ_BITS: u32 = 44;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const PRIO_SHIFT: u32 = 44;
const STATE_SHIFT: u32 = 52;
const IDLEN_SHIFT: u32 = 55;
// enq: enqueued_at (50 bits) | max_attempts (14)
const ENQ_BITS: u32 = 50;
const ENQ_MASK: u64 = (1 << ENQ_BITS) - 1;

/// The largest sequence number a task can hold.
pub const MAX_SEQ: u64 = SEQ_MASK;
/// The latest enqueue time a task can hold.
pub const MAX_ENQUEUED_AT: i64 = ENQ_MASK as i64;

/// A slot whose task was cancelled while its entry still waits in a ready
/// lane (see `Lane`).
const TOMBSTONE: u8 = 7;

fn state_code(state: State) -> u8 {
    match state {
        State::Delayed => 0,
        State::Ready => 1,
        State::Leased => 2,
        State::Done => 3,
        State::Dead => 4,
    }
}

fn state_of(code: u8) -> State {
    match code {
        0 => State::Delayed,
        1 => State::Ready,
        2 => State::Leased,
        3 => State::Done,
        _ => State::Dead,
    }
}

/// A task's one allocation: a 28-byte head (the extra fields' pointer, the
/// two packed words, the byte length), then the id, then the payload. The
/// head rides in what the allocator's size classes would round up anyway
/// for most payloads, and the slab holds only the pointer.
struct Block(NonNull<u8>);

// SAFETY: a Block owns its allocation outright (no sharing, no interior
// references escape); a queue may be freed on another thread.
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

const OFF_WORD: usize = 8;
const OFF_ENQ: usize = 16;
const OFF_LEN: usize = 24;
const HEAD: usize = 28;

impl Block {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(HEAD + len, 8).expect("a task's size fits a layout")
    }

    fn new(id: &[u8], payload: &[u8], word: u64, enq: u64) -> Block {
        let len = id.len() + payload.len();
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size; every byte of the head is
        // written before use, the id and payload fill the rest.
        unsafe {
            let ptr = alloc(layout);
            let Some(ptr) = NonNull::new(ptr) else {
                handle_alloc_error(layout);
            };
            let p = ptr.as_ptr();
            p.cast::<Option<Box<Extra>>>().write(None);
            p.add(OFF_WORD).cast::<u64>().write(word);
            p.add(OFF_ENQ).cast::<u64>().write(enq);
            p.add(OFF_LEN).cast::<u32>().write(len as u32);
            std::ptr::copy_nonoverlapping(id.as_ptr(), p.add(HEAD), id.len());
            std::ptr::copy_nonoverlapping(payload.as_ptr(), p.add(HEAD + id.len()), payload.len());
            Block(ptr)
        }
    }

    fn len(&self) -> usize {
        // SAFETY: written by `new`, aligned to 4.
        unsafe { self.0.as_ptr().add(OFF_LEN).cast::<u32>().read() as usize }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes follow the head, initialized by `new`.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().add(HEAD), self.len()) }
    }

    fn word(&self) -> u64 {
        // SAFETY: written by `new`, aligned to 8.
        unsafe { self.0.as_ptr().add(OFF_WORD).cast::<u64>().read() }
    }

    fn set_word(&mut self, word: u64) {
        // SAFETY: as `word`; `&mut self` is the only access.
        unsafe { self.0.as_ptr().add(OFF_WORD).cast::<u64>().write(word) }
    }

    fn enq(&self) -> u64 {
        // SAFETY: written by `new`, aligned to 8.
        unsafe { self.0.as_ptr().add(OFF_ENQ).cast::<u64>().read() }
    }

    fn extra(&self) -> &Option<Box<Extra>> {
        // SAFETY: an initialized Option<Box<Extra>> at offset 0, aligned to 8.
        unsafe { &*self.0.as_ptr().cast::<Option<Box<Extra>>>() }
    }

    fn extra_mut(&mut self) -> &mut Option<Box<Extra>> {
        // SAFETY: as `extra`; `&mut self` is the only access.
        unsafe { &mut *self.0.as_ptr().cast::<Option<Box<Extra>>>() }
    }

    /// Lets `moved` move the allocation (defragmentation): it returns the
    /// new address of the same bytes, or null if it left them in place.
    fn relocate(&mut self, moved: &mut impl FnMut(*mut u8, usize) -> *mut u8) {
        let new = moved(self.0.as_ptr(), HEAD + self.len());
        if let Some(new) = NonNull::new(new) {
            self.0 = new;
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let layout = Self::layout(self.len());
        // SAFETY: the head's extra pointer is initialized; the allocation
        // was made with this layout (the length never changes).
        unsafe {
            std::ptr::drop_in_place(self.0.as_ptr().cast::<Option<Box<Extra>>>());
            dealloc(self.0.as_ptr(), layout);
        }
    }
}

/// A task: one pointer to its `Block`.
pub struct Task {
    block: Block,
}

impl Task {
    /// A task just enqueued. The caller has checked the limits (id length,
    /// priority, attempts, time), which the packing relies on.
    pub fn new(
        id: &[u8],
        payload: &[u8],
        priority: i64,
        max_attempts: i64,
        max_lost: i64,
        now: i64,
    ) -> Task {
        let word = ((priority + 100) as u64) << PRIO_SHIFT
            | (id.len() as u64) << IDLEN_SHIFT
            | (state_code(State::Ready) as u64) << STATE_SHIFT;
        let enq = (now as u64 & ENQ_MASK) | (max_attempts as u64) << ENQ_BITS;
        let mut task = Task {
            block: Block::new(id, payload, word, enq),
        };
        if max_lost != DEFAULT_MAX_LOST_LEASES {
            task.extra_mut().max_lost = max_lost as u32;
        }
        task
    }

    fn tombstone() -> Task {
        Task {
            block: Block::new(b"", b"", (TOMBSTONE as u64) << STATE_SHIFT, 0),
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.state_code() == TOMBSTONE
    }

    fn id_len(&self) -> usize {
        (self.block.word() >> IDLEN_SHIFT) as usize
    }

    pub fn id(&self) -> &[u8] {
        &self.block.bytes()[..self.id_len()]
    }

    pub fn payload(&self) -> &[u8] {
        &self.block.bytes()[self.id_len()..]
    }

    fn state_code(&self) -> u8 {
        ((self.block.word() >> STATE_SHIFT) & 7) as u8
    }

    pub fn state(&self) -> State {
        state_of(self.state_code())
    }

    pub fn set_state(&mut self, state: State) {
        let word = self.block.word();
        self.block
            .set_word((word & !(7 << STATE_SHIFT)) | (state_code(state) as u64) << STATE_SHIFT);
    }

    pub fn priority(&self) -> i8 {
        (((self.block.word() >> PRIO_SHIFT) & 0xff) as i64 - 100) as i8
    }

    pub fn seq(&self) -> u64 {
        self.block.word() & SEQ_MASK
    }

    pub fn set_seq(&mut self, seq: u64) {
        let word = self.block.word();
        self.block.set_word((word & !SEQ_MASK) | (seq & SEQ_MASK));
    }

    pub fn enqueued_at(&self) -> i64 {
        (self.block.enq() & ENQ_MASK) as i64
    }

    pub fn max_attempts(&self) -> u32 {
        (self.block.enq() >> ENQ_BITS) as u32
    }

    pub fn extra(&self) -> Option<&Extra> {
        self.block.extra().as_deref()
    }

    /// The extra fields, created on first need with the values a fresh
    /// task implies (ready since its enqueue).
    pub fn extra_mut(&mut self) -> &mut Extra {
        let enqueued_at = self.enqueued_at();
        self.block.extra_mut().get_or_insert_with(|| {
            Box::new(Extra {
                ready_at: enqueued_at,
                run_at: NONE,
                started_at: NONE,
                leased_at: NONE,
                finished_at: NONE,
                due: NONE,
                max_lost: DEFAULT_MAX_LOST_LEASES as u32,
                ..Extra::default()
            })
        })
    }

    pub fn failures(&self) -> u32 {
        self.extra().map_or(0, |e| e.failures)
    }

    pub fn lost(&self) -> u32 {
        self.extra().map_or(0, |e| e.lost)
    }

    pub fn max_lost(&self) -> u32 {
        self.extra()
            .map_or(DEFAULT_MAX_LOST_LEASES as u32, |e| e.max_lost)
    }

    pub fn attempts(&self) -> u32 {
        self.extra().map_or(0, |e| e.attempts)
    }

    pub fn token(&self) -> u64 {
        self.extra().map_or(0, |e| e.token)
    }

    pub fn ready_at(&self) -> Option<i64> {
        match self.extra() {
            None => Some(self.enqueued_at()),
            Some(e) => opt(e.ready_at),
        }
    }

    pub fn run_at(&self) -> Option<i64> {
        self.extra().and_then(|e| opt(e.run_at))
    }

    pub fn started_at(&self) -> Option<i64> {
        self.extra().and_then(|e| opt(e.started_at))
    }

    pub fn leased_at(&self) -> Option<i64> {
        self.extra().and_then(|e| opt(e.leased_at))
    }

    pub fn finished_at(&self) -> Option<i64> {
        self.extra().and_then(|e| opt(e.finished_at))
    }

    /// The lease deadline or the kept record's expiry.
    pub fn due(&self) -> i64 {
        self.extra().map_or(NONE, |e| e.due)
    }

    pub fn set_ready_at(&mut self, at: Option<i64>) {
        self.extra_mut().ready_at = raw(at);
    }

    pub fn set_run_at(&mut self, at: i64) {
        self.extra_mut().run_at = at;
    }

    pub fn set_finished_at(&mut self, at: Option<i64>) {
        self.extra_mut().finished_at = raw(at);
    }

    pub fn consumer(&self) -> Option<&[u8]> {
        let e = self.extra()?;
        let workers = e.workers.as_deref()?;
        let at = e.consumer_at as usize;
        Some(&workers[at..at + e.consumer_len as usize])
    }

    pub fn workers(&self) -> Option<&[u8]> {
        self.extra()?.workers.as_deref()
    }

    pub fn error(&self) -> Option<&[u8]> {
        self.extra()?.error.as_deref()
    }

    pub fn result(&self) -> Option<&[u8]> {
        self.extra()?.result.as_deref()
    }

    /// Records a lease by `consumer`, as `TaskRecord::lease` does.
    pub fn lease(&mut self, consumer: &[u8], token: u64, deadline: i64, now: i64) {
        self.set_state(State::Leased);
        let e = self.extra_mut();
        e.attempts += 1;
        e.token = token;
        e.leased_at = now;
        e.due = deadline;
        if e.started_at == NONE {
            e.started_at = now;
        }
        let workers = e.workers.take().map(Vec::from).unwrap_or_default();
        let found = {
            let mut at = 0usize;
            let mut found = None;
            for name in workers.split(|c| *c == b',') {
                if !workers.is_empty() && name == consumer {
                    found = Some(at);
                    break;
                }
                at += name.len() + 1;
            }
            found
        };
        let mut workers = workers;
        let at = match found {
            Some(at) => at,
            None => {
                if !workers.is_empty() {
                    workers.push(b',');
                }
                let at = workers.len();
                workers.extend_from_slice(consumer);
                at
            }
        };
        e.consumer_at = at as u32;
        e.consumer_len = consumer.len() as u32;
        e.workers = Some(workers.into_boxed_slice());
    }

    /// Hands each allocation of the task to `moved` (its address and size),
    /// which may move it (defragmentation) and returns the new address, or
    /// null if it left it in place. Contents never change.
    pub fn relocate(&mut self, moved: &mut impl FnMut(*mut u8, usize) -> *mut u8) {
        self.block.relocate(moved);
        if let Some(e) = self.block.extra_mut().as_deref_mut() {
            for text in [&mut e.workers, &mut e.error, &mut e.result]
                .into_iter()
                .flatten()
            {
                let len = text.len();
                if len == 0 {
                    continue;
                }
                let new = moved(text.as_mut_ptr(), len);
                if !new.is_null() {
                    // SAFETY: `moved` copied the same `len` bytes to `new`
                    // (an allocation of the same allocator) and freed the
                    // old one, which must therefore not be freed again.
                    let fresh: Box<[u8]> =
                        unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(new, len)) };
                    std::mem::forget(std::mem::replace(text, fresh));
                }
            }
        }
    }

    /// Bytes this task holds on the heap (its entry in the slab aside).
    pub fn heap_bytes(&self) -> usize {
        HEAD + self.block.len() + self.extra().map_or(0, Extra::heap_bytes)
    }

    /// The task's full state, as the persistence encoding and a move to the
    /// keyspace layout see it.
    pub fn image(&self) -> TaskImage {
        let e = self.extra();
        let rec = TaskRecord {
            state: self.state(),
            priority: self.priority() as i64,
            max_attempts: self.max_attempts() as i64,
            attempts: self.attempts() as i64,
            seq: self.seq() as i64,
            token: self.token() as i64,
            enqueued_at: self.enqueued_at(),
            run_at: self.run_at(),
            ready_at: self.ready_at(),
            started_at: self.started_at(),
            leased_at: self.leased_at(),
            finished_at: self.finished_at(),
            consumer: self.consumer().map(<[u8]>::to_vec),
            workers: self.workers().map(<[u8]>::to_vec),
            failures: self.failures() as i64,
            lost: self.lost() as i64,
            max_lost: self.max_lost() as i64,
        };
        TaskImage {
            id: self.id().to_vec(),
            payload: self.payload().to_vec(),
            rec,
            due: e.and_then(|e| opt(e.due)),
            error: self.error().map(<[u8]>::to_vec),
            result: self.result().map(<[u8]>::to_vec),
        }
    }

    /// A task from its full state; the caller validated it
    /// (`TaskImage::check`).
    pub fn from_image(image: &TaskImage) -> Task {
        let rec = &image.rec;
        let mut task = Task::new(
            &image.id,
            &image.payload,
            rec.priority,
            rec.max_attempts,
            rec.max_lost,
            rec.enqueued_at,
        );
        task.set_state(rec.state);
        task.set_seq(rec.seq as u64);
        let plain = rec.attempts == 0
            && rec.failures == 0
            && rec.lost == 0
            && rec.max_lost == DEFAULT_MAX_LOST_LEASES
            && rec.token == 0
            && rec.ready_at == Some(rec.enqueued_at)
            && rec.run_at.is_none()
            && rec.started_at.is_none()
            && rec.leased_at.is_none()
            && rec.finished_at.is_none()
            && rec.workers.is_none()
            && image.due.is_none()
            && image.error.is_none()
            && image.result.is_none();
        if plain {
            return task;
        }
        let consumer = rec.consumer.as_deref().unwrap_or_default();
        let workers = rec.workers.as_deref();
        let consumer_at = workers
            .and_then(|w| find_name(w, consumer))
            .unwrap_or_default();
        *task.block.extra_mut() = Some(Box::new(Extra {
            token: rec.token as u64,
            attempts: rec.attempts as u32,
            failures: rec.failures as u32,
            lost: rec.lost as u32,
            max_lost: rec.max_lost as u32,
            consumer_at: consumer_at as u32,
            consumer_len: if rec.consumer.is_some() {
                consumer.len() as u32
            } else {
                0
            },
            ready_at: raw(rec.ready_at),
            run_at: raw(rec.run_at),
            started_at: raw(rec.started_at),
            leased_at: raw(rec.leased_at),
            finished_at: raw(rec.finished_at),
            due: raw(image.due),
            workers: workers.map(Box::from),
            error: image.error.as_deref().map(Box::from),
            result: image.result.as_deref().map(Box::from),
        }));
        task
    }
}

/// Where `name` starts in a comma-separated list.
fn find_name(list: &[u8], name: &[u8]) -> Option<usize> {
    let mut at = 0;
    for item in list.split(|c| *c == b',') {
        if item == name {
            return Some(at);
        }
        at += item.len() + 1;
    }
    None
}

/// A task's whole state as plain values: what is saved, loaded, copied
/// and moved between layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskImage {
    pub id: Vec<u8>,
    pub payload: Vec<u8>,
    pub rec: TaskRecord,
    /// The lease deadline (leased) or the kept record's expiry (done).
    pub due: Option<i64>,
    pub error: Option<Vec<u8>>,
    pub result: Option<Vec<u8>>,
}

/// Slab entries per chunk: the slab grows a chunk at a time, never
/// reallocating (and copying) what it holds.
const CHUNK: usize = 1024;

/// Tasks numbered by slot. Freed slots are reused, most recent first.
#[derive(Default)]
pub struct Slab {
    chunks: Vec<Box<[Option<Task>]>>,
    free: Vec<u32>,
    /// Slots in use, tombstones included.
    used: usize,
}

impl Slab {
    pub fn get(&self, slot: u32) -> &Task {
        let slot = slot as usize;
        self.chunks[slot / CHUNK][slot % CHUNK]
            .as_ref()
            .expect("a live slot")
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut Task {
        let slot = slot as usize;
        self.chunks[slot / CHUNK][slot % CHUNK]
            .as_mut()
            .expect("a live slot")
    }

    /// The id of the task in `slot`.
    pub fn id(&self, slot: u32) -> &[u8] {
        self.get(slot).id()
    }

    pub fn insert(&mut self, task: Task) -> u32 {
        self.used += 1;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.chunks.len() * CHUNK;
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.resize_with(CHUNK, || None);
                self.chunks.push(chunk.into_boxed_slice());
                self.free
                    .extend((slot as u32 + 1..(slot + CHUNK) as u32).rev());
                slot as u32
            }
        };
        let s = slot as usize;
        self.chunks[s / CHUNK][s % CHUNK] = Some(task);
        slot
    }

    /// Frees a slot and returns its task.
    pub fn remove(&mut self, slot: u32) -> Task {
        let s = slot as usize;
        let task = self.chunks[s / CHUNK][s % CHUNK]
            .take()
            .expect("a live slot");
        self.used -= 1;
        if self.used == 0 {
            // Drained: give the memory back rather than keep a peak's slab.
            self.chunks = Vec::new();
            self.free = Vec::new();
        } else {
            self.free.push(slot);
        }
        task
    }

    /// Replaces a task with a tombstone; returns the task.
    pub fn bury(&mut self, slot: u32) -> Task {
        std::mem::replace(self.get_mut(slot), Task::tombstone())
    }

    pub fn used(&self) -> usize {
        self.used
    }

    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<Option<Task>>()
            + self.free.capacity() * 4
            + self.chunks.capacity() * 16
    }

    /// Slots in the slab, used or free.
    pub fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// The task in `slot`, if there is one.
    pub fn try_get_mut(&mut self, slot: u32) -> Option<&mut Task> {
        let slot = slot as usize;
        self.chunks
            .get_mut(slot / CHUNK)
            .and_then(|c| c[slot % CHUNK].as_mut())
    }

    /// Every live task with its slot (tombstones left out).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Task)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk.iter().enumerate().filter_map(move |(i, t)| {
                t.as_ref()
                    .filter(|t| !t.is_tombstone())
                    .map(|t| ((c * CHUNK + i) as u32, t))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_task_is_small() {
        assert_eq!(std::mem::size_of::<Task>(), 8);
        assert_eq!(std::mem::size_of::<Option<Task>>(), 8);
        // A uuid id and a 96-byte payload fit the allocator's 160-byte class.
        let t = Task::new(&[b'u'; 36], &[b'p'; 96], 0, 3, DEFAULT_MAX_LOST_LEASES, 0);
        assert_eq!(t.heap_bytes(), 160);
    }

    #[test]
    fn packed_fields_round_trip_at_their_limits() {
        let id = vec![b'x'; 256];
        let mut t = Task::new(&id, b"payload", -100, 10_000, 10_000, MAX_ENQUEUED_AT);
        t.set_seq(MAX_SEQ);
        t.set_state(State::Dead);
        assert_eq!(t.id(), &id[..]);
        assert_eq!(t.payload(), b"payload");
        assert_eq!(t.priority(), -100);
        assert_eq!(t.max_attempts(), 10_000);
        assert_eq!(t.enqueued_at(), MAX_ENQUEUED_AT);
        assert_eq!(t.seq(), MAX_SEQ);
        assert_eq!(t.state(), State::Dead);
        let t = Task::new(b"a", b"", 100, 1, DEFAULT_MAX_LOST_LEASES, 0);
        assert_eq!(
            (t.priority(), t.state(), t.ready_at()),
            (100, State::Ready, Some(0))
        );
    }

    #[test]
    fn leases_track_consumer_and_workers_like_the_record() {
        let mut t = Task::new(b"t", b"{}", 0, 3, DEFAULT_MAX_LOST_LEASES, 1_000);
        let mut rec = TaskRecord::new(0, 3, DEFAULT_MAX_LOST_LEASES, 1_000);
        rec.ready_at = Some(1_000);
        for (i, who) in [&b"w1"[..], b"w2", b"w1", b"w10"].iter().enumerate() {
            let now = 2_000 + i as i64;
            t.lease(who, 7 + i as u64, now + 50, now);
            rec.lease(who, 7 + i as i64, now);
            assert_eq!(t.consumer(), Some(*who));
        }
        assert_eq!(t.image().rec, rec);
        assert_eq!(t.workers(), Some(&b"w1,w2,w10"[..]));
        let back = Task::from_image(&t.image());
        assert_eq!(back.image(), t.image());
        assert_eq!(back.due(), 2_053);
    }
}
