//! A FETCHN with nothing to hand out blocks on its queue keys
//! (`RedisModule_BlockClientOnKeys`, which neither module crate wraps).
//! Valkey calls `on_ready` whenever one of those keys is signalled: by a
//! command or the timer making tasks ready (an enqueue, a delayed task
//! falling due, an expired lease, a release, a resume). If the fetch still finds nothing (another consumer was faster),
//! the client stays blocked.
//!
//! A FETCHN with `WAKE` also watches queues it does not fetch from (in a
//! cluster, those of other slots on this server, which one command cannot
//! name as keys): when a task becomes ready in one of them, the module
//! signals the fetch's own first queue and its reply callback ends the
//! wait with no tasks. It never opens those queues (a command may only
//! read the keys of its own slot): it remembers, per queue name, when a
//! task last became ready there.

use std::collections::HashMap;
use std::os::raw::{c_int, c_void};
use std::sync::Mutex;

use redis_module::{raw, Context, RedisError, RedisValue};

use crate::commands::fetchn::{fetch_ready, fetch_reply, replicate_woken_fetch, Queues};
use crate::guard;
use crate::parse::FetchRequest;
use crate::server_time;

pub struct Pending {
    pub request: FetchRequest,
    /// Outcomes of the ACKs and NACKs, already applied when the call arrived.
    pub acks: RedisValue,
    pub nacks: RedisValue,
    /// The queues it watches (`WAKE`).
    pub wake: Vec<Vec<u8>>,
    /// Its entry among the watchers, once blocked.
    waiter: Option<u64>,
}

impl Pending {
    pub fn new(
        request: FetchRequest,
        acks: RedisValue,
        nacks: RedisValue,
        wake: Vec<Vec<u8>>,
    ) -> Self {
        Pending {
            request,
            acks,
            nacks,
            wake,
            waiter: None,
        }
    }
}

/// The fetches blocked with `WAKE`, and when tasks last became ready in
/// each queue (main thread only; the lock is never contended).
#[derive(Default)]
struct Watchers {
    next_id: u64,
    /// Queue name -> the waiters watching it.
    by_queue: HashMap<Vec<u8>, Vec<u64>>,
    /// Waiter -> its first queue (the key it is blocked on) and whether a
    /// watched queue got a ready task.
    waiters: HashMap<u64, (Vec<u8>, bool)>,
    /// Queue name -> when a task last became ready in it (ms).
    last_ready: HashMap<Vec<u8>, i64>,
}

static WATCHERS: Mutex<Option<Watchers>> = Mutex::new(None);

/// Entries of `last_ready` kept before old ones are dropped.
const LAST_READY_KEPT: usize = 100_000;

fn with_watchers<T>(f: impl FnOnce(&mut Watchers) -> T) -> T {
    let mut guard = WATCHERS.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(Watchers::default))
}

/// Whether a task became ready in one of `queues` at `since_ms` or later.
pub fn ready_since(queues: &[Vec<u8>], since_ms: i64) -> bool {
    with_watchers(|w| {
        queues
            .iter()
            .any(|q| w.last_ready.get(q).is_some_and(|&at| at >= since_ms))
    })
}

/// Tasks became ready in `queue` at `now`: ends the waits watching it
/// (their first queues are signalled, and their reply callbacks see the
/// flag).
pub fn ready_in(ctx: &Context, queue: &[u8], now: i64) {
    let homes: Vec<Vec<u8>> = with_watchers(|w| {
        if w.last_ready.len() >= LAST_READY_KEPT && !w.last_ready.contains_key(queue) {
            // Only recent readiness matters (a caller's look-back is the
            // time since its last look): forget the oldest half.
            let mut times: Vec<i64> = w.last_ready.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            w.last_ready.retain(|_, at| *at > cut);
        }
        w.last_ready.insert(queue.to_vec(), now);
        let Some(ids) = w.by_queue.get(queue) else {
            return Vec::new();
        };
        let ids = ids.clone();
        let mut homes = Vec::new();
        for id in ids {
            if let Some((home, poked)) = w.waiters.get_mut(&id) {
                *poked = true;
                if !homes.contains(home) {
                    homes.push(home.clone());
                }
            }
        }
        homes
    });
    for home in homes {
        let name = ctx.create_string(home.as_slice());
        unsafe { raw::RedisModule_SignalKeyAsReady.unwrap()(ctx.ctx, name.inner) };
    }
}

