//! The queue's serialized form: what RDB files, `DUMP` payloads, the AOF
//! rewrite and `DEBUG DIGEST-VALUE` see.
//!
//! A queue is written as a sequence of chunks of about `CHUNK_BYTES`, each
//! holding whole tasks, so that neither saving nor loading needs the whole
//! queue as one buffer and an AOF rewrite can emit one command per chunk.
//! The first chunk carries the queue-wide values. Every chunk starts with
//! the encoding version: a reader refuses a version newer than it knows.
//!
//! Integers are LEB128 varints (signed ones zigzag-encoded); byte strings
//! are a length and the bytes; times after the enqueue time are stored as
//! offsets from it. Everything read is checked (lengths against the
//! protocol's limits, states, ranges) before it is used.

use super::super::error::{VtError, VtResult};
use super::super::keys::{
    DEFAULT_MAX_LOST_LEASES, MAX_CONSUMER_LEN, MAX_ERROR_TEXT, MAX_ID_LEN, MAX_PAYLOAD,
};
use super::super::keys::{
    MAX_ATTEMPTS, MAX_PRIORITY, MAX_SCHEDULES, MAX_SCHEDULE_NAME, MAX_SCHEDULE_PAYLOAD,
    MAX_SCHEDULE_SPEC, MIN_PRIORITY,
};
use super::super::periodic::{CatchUp, Definition, Next, Periodic};
use super::super::record::{State, TaskRecord};
use super::task::TaskImage;
use super::{Counters, Meta, TaskQueue};

/// The version this module writes, and the newest it reads. Version 2
/// added the head's task count, version 3 the separate budgets (each
/// task's failed attempts, lost leases and lost-lease budget; the
/// `leases_cut` and `dead_lost` counters), version 4 the queue's
/// schedules (in the head). Versions 1 to 3 are still read, their tasks'
/// budgets as a version-1 task record implies them
/// (`TaskRecord::decode`), with no schedules.
pub const ENCODING_VERSION: u8 = 4;

/// Counters a head holds before version 3.
const COUNTERS_BEFORE_V3: usize = 11;

/// A chunk is closed once it holds this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The most tasks a head's count makes a reader reserve room for at once.
const MAX_RESERVED_TASKS: u64 = 1 << 24;

const KIND_HEAD: u8 = 0;
const KIND_TASKS: u8 = 1;

fn corrupt(what: &str) -> VtError {
    VtError::Internal(format!("corrupt queue encoding: {what}"))
}

struct Writer(Vec<u8>);

