//! The worker core: what every vtasks worker does around running tasks.
//!
//! - asks for as many tasks as it has free slots, blocking server-side when
//!   the queues are empty, and sends the acknowledgements and failures
//!   gathered since the last fetch in the same command (one round trip per
//!   batch);
//! - renews the leases of running tasks, one EXTEND per queue per interval,
//!   so leases can be short and a dead worker's tasks come back quickly;
//! - a task that finishes while a fetch is in flight (which may wait
//!   server-side for up to `block`) is settled at once on the command
//!   connection, never behind the fetch; one that finishes between fetches
//!   goes with the next;
//! - a fetch waiting on empty queues is ended early when a queue held back
//!   at its per-queue limit may be served again, or when stopping;
//! - on shutdown, stops fetching, lets running tasks finish within a grace
//!   period and gives back the ones never started without counting an
//!   attempt;
//! - on connection loss, keeps its settlements and running set and carries
//!   on once the server is back.
//!
//! It uses at most two connections: the client's shared one and one for the
//! blocking fetch. Every runtime runs the same loop, `fetch_loop`, which
//! hands each batch to a callback: `run` with an async handler per task,
//! the Python worker with its event loop and task threads; both report each
//! task's outcome with `complete`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::client::{BlockingFetcher, Client};
use crate::cluster_fetch::FetchOutcome;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::protocol::*;
use crate::queue::QueueName;

/// The longest lease a worker takes on the scripts engine, whatever
/// `WorkerOptions::lease` says. The module cuts a vanished worker's leases
/// to a 2 s grace when its connections close; the scripts engine cannot see
/// connections, so there a lease only comes back when it expires, and it is
/// kept short (renewed every third of it) to bring a killed worker's tasks
/// back in seconds (docs/DECISIONS.md).
pub const SCRIPTS_MAX_LEASE: Duration =
    Duration::from_millis(vtasks_protocol::SCRIPTS_MAX_LEASE_MS as u64);

/// How long a settlement waits for others to go to the server in the same
/// command (or with a fetch): a task that ends is final this much later
/// at most, and tasks that end one by one cost a command per few
/// milliseconds rather than one each.
const SETTLE_GATHER: Duration = Duration::from_millis(2);

/// How long a worker with most of its slots taken waits for more to free
/// before it fetches (see `refill_batch`). Refilled one slot per finished
/// task, a busy worker made a fetch, a wake-up of its I/O thread and a
/// hand-over of a one-task batch to the runtime per task, while the tasks
/// it already held waited their turn; the wait is short next to any task
/// that keeps a slot taken for long (a slot freed by a 10 ms task idles
/// about half of it, on average).
const REFILL_GATHER: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Queues to serve, in order of preference.
    pub queues: Vec<QueueName>,
    /// Names this worker in leases (`VTASKS.GET` reports it).
    pub consumer: String,
    /// Most tasks leased to this worker at once.
    pub concurrency: usize,
    /// Lease length; running tasks are renewed every `lease / 3`. On the
    /// scripts engine at most `SCRIPTS_MAX_LEASE`.
    pub lease: Duration,
    /// Longest server-side wait of one fetch when the queues are empty.
    pub block: Duration,
    /// How long finished tasks' results are kept (None: server default).
    pub keep_results: Option<Duration>,
    /// Return once the queues are empty and nothing is running.
    pub burst: bool,
}

impl WorkerOptions {
    pub fn new(queues: Vec<QueueName>, consumer: impl Into<String>) -> Self {
        WorkerOptions {
            queues,
            consumer: consumer.into(),
            concurrency: 10,
            lease: Duration::from_millis(vtasks_protocol::DEFAULT_LEASE_MS as u64),
            block: Duration::from_secs(5),
            keep_results: None,
            burst: false,
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done, with an encoded result to keep (or none).
    Success(Option<Vec<u8>>),
    /// Failed: retry after a delay, or dead-letter.
    Failure { error: String, retry: Retry },
}

/// Counters, for logs and `repr`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub fetched: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub released: u64,
    /// Settlements the server refused: the lease had expired and the task
    /// went to another worker.
    pub stale: u64,
    /// Renewals that found the lease already lost.
    pub lost_leases: u64,
    /// Connection failures survived.
    pub reconnects: u64,
    /// Commands the server refused for lack of memory (`ServerFull`),
    /// retried. Draining commands are never refused by a current server;
    /// this counts what an older module, or a library that cannot be
    /// loaded while the server is full, still refuses.
    pub server_full: u64,
    pub round_trips: u64,
}

/// Whether the worker reaches its server, as its last command found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    Up,
    /// Unreachable (or refusing to serve for now) since a command failed
    /// with this error; the worker keeps retrying.
    Lost(String),
    /// The server refuses the worker's fetch for lack of memory (an older
    /// module, or a scripts library it cannot load while full); the worker
    /// keeps retrying until it has room.
    Full(String),
}

