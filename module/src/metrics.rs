//! Counts for `INFO vtasks`: queues held as the module's data type, their
//! tasks and the bytes they hold. Updated when a queue is created, loaded,
//! copied or freed, and by the command layer after each change; a queue
//! may be freed on a background thread, hence atomics.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::core::native::TaskQueue;

static QUEUES: AtomicI64 = AtomicI64::new(0);
static TASKS: AtomicI64 = AtomicI64::new(0);
static BYTES: AtomicI64 = AtomicI64::new(0);

/// What one queue contributes: its tasks and bytes.
#[derive(Clone, Copy, Default)]
pub struct Footprint {
    tasks: i64,
    bytes: i64,
}

impl Footprint {
    pub fn of(queue: &TaskQueue) -> Footprint {
        Footprint {
            tasks: queue.len() as i64,
            bytes: queue.heap_bytes() as i64,
        }
    }
}

pub fn queue_created(queue: &TaskQueue) {
    QUEUES.fetch_add(1, Ordering::Relaxed);
    changed(Footprint::default(), Footprint::of(queue));
}

pub fn queue_freed(queue: &TaskQueue) {
    QUEUES.fetch_sub(1, Ordering::Relaxed);
    changed(Footprint::of(queue), Footprint::default());
}

/// A queue went from `before` to `after`.
pub fn changed(before: Footprint, after: Footprint) {
    TASKS.fetch_add(after.tasks - before.tasks, Ordering::Relaxed);
    BYTES.fetch_add(after.bytes - before.bytes, Ordering::Relaxed);
}

/// `(queues, tasks, bytes)`.
pub fn totals() -> (i64, i64, i64) {
    (
        QUEUES.load(Ordering::Relaxed),
        TASKS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}
