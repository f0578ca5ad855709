//! Server-side time: one module timer, armed for the earliest moment any
//! queue needs maintenance, the in-memory count of blocked consumers, and
//! which connection holds which leases (`core::holders`): when a connection
//! closes, its leases are cut to a short grace by the timer, whose writes
//! replicate as native commands like the rest of its maintenance.
//!
//! Everything here runs on Valkey's main thread; the mutex only satisfies
//! Rust's rules for statics and is never contended.

use std::collections::{BTreeSet, HashMap};
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis_module::server_events::{LoadingSubevent, ServerRole};
use redis_module::{raw, Context, ContextFlags, RedisModuleTimerID};
use redis_module_macros::{loading_event_handler, role_changed_event_handler};

use crate::core::error::VtResult;
use crate::core::holders::{ClientId, Holders};
use crate::core::keys::{QueueKeys, LEASE_GRACE_MS, MAINTENANCE_BATCH};
use crate::core::queue::{self, LeaseRef};
use crate::core::schedule::Schedule;
use crate::guard;
use crate::valkey_store::ValkeyStore;

#[derive(Default)]
struct ServerTime {
    schedule: Schedule,
    /// The armed timer and the time it fires at.
    armed: Option<(i64, RedisModuleTimerID)>,
    blocked: HashMap<Vec<u8>, u64>,
    holders: Holders,
}

static STATE: Mutex<Option<ServerTime>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<ServerTime>> {
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn with_state<T>(f: impl FnOnce(&mut ServerTime) -> T) -> T {
    let mut guard = state();
    f(guard.get_or_insert_with(ServerTime::default))
}

pub fn now_ms() -> i64 {
    unsafe { raw::RedisModule_Milliseconds.unwrap()() }
}

fn is_primary(ctx: &Context) -> bool {
    ctx.get_flags().contains(ContextFlags::MASTER)
}

/// After a command changed a queue: record when it next needs maintenance
/// and make sure the timer fires by then.
pub fn reschedule(ctx: &Context, store: &mut ValkeyStore, keys: &QueueKeys) -> VtResult<()> {
    // Only these sets hold deadlines; a command that left them alone (an
    // immediate enqueue, a GET) cannot have moved the queue's next deadline.
    if !store.changed_any(&[&keys.delayed, &keys.leased, &keys.done]) {
        return Ok(());
    }
    let due = queue::next_due(store, keys)?;
    with_state(|st| st.schedule.set(keys.queue(), due));
    arm(ctx);
    Ok(())
}

fn arm(ctx: &Context) {
    if !is_primary(ctx) {
        return; // replicas receive the primary's maintenance as replicated writes
    }
    let Some(earliest) = with_state(|st| st.schedule.earliest()) else {
        return;
    };
    let previous = with_state(|st| match st.armed {
        Some((at, _)) if at <= earliest => None,
        armed => Some(armed),
    });
    let Some(previous) = previous else {
        return; // a timer that fires early enough is already armed
    };
    if let Some((_, id)) = previous {
        let _ = ctx.stop_timer::<()>(id);
    }
    let delay = (earliest - now_ms()).max(0) as u64;
    let id = ctx.create_timer(Duration::from_millis(delay), on_timer, ());
    with_state(|st| st.armed = Some((earliest, id)));
}

fn on_timer(ctx: &Context, _: ()) {
    with_state(|st| st.armed = None);
    let outcome = guard(|| {
        if is_primary(ctx) {
            maintain_due_queues(ctx)?;
        }
        Ok(())
    });
    if let Err(err) = outcome {
        ctx.log_warning(&format!("vtasks: maintenance failed: {err}"));
    }
    arm(ctx);
}

fn maintain_due_queues(ctx: &Context) -> VtResult<()> {
    let now = now_ms();
    let due = with_state(|st| st.schedule.take_due(now));
    for queue_name in due {
        let keys = QueueKeys::parse(&queue_name)?;
        let mut store = ValkeyStore::replicating_effects(ctx.ctx);
        let cuts = with_state(|st| st.holders.take_pending(&queue_name));
        if !cuts.is_empty() {
            let refs: Vec<LeaseRef> = cuts
                .iter()
                .map(|(id, token)| LeaseRef { id, token: *token })
                .collect();
            queue::cut_leases(&mut store, &keys, &refs, now + LEASE_GRACE_MS)?;
        }
        let report = queue::maintain(&mut store, &keys, now, MAINTENANCE_BATCH)?;
        let next = if report.more {
            Some(now) // more was due than one pass handles: continue next tick
        } else {
            queue::next_due(&mut store, &keys)?
        };
        with_state(|st| st.schedule.set(&queue_name, next));
    }
    Ok(())
}

/// The connection a lease taken or renewed by this command belongs to, or
/// None when the command is not a client's own: replayed from the primary
/// or the AOF (the primary tracks its clients), or run by a script (whose
/// client never disconnects).
pub fn lease_holder(ctx: &Context) -> Option<ClientId> {
    let flags = ctx.get_flags();
    if flags.intersects(ContextFlags::REPLICATED | ContextFlags::LOADING | ContextFlags::LUA) {
        return None;
    }
    let id = unsafe { raw::RedisModule_GetClientId.unwrap()(ctx.ctx) };
    (id != 0).then_some(id)
}

/// Records lease changes in the index of holders.
pub fn with_holders<T>(f: impl FnOnce(&mut Holders) -> T) -> T {
    with_state(|st| f(&mut st.holders))
}

/// A client connection closed. Its leases are cut by the timer, right
/// away: writing from inside this event (which fires wherever the server
/// frees a client) is avoided; the timer's writes replicate as the rest of
/// its maintenance does, and it runs on a primary only.
extern "C" fn on_client_change(
    ctx: *mut raw::RedisModuleCtx,
    _event: raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    if subevent != raw::REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED || data.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: for this event the server passes a RedisModuleClientInfo
        // (version 1, as subscribed), valid during the callback.
        let id = unsafe { (*data.cast::<raw::RedisModuleClientInfo>()).id };
        let queues = with_state(|st| st.holders.disconnected(id));
        if queues.is_empty() {
            return;
        }
        let now = now_ms();
        with_state(|st| {
            for queue in &queues {
                st.schedule.set(queue, Some(now));
            }
        });
        arm(&Context::new(ctx));
    }));
}