impl ConnectionState {
    /// `"up"`, `"lost"` or `"full"`.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionState::Up => "up",
            ConnectionState::Lost(_) => "lost",
            ConnectionState::Full(_) => "full",
        }
    }

    /// The error behind a state other than `Up`.
    pub fn detail(&self) -> Option<&str> {
        match self {
            ConnectionState::Up => None,
            ConnectionState::Lost(detail) | ConnectionState::Full(detail) => Some(detail),
        }
    }
}

#[derive(Default)]
struct State {
    /// Leased to this worker and not yet settled: (queue, id) -> token.
    running: HashMap<(QueueName, String), i64>,
    acks: Vec<Ack>,
    nacks: Vec<Nack>,
    /// Queues the caller asked not to fetch from for now (at their own
    /// concurrency limit).
    held_back: HashSet<QueueName>,
    /// Counts plans: where a partitioned queue's turn starts.
    turn: usize,
    /// A fetch is in flight. Set and cleared under this lock in the same
    /// step that takes the settlements it carries, so `complete` knows
    /// whether the next fetch will carry its settlement or the fetch in
    /// flight (which may wait server-side for up to `block`) is past
    /// taking it, and `maintain` must send it.
    fetching: bool,
    stats: WorkerStats,
}

struct Inner {
    client: Client,
    options: WorkerOptions,
    /// Each queue served, in order of preference, with its partitions
    /// (itself alone unless partitioned).
    partitions: Vec<(QueueName, Vec<QueueName>)>,
    state: Mutex<State>,
    /// A slot freed, the queues to fetch from changed, or the worker is
    /// stopping: wakes `next_batch` waiting for a slot. `notify_waiters`:
    /// only the one `next_batch` listens, and it takes its `Notified`
    /// before it reads the state.
    changed: Notify,
    /// The queues to fetch from changed, or the worker is stopping: ends
    /// the wait of a fetch in flight that no longer asks for the right
    /// queues (not woken by every finished task, as `changed` is).
    requeued: Notify,
    /// A settlement is pending that no fetch will carry: `maintain` sends
    /// it. `notify_one` stores a permit when `maintain` is busy (sending
    /// the previous ones, renewing), so none is left behind.
    settle: Notify,
    /// Tasks the worker may hold beyond `options.concurrency` for now
    /// (`set_extra_capacity`).
    extra_capacity: AtomicUsize,
    stopping: AtomicBool,
    connection: watch::Sender<ConnectionState>,
    /// `CLIENT ID` of the fetch connection last used: a new one means the
    /// worker reconnected.
    fetch_connection: AtomicI64,
}

/// Cheap to clone; clones share the worker.
#[derive(Clone)]
pub struct WorkerCore {
    inner: Arc<Inner>,
}

/// What `next_batch` does next.
enum Plan {
    /// Nothing can be fetched (no free slot, every queue held back): wait
    /// for a change, after sending these settlements, which no fetch will.
    Wait(Vec<Ack>, Vec<Nack>),
    /// Fewer slots are free than a refill batch: wait a little for more
    /// (`REFILL_GATHER`), settlements left pending for that fetch.
    Gather,
    /// Fetch, settling these with it; `aside` are settlements of
    /// held-back queues, which a FETCHN cannot carry.
    Fetch(Fetch, Vec<Ack>, Vec<Nack>),
}