impl Writer {
    fn u(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    fn i(&mut self, n: i64) {
        self.u(((n << 1) ^ (n >> 63)) as u64);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u(&mut self) -> VtResult<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .data
                .get(self.pos)
                .ok_or_else(|| corrupt("truncated"))?;
            self.pos += 1;
            n |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(corrupt("an integer runs over 64 bits"))
    }

    fn i(&mut self) -> VtResult<i64> {
        let n = self.u()?;
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn byte(&mut self) -> VtResult<u8> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| corrupt("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, max: usize, what: &str) -> VtResult<&'a [u8]> {
        let len = self.u()?;
        if len > max as u64 {
            return Err(corrupt(&format!("{what} longer than its limit")));
        }
        let end = self.pos + len as usize;
        let b = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| corrupt("truncated"))?;
        self.pos = end;
        Ok(b)
    }

    fn done(&self) -> bool {
        self.pos == self.data.len()
    }
}

fn state_code(state: State) -> u8 {
    match state {
        State::Delayed => 0,
        State::Ready => 1,
        State::Leased => 2,
        State::Done => 3,
        State::Dead => 4,
    }
}

fn write_task(w: &mut Writer, t: &TaskImage, version: u8) {
    let rec = &t.rec;
    w.bytes(&t.id);
    w.bytes(&t.payload);
    w.0.push(state_code(rec.state));
    w.i(rec.priority);
    w.u(rec.max_attempts as u64);
    w.u(rec.attempts as u64);
    if version >= 3 {
        w.u(rec.failures as u64);
        w.u(rec.lost as u64);
        w.u(rec.max_lost as u64);
    }
    w.u(rec.seq as u64);
    w.u(rec.token as u64);
    w.u(rec.enqueued_at as u64);
    let times = [
        rec.run_at,
        rec.ready_at,
        rec.started_at,
        rec.leased_at,
        rec.finished_at,
        t.due,
    ];
    let texts = [&rec.consumer, &rec.workers, &t.error, &t.result];
    let mut present = 0u16;
    for (i, t) in times.iter().enumerate() {
        present |= (t.is_some() as u16) << i;
    }
    for (i, t) in texts.iter().enumerate() {
        present |= (t.is_some() as u16) << (6 + i);
    }
    w.u(present as u64);
    for t in times.into_iter().flatten() {
        w.i(t - rec.enqueued_at);
    }
    for t in texts.into_iter().flatten() {
        w.bytes(t);
    }
}

fn read_task(r: &mut Reader, version: u8) -> VtResult<TaskImage> {
    let id = r.bytes(MAX_ID_LEN, "task id")?.to_vec();
    let payload = r.bytes(MAX_PAYLOAD, "payload")?.to_vec();
    let state = match r.byte()? {
        0 => State::Delayed,
        1 => State::Ready,
        2 => State::Leased,
        3 => State::Done,
        4 => State::Dead,
        _ => return Err(corrupt("unknown task state")),
    };
    let small = |n: u64| -> VtResult<i64> {
        i64::try_from(n).map_err(|_| corrupt("a number out of range"))
    };
    let priority = r.i()?;
    let max_attempts = small(r.u()?)?;
    let attempts = small(r.u()?)?;
    let (failures, lost, max_lost) = if version >= 3 {
        (small(r.u()?)?, small(r.u()?)?, small(r.u()?)?)
    } else {
        let running = (state == State::Leased) as i64;
        ((attempts - running).max(0), 0, DEFAULT_MAX_LOST_LEASES)
    };
    let seq = small(r.u()?)?;
    let token = small(r.u()?)?;
    let enqueued_at = small(r.u()?)?;
    let present = r.u()?;
    if present >> 10 != 0 {
        return Err(corrupt("unknown fields"));
    }
    let mut times = [None; 6];
    for (i, t) in times.iter_mut().enumerate() {
        if present & (1 << i) != 0 {
            let offset = r.i()?;
            *t = Some(
                enqueued_at
                    .checked_add(offset)
                    .ok_or_else(|| corrupt("a time out of range"))?,
            );
        }
    }
    let limits = [
        (MAX_CONSUMER_LEN, "consumer"),
        (MAX_PAYLOAD, "workers"),
        (MAX_ERROR_TEXT, "error"),
        (MAX_PAYLOAD, "result"),
    ];
    let mut texts: [Option<Vec<u8>>; 4] = Default::default();
    for (i, (text, (max, what))) in texts.iter_mut().zip(limits).enumerate() {
        if present & (1 << (6 + i)) != 0 {
            *text = Some(r.bytes(max, what)?.to_vec());
        }
    }
    let [consumer, workers, error, result] = texts;
    let [run_at, ready_at, started_at, leased_at, finished_at, due] = times;
    let image = TaskImage {
        id,
        payload,
        rec: TaskRecord {
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
        },
        due,
        error,
        result,
    };
    image.check()?;
    Ok(image)
}

fn write_schedules(w: &mut Writer, queue: &TaskQueue) {
    let schedules = queue.schedules();
    w.u(schedules.len() as u64);
    for (name, p) in schedules.iter() {
        w.bytes(name);
        w.bytes(&p.def.spec);
        w.bytes(&p.def.payload);
        w.i(p.def.priority);
        w.u(p.def.max_attempts as u64);
        let flags = (p.def.catch_up == CatchUp::None) as u8 | (p.def.enabled as u8) << 1;
        w.0.push(flags);
        match p.next {
            Next::At(at) => {
                w.0.push(0);
                w.i(at);
            }
            Next::Pending { after } => {
                w.0.push(1);
                w.i(after);
            }
            Next::Never => w.0.push(2),
        }
        match p.last {
            Some(last) => {
                w.0.push(1);
                w.i(last);
            }
            None => w.0.push(0),
        }
        w.u(p.runs);
        w.u(p.skipped);
    }
}

fn read_schedules(r: &mut Reader, queue: &mut TaskQueue) -> VtResult<()> {
    let count = r.u()?;
    if count > MAX_SCHEDULES as u64 {
        return Err(corrupt("more schedules than a queue holds"));
    }
    for _ in 0..count {
        let name = r.bytes(MAX_SCHEDULE_NAME, "schedule name")?.to_vec();
        let spec = r.bytes(MAX_SCHEDULE_SPEC, "schedule timing")?.to_vec();
        let payload = r.bytes(MAX_SCHEDULE_PAYLOAD, "schedule payload")?.to_vec();
        let priority = r.i()?;
        let max_attempts = r.u()?;
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&priority)
            || !(1..=MAX_ATTEMPTS as u64).contains(&max_attempts)
            || name.is_empty()
            || spec.is_empty()
        {
            return Err(corrupt("a schedule out of range"));
        }
        let flags = r.byte()?;
        if flags >> 2 != 0 {
            return Err(corrupt("unknown schedule flags"));
        }
        let next = match r.byte()? {
            0 => Next::At(r.i()?),
            1 => Next::Pending { after: r.i()? },
            2 => Next::Never,
            _ => return Err(corrupt("unknown schedule state")),
        };
        let last = match r.byte()? {
            0 => None,
            1 => Some(r.i()?),
            _ => return Err(corrupt("schedule's last run")),
        };
        let (runs, skipped) = (r.u()?, r.u()?);
        if queue.schedules().get(&name).is_some() {
            return Err(corrupt("a schedule appears twice"));
        }
        let def = Definition {
            spec,
            payload,
            priority,
            max_attempts: max_attempts as i64,
            catch_up: if flags & 1 != 0 {
                CatchUp::None
            } else {
                CatchUp::Last
            },
            enabled: flags & 2 != 0,
        };
        queue.restore_schedule(
            name,
            Periodic {
                def,
                next,
                last,
                runs,
                skipped,
            },
        );
    }
    Ok(())
}