fn watch(home: &[u8], wake: &[Vec<u8>]) -> u64 {
    with_watchers(|w| {
        w.next_id += 1;
        let id = w.next_id;
        w.waiters.insert(id, (home.to_vec(), false));
        for queue in wake {
            w.by_queue.entry(queue.clone()).or_default().push(id);
        }
        id
    })
}

fn unwatch(id: u64, wake: &[Vec<u8>]) {
    with_watchers(|w| {
        w.waiters.remove(&id);
        for queue in wake {
            if let Some(ids) = w.by_queue.get_mut(queue) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    w.by_queue.remove(queue);
                }
            }
        }
    })
}

/// Whether the waiter's watched queues got a ready task (and forgets it).
fn take_poked(id: u64) -> bool {
    with_watchers(|w| match w.waiters.get_mut(&id) {
        Some((_, poked)) => std::mem::take(poked),
        None => false,
    })
}

const OK: c_int = raw::REDISMODULE_OK as c_int;
const STAY_BLOCKED: c_int = raw::REDISMODULE_ERR as c_int;

pub fn block(ctx: &Context, mut pending: Pending, timeout_ms: i64) {
    server_time::add_blocked(&pending.request.queues, 1);
    if !pending.wake.is_empty() {
        pending.waiter = Some(watch(pending.request.queues[0].queue(), &pending.wake));
    }
    let names: Vec<_> = pending
        .request
        .queues
        .iter()
        .map(|keys| ctx.create_string(keys.queue()))
        .collect();
    let mut raw_names: Vec<*mut raw::RedisModuleString> = names.iter().map(|s| s.inner).collect();
    // A fetch that watches other queues is woken through its first queue,
    // which may not exist (a queue never used): served on a signal even
    // then (`UNBLOCK_DELETED`), its reply callback decides.
    let flags = if pending.waiter.is_some() {
        raw::REDISMODULE_BLOCK_UNBLOCK_DELETED as c_int
    } else {
        0
    };
    let privdata = Box::into_raw(Box::new(pending)).cast::<c_void>();
    unsafe {
        raw::RedisModule_BlockClientOnKeysWithFlags.unwrap()(
            ctx.ctx,
            Some(on_ready),
            Some(on_timeout),
            Some(free_pending),
            timeout_ms,
            raw_names.as_mut_ptr(),
            raw_names.len() as c_int,
            privdata,
            flags,
        );
    }
}

fn pending_of<'a>(ctx: *mut raw::RedisModuleCtx) -> &'a Pending {
    unsafe { &*raw::RedisModule_GetBlockedClientPrivateData.unwrap()(ctx).cast::<Pending>() }
}

extern "C" fn on_ready(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    let pending = pending_of(ctx);
    let outcome = guard(|| {
        let now = server_time::now_ms();
        let mut queues = Queues::new(&context, &pending.request.queues);
        let outcome = fetch_ready(&context, &mut queues, &pending.request, now);
        if queues.finish() {
            replicate_woken_fetch(&context, &pending.request, now);
        }
        outcome
    });
    match outcome {
        Ok(tasks) if tasks.is_empty() => {
            if pending.waiter.is_some_and(take_poked) {
                // A watched queue has work: the caller fetches from it.
                let reply = fetch_reply(
                    &pending.request.queues,
                    Vec::new(),
                    pending.acks.clone(),
                    pending.nacks.clone(),
                );
                context.reply(Ok(reply));
                return OK;
            }
            STAY_BLOCKED
        }
        Ok(tasks) => {
            let reply = fetch_reply(
                &pending.request.queues,
                tasks,
                pending.acks.clone(),
                pending.nacks.clone(),
            );
            context.reply(Ok(reply));
            OK
        }
        Err(err) => {
            context.reply(Err(RedisError::String(err.to_string())));
            OK
        }
    }
}

extern "C" fn on_timeout(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    let pending = pending_of(ctx);
    let reply = fetch_reply(
        &pending.request.queues,
        Vec::new(),
        pending.acks.clone(),
        pending.nacks.clone(),
    );
    context.reply(Ok(reply));
    OK
}

unsafe extern "C" fn free_pending(_ctx: *mut raw::RedisModuleCtx, privdata: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        let pending = unsafe { Box::from_raw(privdata.cast::<Pending>()) };
        server_time::add_blocked(&pending.request.queues, -1);
        if let Some(id) = pending.waiter {
            unwatch(id, &pending.wake);
        }
    });
}