impl WorkerCore {
    pub fn new(client: Client, options: WorkerOptions) -> Result<WorkerCore> {
        if options.queues.is_empty() {
            return Err(Error::InvalidInput(
                "a worker needs at least one queue".into(),
            ));
        }
        if options.concurrency == 0 || options.concurrency > 100_000 {
            return Err(Error::InvalidInput("concurrency must be 1..=100000".into()));
        }
        if options.lease < Duration::from_millis(100) {
            return Err(Error::InvalidInput("lease must be at least 100 ms".into()));
        }
        let mut partitions: Vec<(QueueName, Vec<QueueName>)> = Vec::new();
        for queue in &options.queues {
            let queue = client.partitions().logical(queue);
            if !partitions.iter().any(|(q, _)| *q == queue) {
                let parts = client.partitions().all(&queue);
                partitions.push((queue, parts));
            }
        }
        Ok(WorkerCore {
            inner: Arc::new(Inner {
                client,
                options,
                partitions,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                requeued: Notify::new(),
                settle: Notify::new(),
                extra_capacity: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
                connection: watch::Sender::new(ConnectionState::Up),
                fetch_connection: AtomicI64::new(0),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn options(&self) -> &WorkerOptions {
        &self.inner.options
    }

    /// The lease this worker takes and renews: as configured, and at most
    /// `SCRIPTS_MAX_LEASE` on the scripts engine.
    pub fn lease(&self) -> Duration {
        match self.inner.client.engine() {
            Engine::Module => self.inner.options.lease,
            Engine::Scripts => self.inner.options.lease.min(SCRIPTS_MAX_LEASE),
        }
    }

    pub fn stats(&self) -> WorkerStats {
        self.state().stats.clone()
    }

    pub fn running(&self) -> usize {
        self.state().running.len()
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Whether the worker reaches its server, as a watch: it changes once
    /// when a command finds the server unreachable and once when one gets
    /// through again (for logging; the worker retries by itself).
    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.inner.connection.subscribe()
    }

    /// Records what a command's outcome says about the connection.
    fn note_connection<T>(&self, outcome: &Result<T>) {
        match outcome {
            Ok(_) => {
                self.inner.connection.send_if_modified(|c| {
                    let changed = *c != ConnectionState::Up;
                    *c = ConnectionState::Up;
                    changed
                });
            }
            // A full server answers (and has its own error and log line).
            Err(Error::ServerFull(_)) => {}
            Err(err) if err.is_transient() => {
                self.inner.connection.send_if_modified(|c| {
                    let up = *c == ConnectionState::Up;
                    if up {
                        *c = ConnectionState::Lost(err.to_string());
                    }
                    up
                });
            }
            Err(_) => {}
        }
    }

    /// Stops fetching: `next_batch` returns at once from now on, and a
    /// fetch waiting server-side is ended early (its tasks, if any arrive,
    /// are returned to the caller, who should release them). Tasks still
    /// running are settled as they finish.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
        self.inner.requeued.notify_waiters();
        self.inner.settle.notify_one();
    }

    /// The next batch of tasks: as many as there are free slots. Waits for
    /// a free slot first; blocks server-side up to `block` when the queues
    /// are empty and then returns an empty batch. Returns an empty batch at
    /// once when stopping, and early when a held-back queue is released
    /// while the fetch waits (the next call asks for it too). Survives
    /// connection loss by retrying with backoff, keeping its pending
    /// settlements. A server that refuses the fetch for lack of memory
    /// (`Error::ServerFull`: an older module, or a function library it
    /// cannot load while full) is returned at once, settlements kept, so
    /// the caller can say so; calling again retries.
    pub async fn next_batch(&self, fetcher: &mut BlockingFetcher) -> Result<Vec<Delivery>> {
        let mut backoff = Duration::from_millis(50);
        // Settlements wait with the state until then for others to go in
        // the same command, or for a fetch that becomes due to carry them.
        let mut gather_until: Option<tokio::time::Instant> = None;
        // Until then, a fetch waits for a refill batch of free slots.
        let mut refill_until: Option<tokio::time::Instant> = None;
        loop {
            if self.is_stopping() {
                return Ok(Vec::new());
            }
            // Taken before the state is read, so no change after the read
            // is missed.
            let changed = self.inner.changed.notified();
            let patient = refill_until.is_none_or(|until| tokio::time::Instant::now() < until);
            let (fetch, aside_acks, aside_nacks) = match self.plan(patient) {
                Plan::Gather => {
                    let now = tokio::time::Instant::now();
                    let until = *refill_until.get_or_insert(now + REFILL_GATHER);
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                    continue;
                }
                Plan::Wait(acks, nacks) => {
                    refill_until = None;
                    if acks.is_empty() && nacks.is_empty() {
                        changed.await;
                        continue;
                    }
                    let now = tokio::time::Instant::now();
                    let until = *gather_until.get_or_insert(now + SETTLE_GATHER);
                    if now < until {
                        put_back(&mut self.state(), acks, nacks);
                        tokio::select! {
                            _ = changed => {}
                            _ = tokio::time::sleep_until(until) => {}
                        }
                        continue;
                    }
                    gather_until = None;
                    match self.settle_now(acks, nacks).await {
                        Ok(()) => {
                            backoff = Duration::from_millis(50);
                            changed.await;
                            continue;
                        }
                        Err(err) if err.is_transient() => {}
                        Err(err) => return Err(err),
                    }
                    self.state().stats.reconnects += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Plan::Fetch(fetch, aside_acks, aside_nacks) => {
                    gather_until = None;
                    refill_until = None;
                    (fetch, aside_acks, aside_nacks)
                }
            };
            // On failure they are kept for the next attempt.
            let _ = self.settle_now(aside_acks, aside_nacks).await;
            let outcome = self.fetch_while_current(fetcher, &fetch).await;
            self.note_connection(&outcome.result);
            match self.fetched(outcome) {
                Ok(Some(tasks)) => return Ok(tasks),
                Ok(None) => {}
                Err(err) => return Err(err),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Records a fetch's outcome: its tasks (Some), or its settlements
    /// put back after a transient error (None: try again).
    fn fetched(&self, outcome: FetchOutcome) -> Result<Option<Vec<Delivery>>> {
        // Built before the lock is taken: the task threads take it for
        // every task they finish.
        let leased: Vec<((QueueName, String), i64)> = match &outcome.result {
            Ok(fetched) => fetched
                .tasks
                .iter()
                .map(|task| ((task.queue.clone(), task.id.clone()), task.token))
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut st = self.state();
        st.fetching = false;
        // The settlements it did not deliver go with a later command.
        put_back(&mut st, outcome.unsent_acks, outcome.unsent_nacks);
        match outcome.result {
            Ok(fetched) => {
                st.stats.round_trips += 1;
                st.stats.fetched += fetched.tasks.len() as u64;
                st.stats.stale += fetched.acks.iter().filter(|s| **s != Settled::Ok).count() as u64;
                st.stats.stale += fetched
                    .nacks
                    .iter()
                    .filter(|s| matches!(s, NackOutcome::Refused(_)))
                    .count() as u64;
                st.running.extend(leased);
                Ok(Some(fetched.tasks))
            }
            Err(err) => {
                // The settlements may or may not have been applied (they
                // are among the undelivered ones); sending them again is
                // harmless (a repeat is STALE).
                // A full server is returned to the caller, which says
                // so once and calls again after a pause (see `run`).
                if let Error::ServerFull(_) = err {
                    st.stats.server_full += 1;
                    return Err(err);
                }
                if !err.is_transient() {
                    return Err(err);
                }
                st.stats.reconnects += 1;
                Ok(None)
            }
        }
    }

    /// Decides, under one lock, between fetching and waiting, and takes
    /// the pending settlements for whichever will send them. A fetch is
    /// marked in flight in the same step, so a settlement recorded after
    /// this is known to need `maintain`. `patient`: fewer free slots than
    /// a refill batch wait for more (`Plan::Gather`).
    fn plan(&self, patient: bool) -> Plan {
        let mut st = self.state();
        let free = self.free_slots(&st);
        if patient && free > 0 && free < self.refill_batch() {
            return Plan::Gather;
        }
        // A partitioned queue's partitions come in turn, starting one
        // further each time, so none is always asked last.
        st.turn = st.turn.wrapping_add(1);
        let turn = st.turn;
        let queues: Vec<QueueName> = self
            .inner
            .partitions
            .iter()
            .filter(|(q, _)| !st.held_back.contains(q))
            .flat_map(|(_, parts)| {
                let start = turn % parts.len();
                parts[start..].iter().chain(&parts[..start]).cloned()
            })
            .collect();
        let acks = std::mem::take(&mut st.acks);
        let nacks = std::mem::take(&mut st.nacks);
        if free == 0 || queues.is_empty() {
            return Plan::Wait(acks, nacks);
        }
        st.fetching = true;
        // A FETCHN may settle only tasks of the queues it names; tasks of
        // held-back queues are settled with their own ACK/NACK.
        let (acks, aside_acks) = split_by_queue(acks, &queues, |a| &a.queue);
        let (nacks, aside_nacks) = split_by_queue(nacks, &queues, |n| &n.queue);
        let fetch = Fetch {
            queues,
            consumer: self.inner.options.consumer.clone(),
            count: free,
            lease: self.lease(),
            block: Some(self.inner.options.block),
            keep: self.inner.options.keep_results,
            acks,
            nacks,
        };
        Plan::Fetch(fetch, aside_acks, aside_nacks)
    }

    /// Slots no leased task holds.
    fn free_slots(&self, st: &State) -> usize {
        let capacity =
            self.inner.options.concurrency + self.inner.extra_capacity.load(Ordering::Relaxed);
        capacity.saturating_sub(st.running.len())
    }

    /// Lets the worker hold `extra` tasks beyond its `concurrency` from
    /// now on (0: none). Lowering it fetches nothing until the tasks held
    /// fall below the new capacity; nothing held is given back. The caller
    /// raises it while tasks are short, when a deeper backlog keeps its
    /// threads from running dry between fetches (see the Python worker).
    pub fn set_extra_capacity(&self, extra: usize) {
        let before = self.inner.extra_capacity.swap(extra, Ordering::Relaxed);
        if extra > before {
            self.inner.changed.notify_waiters();
        }
    }

    /// The free slots worth a fetch while most are taken: a quarter of
    /// them. Fewer wait up to `REFILL_GATHER` for more; a worker with
    /// more than that free (one lightly loaded) fetches at once.
    fn refill_batch(&self) -> usize {
        (self.inner.options.concurrency / 4).max(1)
    }

    /// Whether a fetch from `queues` should end its wait: the worker is
    /// stopping, or a queue it leaves out (held back when it started) may
    /// be fetched from again.
    fn fetch_is_stale(&self, queues: &[QueueName]) -> bool {
        if self.is_stopping() {
            return true;
        }
        let st = self.state();
        self.inner
            .partitions
            .iter()
            .any(|(q, parts)| !st.held_back.contains(q) && !queues.contains(&parts[0]))
    }

    /// Runs the fetch to its end, never dropping it half-way (its
    /// settlements and tasks would be lost). If it goes stale while it
    /// waits server-side, its wait is ended with `CLIENT UNBLOCK` on the
    /// command connection (in a cluster, of each node's connection that
    /// waits). A fetch still on its way to the server (or, with the
    /// scripts, between its calls) has no wait to end yet, so the unblock
    /// is repeated, with backoff, until the fetch returns.
    async fn fetch_while_current(
        &self,
        fetcher: &mut BlockingFetcher,
        fetch: &Fetch,
    ) -> FetchOutcome {
        let id = match fetcher.connect_for(&fetch.queues).await {
            Ok(id) => id,
            Err(err) => {
                return FetchOutcome {
                    result: Err(err),
                    unsent_acks: fetch.acks.clone(),
                    unsent_nacks: fetch.nacks.clone(),
                }
            }
        };
        let previous = self.inner.fetch_connection.swap(id, Ordering::SeqCst);
        if previous != 0 && previous != id {
            // Reconnected. The module cuts the leases of a closed
            // connection to a short grace; renewing the running ones now
            // keeps them.
            let _ = self.renew().await;
        }
        let interrupter = fetcher.interrupter();
        let fetching = fetcher.fetch_for_worker(fetch);
        tokio::pin!(fetching);
        // Set once the fetch is stale: the delay before the next unblock.
        let mut retry: Option<Duration> = None;
        let mut unblocking: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let requeued = self.inner.requeued.notified();
            if retry.is_none() && self.fetch_is_stale(&fetch.queues) {
                retry = Some(Duration::ZERO);
            }
            tokio::select! {
                outcome = &mut fetching => {
                    if let Some(handle) = unblocking {
                        handle.abort();
                    }
                    return outcome;
                }
                _ = requeued, if retry.is_none() => {}
                _ = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {
                    // One at a time: a command connection that is away
                    // must not pile them up.
                    if unblocking.as_ref().is_none_or(|h| h.is_finished()) {
                        let interrupter = interrupter.clone();
                        unblocking = Some(tokio::spawn(async move {
                            interrupter.interrupt().await;
                        }));
                    }
                    retry = retry.map(|r| (r * 2).clamp(Duration::from_millis(5), Duration::from_millis(100)));
                }
            }
        }
    }

    /// Whether the queues hold no task this worker could still get: none
    /// ready and none leased (a paused queue holds none). Leased tasks count because a lease whose
    /// holder vanished (or whose fetch reply was lost with a connection)
    /// comes back when it expires: a burst worker waits for those instead of
    /// leaving them for a worker that may never come. Delayed tasks do not
    /// count; a burst does not wait for the future.
    pub async fn drained(&self) -> Result<bool> {
        for (queue, _) in &self.inner.partitions {
            let stats = match self.inner.client.stats(queue).await {
                Ok(stats) => stats,
                Err(Error::Server { code, .. }) if code == "NOQUEUE" => continue,
                // Cannot tell now; the next fetch retries with backoff.
                Err(err) if err.is_transient() => return Ok(false),
                Err(err) => return Err(err),
            };
            if stats.get("paused").unwrap_or(0) == 1 {
                continue; // hands out nothing until resumed
            }
            if stats.get("ready").unwrap_or(0) > 0 || stats.get("leased").unwrap_or(0) > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Stops fetching from `queue` (true) or resumes (false): per-queue
    /// concurrency limits are kept by the caller, which knows what runs.
    /// A partitioned queue is held back with all its partitions.
    pub fn hold_back(&self, queue: &QueueName, held: bool) {
        let queue = &self.inner.client.partitions().logical(queue);
        let mut st = self.state();
        let changed = if held {
            st.held_back.insert(queue.clone())
        } else {
            st.held_back.remove(queue)
        };
        drop(st);
        if changed {
            self.inner.changed.notify_waiters();
            self.inner.requeued.notify_waiters();
        }
    }

    /// Records how a task ended. It goes with the next fetch when none is
    /// in flight (the caller asks for the next batch as soon as it has
    /// handled the last one); otherwise, or when stopping, `maintain` sends
    /// it at once on the command connection, so it never waits for a fetch
    /// blocked on empty queues. A task not leased to this worker is
    /// ignored.
    pub fn complete(&self, delivery: &Delivery, outcome: Outcome) {
        let (queue, id) = (delivery.queue.clone(), delivery.id.clone());
        self.complete_task(queue, id, delivery.token, outcome);
    }

    /// The queue `name` names (`emails` or `{emails}`): one this worker
    /// serves is shared rather than built again, as a caller that reports
    /// each task by its queue's name (the Python worker) would.
    pub fn queue_named(&self, name: &str) -> Result<QueueName> {
        let served = self
            .inner
            .partitions
            .iter()
            .flat_map(|(queue, parts)| std::iter::once(queue).chain(parts))
            .find(|queue| queue.is_named(name.as_bytes()));
        match served {
            Some(queue) => Ok(queue.clone()),
            None => QueueName::new(name),
        }
    }

    /// `complete`, for a caller that owns the task's queue and id (the
    /// Python worker, once per task): they become the settlement's without
    /// a copy.
    pub fn complete_task(&self, queue: QueueName, id: String, token: i64, outcome: Outcome) {
        let mut st = self.state();
        let key = (queue, id);
        if st.running.remove(&key).is_none() {
            return;
        }
        let (queue, id) = key;
        // A result the server would refuse would fail the whole command
        // that carries it, and with it every other settlement of the batch:
        // the task ran, so it is dead-lettered (not retried, its effects
        // would repeat) with the reason, and the rest go through.
        let outcome = match outcome {
            Outcome::Success(Some(result)) => match crate::payload::check_size("result", &result) {
                Ok(()) => Outcome::Success(Some(result)),
                Err(err) => Outcome::Failure {
                    error: format!("the task ran, but its result cannot be stored: {err}"),
                    retry: Retry::Never,
                },
            },
            other => other,
        };
        match outcome {
            Outcome::Success(result) => {
                st.stats.succeeded += 1;
                st.acks.push(Ack {
                    queue,
                    id,
                    token,
                    result,
                });
            }
            Outcome::Failure { error, retry } => {
                st.stats.failed += 1;
                st.nacks.push(Nack {
                    queue,
                    id,
                    token,
                    retry,
                    error,
                });
            }
        }
        let no_fetch_will_carry_it = st.fetching || self.is_stopping();
        // `next_batch` waits for the first free slot, then for a refill
        // batch of them (or `REFILL_GATHER`): the slots in between need
        // not wake it, one task at a time.
        let free = self.free_slots(&st);
        let wakes = free <= 1 || free >= self.refill_batch();
        drop(st);
        if wakes {
            self.inner.changed.notify_waiters();
        }
        if no_fetch_will_carry_it {
            self.inner.settle.notify_one();
        }
    }

    /// Sends pending settlements now, with ACK and NACK commands on the
    /// shared connection. Kept for the next attempt if the server is away.
    pub async fn flush(&self) -> Result<()> {
        let (acks, nacks) = {
            let mut st = self.state();
            (std::mem::take(&mut st.acks), std::mem::take(&mut st.nacks))
        };
        self.settle_now(acks, nacks).await
    }

    /// The end of a worker: ends its background duties (`maintain`,
    /// running as `maintenance`), then sends the pending settlements. In
    /// that order: settlements `maintain` was sending are put back when it
    /// is dropped (`InFlight`) and the flush sends them; ended after the
    /// flush, it could take some the flush never saw, and their tasks
    /// stayed leased until their leases ran out.
    pub async fn close(&self, maintenance: Option<tokio::task::JoinHandle<()>>) -> Result<()> {
        if let Some(handle) = maintenance {
            handle.abort();
            let _ = handle.await;
        }
        self.flush().await
    }

    /// `flush`, unless no fetch is in flight: then the next one carries
    /// them (it took them already if it started meanwhile).
    async fn flush_behind_fetch(&self) -> Result<()> {
        let (acks, nacks) = {
            let mut st = self.state();
            if !st.fetching && !self.is_stopping() {
                return Ok(());
            }
            (std::mem::take(&mut st.acks), std::mem::take(&mut st.nacks))
        };
        self.settle_now(acks, nacks).await
    }

    /// Sends these settlements with their own ACK/NACK commands; puts them
    /// back in front of the pending ones if that fails.
    async fn settle_now(&self, acks: Vec<Ack>, nacks: Vec<Nack>) -> Result<()> {
        if acks.is_empty() && nacks.is_empty() {
            return Ok(());
        }
        // Put back if this future is dropped before the server answered
        // (the maintenance task aborted at close, a caller's timeout):
        // taken out of the state, they would otherwise be lost, and their
        // tasks would run again once their leases ran out.
        let mut in_flight = InFlight {
            core: self,
            settlements: Some((acks, nacks)),
        };
        let outcome = {
            let (acks, nacks) = in_flight.settlements.as_ref().expect("held until answered");
            self.send_settlements(acks, nacks).await
        };
        self.note_connection(&outcome);
        match outcome {
            Ok((stale, trips)) => {
                in_flight.settlements = None;
                drop(in_flight);
                let mut st = self.state();
                st.stats.stale += stale;
                st.stats.round_trips += trips;
                Ok(())
            }
            Err(err) => {
                drop(in_flight); // puts them back
                Err(err)
            }
        }
    }

    async fn send_settlements(&self, acks: &[Ack], nacks: &[Nack]) -> Result<(u64, u64)> {
        let client = &self.inner.client;
        let (mut stale, mut trips) = (0, 0);
        let mut queues: Vec<&QueueName> = acks.iter().map(|a| &a.queue).collect();
        queues.extend(nacks.iter().map(|n| &n.queue));
        queues.sort();
        queues.dedup();
        for queue in queues {
            let items: Vec<(String, i64, Option<Vec<u8>>)> = acks
                .iter()
                .filter(|a| &a.queue == queue)
                .map(|a| (a.id.clone(), a.token, a.result.clone()))
                .collect();
            if !items.is_empty() {
                let outcome = client
                    .ack(queue, &items, self.inner.options.keep_results)
                    .await?;
                stale += outcome.iter().filter(|s| **s != Settled::Ok).count() as u64;
                trips += 1;
            }
            let items: Vec<(String, i64, Retry, String)> = nacks
                .iter()
                .filter(|n| &n.queue == queue)
                .map(|n| (n.id.clone(), n.token, n.retry, n.error.clone()))
                .collect();
            if !items.is_empty() {
                let outcome = client.nack(queue, &items).await?;
                stale += outcome
                    .iter()
                    .filter(|s| matches!(s, NackOutcome::Refused(_)))
                    .count() as u64;
                trips += 1;
            }
        }
        Ok((stale, trips))
    }

    /// Renews the leases of every running task: one EXTEND per queue.
    pub async fn renew(&self) -> Result<()> {
        let by_queue: HashMap<QueueName, Vec<(String, i64)>> = {
            let st = self.state();
            let mut map: HashMap<QueueName, Vec<(String, i64)>> = HashMap::new();
            for ((queue, id), token) in &st.running {
                map.entry(queue.clone())
                    .or_default()
                    .push((id.clone(), *token));
            }
            map
        };
        for (queue, items) in by_queue {
            let outcome = self.inner.client.extend(&queue, &items, self.lease()).await;
            self.note_connection(&outcome);
            let outcome = outcome?;
            let lost = outcome.iter().filter(|s| **s != Settled::Ok).count() as u64;
            let mut st = self.state();
            st.stats.lost_leases += lost;
            st.stats.round_trips += 1;
        }
        Ok(())
    }

    /// Gives back tasks that were fetched but never started (shutdown): they
    /// return to their place in the queue without counting an attempt.
    pub async fn release(&self, deliveries: &[Delivery]) -> Result<()> {
        let mut queues: Vec<&QueueName> = deliveries.iter().map(|d| &d.queue).collect();
        queues.sort();
        queues.dedup();
        for queue in queues {
            let items: Vec<(String, i64)> = deliveries
                .iter()
                .filter(|d| &d.queue == queue)
                .map(|d| (d.id.clone(), d.token))
                .collect();
            if items.is_empty() {
                continue;
            }
            self.inner.client.release(queue, &items).await?;
            let mut st = self.state();
            for (id, _) in &items {
                st.running.remove(&(queue.clone(), id.clone()));
            }
            st.stats.released += items.len() as u64;
            st.stats.round_trips += 1;
        }
        self.inner.changed.notify_waiters();
        Ok(())
    }

    /// Background duties, until the future is dropped (after the last
    /// task finished or the grace ended): lease renewal every third of the
    /// lease, and sending the settlements no fetch will carry (recorded
    /// while a fetch was in flight, or while stopping). Errors are retried
    /// on the next tick; settlements that failed go with the next fetch.
    pub async fn maintain(&self) {
        let renew_every = self.lease() / 3;
        let mut next_renewal = tokio::time::Instant::now() + renew_every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_renewal) => {
                    let _ = self.renew().await;
                    next_renewal = tokio::time::Instant::now() + renew_every;
                }
                _ = self.inner.settle.notified() => {
                    // Let completions that arrive together go in one command.
                    tokio::time::sleep(SETTLE_GATHER).await;
                    let _ = self.flush_behind_fetch().await;
                }
            }
        }
    }
}

/// Settlements on their way to the server: put back in front of the
/// pending ones when dropped still holding them (not answered).
struct InFlight<'a> {
    core: &'a WorkerCore,
    settlements: Option<(Vec<Ack>, Vec<Nack>)>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some((acks, nacks)) = self.settlements.take() {
            put_back(&mut self.core.state(), acks, nacks);
        }
    }
}

/// Settlements of tasks of `queues`, and the others. Unmoved when all are
/// of `queues`, as they are unless a queue is held back: a busy worker
/// splits a batch's worth per fetch.
fn split_by_queue<T>(
    items: Vec<T>,
    queues: &[QueueName],
    queue_of: impl Fn(&T) -> &QueueName,
) -> (Vec<T>, Vec<T>) {
    if items.iter().all(|item| queues.contains(queue_of(item))) {
        return (items, Vec::new());
    }
    items
        .into_iter()
        .partition(|item| queues.contains(queue_of(item)))
}

/// Returns settlements that were not delivered to the front of the pending
/// ones (sending them again is harmless: a repeat is STALE).
fn put_back(st: &mut State, acks: Vec<Ack>, nacks: Vec<Nack>) {
    st.acks.splice(0..0, acks);
    st.nacks.splice(0..0, nacks);
}

impl WorkerCore {
    /// The worker loop, the one every runtime uses (the Rust handlers of
    /// `run`, the Python worker): fetches batches and hands each to
    /// `deliver` until the worker stops (a batch that arrives then is
    /// given back unstarted) or, in burst mode, until its queues hold
    /// nothing it could still get (see `drained`). A server refusing the
    /// fetch for lack of memory is waited out (`stats.server_full`, and the
    /// connection state says so). Returns when no more batches will come;
    /// running tasks, the grace period and the last settlements are the
    /// caller's (`run`, or the Python worker's shutdown).
    pub async fn fetch_loop(
        &self,
        fetcher: &mut BlockingFetcher,
        mut deliver: impl FnMut(Vec<Delivery>),
    ) -> Result<()> {
        let mut full_backoff = Duration::from_millis(25);
        loop {
            let batch = match self.next_batch(fetcher).await {
                Ok(batch) => batch,
                // Memory comes back as workers drain and results expire: a
                // worker keeps trying rather than dying.
                Err(err @ Error::ServerFull(_)) => {
                    self.inner.connection.send_if_modified(|c| {
                        let up = *c == ConnectionState::Up;
                        if up {
                            *c = ConnectionState::Full(err.to_string());
                        }
                        up
                    });
                    tokio::time::sleep(full_backoff).await;
                    full_backoff = (full_backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(err) => return Err(err),
            };
            full_backoff = Duration::from_millis(25);
            if self.is_stopping() {
                if !batch.is_empty() {
                    self.release(&batch).await?;
                }
                return Ok(());
            }
            if batch.is_empty() && self.inner.options.burst && self.running() == 0 {
                match self.drained().await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(err) if err.is_transient() => {}
                    Err(err) => return Err(err),
                }
            }
            if !batch.is_empty() {
                deliver(batch);
            }
        }
    }
}

/// Runs a worker with an async handler until `shutdown` resolves (or, in
/// burst mode, until the queues are empty). Running tasks get `grace` to
/// finish; settlements are flushed before returning. A handler that
/// panics fails its task's attempt (retried as any failure is) instead of
/// leaving it leased and renewed forever.
pub async fn run<H, F>(
    core: WorkerCore,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<WorkerStats>
where
    H: Fn(Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let handler = Arc::new(handler);
    let maintenance = tokio::spawn({
        let core = core.clone();
        async move { core.maintain().await }
    });
    let mut fetcher = core.inner.client.blocking_fetcher();
    let outcome = {
        let deliver = |batch: Vec<Delivery>| {
            for delivery in batch {
                let core = core.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    // Its own task, so a panic ends it and not the worker.
                    let outcome = match tokio::spawn(handler(delivery.clone())).await {
                        Ok(outcome) => outcome,
                        Err(err) => Outcome::Failure {
                            error: format!("the task's handler panicked: {}", panic_text(err)),
                            retry: Retry::After(Duration::from_millis(
                                vtasks_protocol::DEFAULT_RETRY_BACKOFF_MS as u64,
                            )),
                        },
                    };
                    core.complete(&delivery, outcome);
                });
            }
        };
        let fetching = core.fetch_loop(&mut fetcher, deliver);
        tokio::pin!(fetching);
        tokio::pin!(shutdown);
        // The fetch loop is never dropped half-way: on shutdown the worker
        // stops (ending a fetch that waits) and the loop is awaited, so
        // neither a fetch's settlements nor its tasks get lost.
        tokio::select! {
            outcome = &mut fetching => outcome,
            _ = &mut shutdown => {
                core.stop();
                fetching.await
            }
        }
    };
    core.stop();
    let deadline = tokio::time::Instant::now() + grace;
    while core.running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flushed = core.close(Some(maintenance)).await;
    outcome?;
    flushed?;
    Ok(core.stats())
}

/// What a panicking task said, as far as it can be read.
fn panic_text(err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string()),
        Err(err) => err.to_string(),
    }
}