/// Writes `queue` as chunks of about `chunk_bytes`, handing each to `emit`.
/// The first chunk holds the queue-wide values, so there is always one.
pub fn encode(queue: &TaskQueue, chunk_bytes: usize, emit: impl FnMut(&[u8])) {
    encode_as(queue, ENCODING_VERSION, chunk_bytes, emit)
}

/// `encode` in an earlier version of the encoding (what is left out is
/// lost): for tests of the reader.
pub fn encode_as(queue: &TaskQueue, version: u8, chunk_bytes: usize, mut emit: impl FnMut(&[u8])) {
    let meta = queue.meta();
    let mut w = Writer(Vec::with_capacity(chunk_bytes.min(1 << 16)));
    w.0.extend_from_slice(&[version, KIND_HEAD]);
    w.u(meta.seq);
    w.u(meta.token);
    w.0.push(meta.paused as u8);
    let counters = meta.counters.to_array();
    let kept = if version >= 3 {
        counters.len()
    } else {
        COUNTERS_BEFORE_V3
    };
    for c in &counters[..kept] {
        w.u(*c);
    }
    if version >= 2 {
        // How many tasks follow in all the chunks, so a reader can size
        // the queue's index once instead of growing it (and rehashing
        // every id) as the tasks arrive.
        w.u(queue.len() as u64);
    }
    if version >= 4 {
        write_schedules(&mut w, queue);
    }
    let mut body = Writer(Vec::new());
    let mut count = 0u64;
    let flush =
        |w: &mut Writer, body: &mut Writer, count: &mut u64, emit: &mut dyn FnMut(&[u8])| {
            w.u(*count);
            w.0.extend_from_slice(&body.0);
            emit(&w.0);
            w.0.clear();
            w.0.extend_from_slice(&[version, KIND_TASKS]);
            body.0.clear();
            *count = 0;
        };
    for image in queue.images() {
        write_task(&mut body, &image, version);
        count += 1;
        if body.0.len() >= chunk_bytes {
            flush(&mut w, &mut body, &mut count, &mut emit);
        }
    }
    if count > 0 || w.0[1] == KIND_HEAD {
        flush(&mut w, &mut body, &mut count, &mut emit);
    }
}

