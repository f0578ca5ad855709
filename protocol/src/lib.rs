//! The numbers of the vtasks protocol (`docs/PROTOCOL.md`, "Limits"), in
//! one place. The module checks its arguments with them, the client and the
//! Python package validate before sending, and the scripts engine's Lua
//! library gets them substituted into its template (`__MAX_PRIORITY__`
//! becomes `100`), so the two engines cannot drift apart: changing a value
//! here changes it everywhere, and `LIMITS` lists every one by name for the
//! languages that are not Rust (the Lua template, `vtasks._native.LIMITS`).

macro_rules! limits {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty = $value:expr; )*) => {
        $( $(#[$doc])* pub const $name: $ty = $value; )*

        /// Every constant of this crate by name, as a signed integer: what
        /// the Lua template's `__NAME__` placeholders and Python's
        /// `vtasks._native.LIMITS` are filled from.
        pub const LIMITS: &[(&str, i64)] = &[ $( (stringify!($name), $name as i64), )* ];
    };
}

limits! {
    // What commands accept.

    /// Longest queue name inside the braces.
    MAX_QUEUE_NAME: usize = 128;
    /// Longest task id, in bytes.
    MAX_ID_LEN: usize = 256;
    /// Longest consumer name.
    MAX_CONSUMER_LEN: usize = 128;
    /// Largest payload or result, in bytes (16 MiB).
    MAX_PAYLOAD: usize = 16 * 1024 * 1024;
    /// Largest error text kept with a failed task (64 KiB); longer texts are
    /// truncated to this many bytes.
    MAX_ERROR_TEXT: usize = 64 * 1024;
    /// Most tasks one ENQUEUE may carry.
    MAX_ENQUEUE_BATCH: usize = 10_000;
    /// Most tasks one FETCHN may hand out.
    MAX_FETCH_COUNT: i64 = 1_000;
    /// Most queues one FETCHN may name.
    MAX_QUEUES: i64 = 64;
    /// Longest lease, block, delay and result TTL (one year), in ms.
    MAX_DURATION_MS: i64 = 365 * 24 * 3600 * 1000;
    /// Latest RUNAT accepted: 2^48 ms after the epoch (year 10889).
    MAX_TIMESTAMP_MS: i64 = 1 << 48;
    /// Highest max-attempts value.
    MAX_ATTEMPTS: i64 = 10_000;
    /// Highest lost-lease budget (LOSTLEASES).
    MAX_LOST_LEASES: i64 = 10_000;
    /// Lowest priority, as in Django's Tasks framework.
    MIN_PRIORITY: i64 = -100;
    /// Highest priority (served first), as in Django's Tasks framework.
    MAX_PRIORITY: i64 = 100;
    /// Most schedules one queue holds.
    MAX_SCHEDULES: usize = 1_000;
    /// Longest schedule name.
    MAX_SCHEDULE_NAME: usize = 128;
    /// Longest text form of a schedule's timing (`every 30`,
    /// `cron Europe/Berlin 0 3 * * *`), in bytes.
    MAX_SCHEDULE_SPEC: usize = 256;
    /// Largest payload of a schedule's tasks, in bytes (64 KiB): a schedule
    /// names a task and its arguments, it does not carry data.
    MAX_SCHEDULE_PAYLOAD: usize = 64 * 1024;

    // How much one call does.

    /// Most entries one maintenance pass touches per kind and queue, so a
    /// single call never stalls the server; the rest waits for the next.
    MAINTENANCE_BATCH: usize = 1_000;
    /// Most entries one ALL-selection (requeue or purge of dead letters)
    /// touches; callers repeat until nothing is left.
    BULK_BATCH: usize = 10_000;
    /// Longest a scripts-engine consumer sleeps on its wake list before it
    /// asks again, in ms.
    MAX_SLEEP_MS: i64 = 60_000;
    /// Most ids of vanished tasks (no record: evicted, deleted by hand) one
    /// fetch drops from the ready set while it looks for tasks to hand
    /// out; the next fetch goes on.
    VANISHED_PER_FETCH: i64 = 10_000;
    /// Least time between two warnings an engine writes to the server log
    /// (vanished tasks), in ms; the ones in between are counted in the next.
    WARN_EVERY_MS: i64 = 60_000;
    /// How late a schedule's occurrence may be found due and still run
    /// under `CATCHUP NONE`, in ms; later, it counts as missed and is
    /// skipped (`CATCHUP LAST` runs it however late).
    SCHEDULE_GRACE_MS: i64 = 60_000;
    /// Most pending schedules (their next occurrence not yet computed)
    /// one scripts-engine FETCHN reports per queue.
    PENDING_SCHEDULES_PER_FETCH: i64 = 16;

    // Defaults when a command leaves an option out.

    /// Lease of a fetched task, in ms.
    DEFAULT_LEASE_MS: i64 = 30_000;
    /// How long a finished task's result is kept, in ms (one day).
    DEFAULT_KEEP_MS: i64 = 24 * 3600 * 1000;
    /// Attempts of a task enqueued without ATTEMPTS; also the default of the
    /// Python package's `@vtasks.task`.
    DEFAULT_MAX_ATTEMPTS: i64 = 3;
    /// Leases a task may lose (its worker vanished: a crash, a kill, a lost
    /// connection) before it is dead-lettered, when enqueued without
    /// LOSTLEASES; also the default of `@vtasks.task` and of Django's
    /// `MAX_LOST_LEASES`.
    DEFAULT_MAX_LOST_LEASES: i64 = 3;
    /// What is left of a lease once every connection holding it closed (the
    /// module cuts it), in ms: long enough for a worker to reconnect and
    /// renew, short enough that a dead worker's tasks come back in seconds.
    LEASE_GRACE_MS: i64 = 2_000;

    // Defaults of the workers and the clients above the commands.

    /// Attempts of a Django task whose backend sets no `MAX_ATTEMPTS`: a task
    /// that raises is FAILED at once, as with Django's own backends
    /// (`docs/DECISIONS.md`, "Django's default of one attempt").
    DJANGO_MAX_ATTEMPTS: i64 = 1;
    /// Longest lease a worker takes on the scripts engine, in ms, which
    /// cannot see a dead worker's connections close (`docs/DECISIONS.md`).
    SCRIPTS_MAX_LEASE_MS: i64 = 5_000;
    /// A worker's first retry delay, in ms; doubled per failed attempt.
    DEFAULT_RETRY_BACKOFF_MS: i64 = 1_000;
    /// Longest retry delay before jitter, in ms.
    DEFAULT_MAX_BACKOFF_MS: i64 = 300_000;
    /// Payloads whose JSON text is longer are zstd-compressed, in bytes.
    COMPRESS_ABOVE: usize = 16 * 1024;
    /// Readers refuse to inflate a compressed payload beyond this, in bytes.
    MAX_DECODED: usize = 64 * 1024 * 1024;
}

/// Suffixes of a queue's keys after its `{name}`, in the order the scripts
/// engine's library takes them: the queue hash itself, then the ready,
/// delayed, leased, dead and done sorted sets, the wake-up list and the
/// sleepers' set, the schedules' hash and their due times' sorted set.
pub const QUEUE_KEY_SUFFIXES: [&str; 10] = [
    "",
    ":ready",
    ":delayed",
    ":leased",
    ":dead",
    ":done",
    ":wake",
    ":waiting",
    ":schedules",
    ":schedules:due",
];

/// What the id of a schedule's task starts with: the whole id is
/// `schedule:<name>:<occurrence, unix ms>`, so each occurrence is one task
/// however many servers, workers and producers meet it.
pub const SCHEDULE_ID_PREFIX: &str = "schedule:";

/// What follows `{name}` in the key of one task's hash: `{name}:t:<id>`.
pub const TASK_KEY_INFIX: &str = ":t:";

// The defaults lie within the limits; checked when the crate compiles.
const _: () = {
    assert!(1 <= DEFAULT_MAX_ATTEMPTS && DEFAULT_MAX_ATTEMPTS <= MAX_ATTEMPTS);
    assert!(1 <= DJANGO_MAX_ATTEMPTS && DJANGO_MAX_ATTEMPTS <= MAX_ATTEMPTS);
    assert!(1 <= DEFAULT_MAX_LOST_LEASES && DEFAULT_MAX_LOST_LEASES <= MAX_LOST_LEASES);
    assert!(0 < LEASE_GRACE_MS && LEASE_GRACE_MS < DEFAULT_LEASE_MS);
    assert!(1 <= DEFAULT_LEASE_MS && DEFAULT_LEASE_MS <= MAX_DURATION_MS);
    assert!(0 <= DEFAULT_KEEP_MS && DEFAULT_KEEP_MS <= MAX_DURATION_MS);
    assert!(DEFAULT_RETRY_BACKOFF_MS <= DEFAULT_MAX_BACKOFF_MS);
    assert!(COMPRESS_ABOVE < MAX_PAYLOAD && MAX_PAYLOAD < MAX_DECODED);
    assert!(MIN_PRIORITY < 0 && 0 < MAX_PRIORITY);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_is_listed_once_and_fits_in_i64() {
        let mut names: Vec<&str> = LIMITS.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), LIMITS.len(), "a name listed twice");
        let value = |name: &str| LIMITS.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(value("MAX_PAYLOAD"), 16 * 1024 * 1024);
        assert_eq!(value("MAX_TIMESTAMP_MS"), 1 << 48);
        assert_eq!(value("MIN_PRIORITY"), -100);
    }
}