/// Subscribes to client disconnections (called once at load).
pub fn subscribe(ctx: &Context) -> bool {
    let event = raw::RedisModuleEvent {
        id: raw::REDISMODULE_EVENT_CLIENT_CHANGE,
        dataver: 1,
    };
    raw::subscribe_to_server_event(ctx.ctx, event, Some(on_client_change)) == raw::Status::Ok
}

pub fn blocked_on(queue: &[u8]) -> u64 {
    with_state(|st| st.blocked.get(queue).copied().unwrap_or(0))
}

pub fn add_blocked(queues: &[QueueKeys], delta: i64) {
    with_state(|st| {
        for keys in queues {
            let count = st.blocked.entry(keys.queue().to_vec()).or_insert(0);
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                st.blocked.remove(keys.queue());
            }
        }
    });
}

/// The schedule lives in memory. After loading a dataset (restart, AOF or
/// RDB) and when a replica becomes primary, queues with leases, delayed tasks
/// or kept results are found by scanning the keyspace once, so their leases
/// expire even if no consumer touches them again.
fn rediscover(ctx: &Context) {
    let queues = queues_with_schedules(ctx);
    let outcome = guard(|| {
        for queue_name in queues {
            let Ok(keys) = QueueKeys::parse(&queue_name) else {
                continue; // a foreign key that merely ends like ours
            };
            let mut store = ValkeyStore::read_only(ctx.ctx);
            let due = queue::next_due(&mut store, &keys).unwrap_or(None);
            with_state(|st| st.schedule.set(&queue_name, due));
        }
        Ok(())
    });
    if let Err(err) = outcome {
        ctx.log_warning(&format!("vtasks: rediscovering queues failed: {err}"));
    }
    arm(ctx);
}

/// The names of queues that have a leased, delayed or done set, from one
/// pass over the keyspace. Scans with the server's API directly rather than
/// the `redis-module` crate's `KeysCursor`, whose callback retains every
/// key name it is handed and never releases it (one leaked string per key
/// per scan, found with valgrind).
fn queues_with_schedules(ctx: &Context) -> BTreeSet<Vec<u8>> {
    extern "C" fn collect(
        _ctx: *mut raw::RedisModuleCtx,
        key_name: *mut raw::RedisModuleString,
        _key: *mut raw::RedisModuleKey,
        found: *mut c_void,
    ) {
        // Nothing here can panic; the guard keeps it that way across the FFI.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: `found` is the set passed to RedisModule_Scan below,
            // alive for the whole scan; the key name is valid during the
            // callback and only borrowed.
            let found = unsafe { &mut *found.cast::<BTreeSet<Vec<u8>>>() };
            let mut len = 0usize;
            let ptr = unsafe { raw::RedisModule_StringPtrLen.unwrap()(key_name, &mut len) };
            if ptr.is_null() {
                return;
            }
            let name = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
            for suffix in [&b":leased"[..], b":delayed", b":done"] {
                if let Some(queue) = name.strip_suffix(suffix) {
                    found.insert(queue.to_vec());
                }
            }
        }));
    }
    let mut found = BTreeSet::new();
    // SAFETY: the cursor is created, used and destroyed here, on the main
    // thread holding the server lock (a server event callback).
    unsafe {
        let cursor = raw::RedisModule_ScanCursorCreate.unwrap()();
        while raw::RedisModule_Scan.unwrap()(
            ctx.ctx,
            cursor,
            Some(collect),
            (&mut found as *mut BTreeSet<Vec<u8>>).cast::<c_void>(),
        ) != 0
        {}
        raw::RedisModule_ScanCursorDestroy.unwrap()(cursor);
    }
    found
}

/// Deadlines written by something other than this module's commands (the
/// scripts engine running on the same server, while a deployment moves
/// between engines) reach the schedule through keyspace events: a `zadd`
/// to a queue's delayed, leased or done set reschedules that queue. The
/// module's own writes go through the key API, which raises no events.
pub fn on_zset_event(ctx: &Context, event: &str, key: &[u8]) {
    if event != "zadd" {
        return;
    }
    let Some(queue_name) = [&b":delayed"[..], b":leased", b":done"]
        .iter()
        .find_map(|suffix| key.strip_suffix(*suffix))
    else {
        return;
    };
    let outcome = guard(|| {
        let Ok(keys) = QueueKeys::parse(queue_name) else {
            return Ok(()); // a foreign key that merely ends like ours
        };
        let mut store = ValkeyStore::read_only(ctx.ctx);
        let due = queue::next_due(&mut store, &keys)?;
        with_state(|st| st.schedule.set(keys.queue(), due));
        Ok(())
    });
    if let Err(err) = outcome {
        ctx.log_warning(&format!(
            "vtasks: rescheduling after a foreign write failed: {err}"
        ));
    }
    arm(ctx);
}

#[loading_event_handler]
fn on_loading(ctx: &Context, event: LoadingSubevent) {
    if event == LoadingSubevent::Ended {
        rediscover(ctx);
    }
}

#[role_changed_event_handler]
fn on_role_changed(ctx: &Context, role: ServerRole) {
    if role == ServerRole::Primary {
        rediscover(ctx);
    }
}