fn open(chunk: &[u8]) -> VtResult<(Reader<'_>, u8, u8)> {
    let mut r = Reader {
        data: chunk,
        pos: 0,
    };
    let version = r.byte()?;
    if version > ENCODING_VERSION {
        return Err(VtError::Internal(format!(
            "queue encoding version {version} is newer than this module's ({ENCODING_VERSION}): \
             load it with the module version that wrote it"
        )));
    }
    if version == 0 {
        return Err(corrupt("version 0"));
    }
    let kind = r.byte()?;
    Ok((r, version, kind))
}

fn read_tasks(queue: &mut TaskQueue, mut r: Reader, version: u8) -> VtResult<()> {
    let count = r.u()?;
    for _ in 0..count {
        queue.restore(&read_task(&mut r, version)?)?;
    }
    if !r.done() {
        return Err(corrupt("bytes after the last task"));
    }
    Ok(())
}

/// Whether a chunk is a queue's first (it carries the queue-wide values).
pub fn is_head(chunk: &[u8]) -> bool {
    chunk.get(1) == Some(&KIND_HEAD)
}

/// A queue from its first chunk.
pub fn decode_head(chunk: &[u8]) -> VtResult<TaskQueue> {
    let (mut r, version, kind) = open(chunk)?;
    if kind != KIND_HEAD {
        return Err(corrupt("the first chunk is not a head"));
    }
    let seq = r.u()?;
    let token = r.u()?;
    let paused = match r.byte()? {
        0 => false,
        1 => true,
        _ => return Err(corrupt("pause flag")),
    };
    let mut counters = [0u64; 13];
    let kept = if version >= 3 {
        counters.len()
    } else {
        COUNTERS_BEFORE_V3
    };
    for c in counters.iter_mut().take(kept) {
        *c = r.u()?;
    }
    let total = if version >= 2 { r.u()? } else { 0 };
    let mut queue = TaskQueue::with_meta(Meta {
        seq,
        token,
        paused,
        counters: Counters::from_array(counters),
    });
    if version >= 4 {
        read_schedules(&mut r, &mut queue)?;
    }
    // A claim is not trusted beyond what a real queue could hold in memory.
    queue.reserve(total.min(MAX_RESERVED_TASKS) as usize);
    read_tasks(&mut queue, r, version)?;
    Ok(queue)
}

/// Adds the tasks of a later chunk to a queue read so far.
pub fn decode_more(queue: &mut TaskQueue, chunk: &[u8]) -> VtResult<()> {
    let (r, version, kind) = open(chunk)?;
    if kind != KIND_TASKS {
        return Err(corrupt("a head after the first chunk"));
    }
    read_tasks(queue, r, version)
}

/// Reads a queue chunk by chunk, in the order `encode` wrote them.
#[derive(Default)]
pub struct Decoder {
    queue: Option<TaskQueue>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn feed(&mut self, chunk: &[u8]) -> VtResult<()> {
        match &mut self.queue {
            None => self.queue = Some(decode_head(chunk)?),
            Some(queue) => decode_more(queue, chunk)?,
        }
        Ok(())
    }

    /// The queue read; an error if no chunk was read.
    pub fn finish(self) -> VtResult<TaskQueue> {
        self.queue.ok_or_else(|| corrupt("no chunks"))
    }
}

/// The whole queue as bytes (tests, digests of small queues).
pub fn to_bytes(queue: &TaskQueue) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    encode(queue, CHUNK_BYTES, |c| chunks.push(c.to_vec()));
    chunks
}
