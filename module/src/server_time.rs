//! Server-side time: one module timer, armed for the earliest moment any
//! queue needs maintenance, the in-memory count of blocked consumers, and
//! which connection holds which leases (`core::holders`): when a connection
//! closes, its leases are cut to a short grace by the timer, whose writes
//! replicate as native commands like the rest of its maintenance.
//!
//! The timer's maintenance has no client command behind it, so it is
//! replicated (and written to the AOF) as the internal command
//! `VTASKS.MAINTAIN <queue> NOW <ms>`: given the same queue and the same
//! time, maintenance is deterministic, so a replica reaches the primary's
//! state.
//!
//! Everything here runs on Valkey's main thread; the mutex only satisfies
//! Rust's rules for statics and is never contended.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis_module::server_events::{LoadingSubevent, ServerRole};
use redis_module::{raw, Context, ContextFlags, RedisModuleTimerID};
use redis_module_macros::{loading_event_handler, role_changed_event_handler};

use crate::core::error::VtResult;
use crate::core::holders::{ClientId, Holders};
use crate::core::keys::{QueueKeys, LEASE_GRACE_MS, MAINTENANCE_BATCH};
use crate::core::queue::LeaseRef;
use crate::core::schedule::Schedule;
use crate::guard;
use crate::queue_key::{self, QueueAccess};

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
pub fn reschedule(ctx: &Context, queue: &[u8], due: Option<i64>) {
    let changed = with_state(|st| {
        let changed = st.schedule.get(queue) != due;
        if changed {
            st.schedule.set(queue, due);
        }
        changed
    });
    if changed {
        arm(ctx);
    }
}

fn arm(ctx: &Context) {
    if !is_primary(ctx) {
        return; // replicas receive the primary's maintenance as commands
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

/// The internal command the timer's maintenance is replicated as.
pub const MAINTAIN_COMMAND: &str = "VTASKS.MAINTAIN";

fn maintain_due_queues(ctx: &Context) -> VtResult<()> {
    let now = now_ms();
    let due = with_state(|st| st.schedule.take_due(now));
    for queue_name in due {
        let Ok(keys) = QueueKeys::parse(&queue_name) else {
            continue;
        };
        let cuts = with_state(|st| st.holders.take_pending(&queue_name));
        if !cuts.is_empty() {
            cut_orphaned_leases(ctx, &keys, &cuts, now)?;
        }
        let mut access = QueueAccess::new(ctx, keys);
        let more = match access.queue() {
            Ok(Some(queue)) => queue.maintain(now, MAINTENANCE_BATCH)?.more,
            // Gone, or replaced by another type: nothing to keep time for.
            Ok(None) | Err(_) => continue,
        };
        if access.finish() {
            let name = ctx.create_string(MAINTAIN_COMMAND);
            let args = [ctx.create_string(queue_name.as_slice())];
            crate::commands::replicate(ctx, &name, &args, Some(1), now, &[]);
        }
        if more {
            // More was due than one pass handles: continue next tick.
            with_state(|st| st.schedule.set(&queue_name, Some(now)));
        }
    }
    Ok(())
}

/// The internal command a cut of orphaned leases is replicated as.
pub const CUT_COMMAND: &str = "VTASKS.CUTLEASES";

/// Cuts leases whose connections all closed to end a grace from now
/// (`LEASE_GRACE_MS`), and replicates the cut as
/// `VTASKS.CUTLEASES <queue> <until> <n> <id> <token> ... NOW <ms>`:
/// which leases were orphaned is known only to this primary.
fn cut_orphaned_leases(
    ctx: &Context,
    keys: &QueueKeys,
    cuts: &[(Vec<u8>, i64)],
    now: i64,
) -> VtResult<()> {
    let until = now + LEASE_GRACE_MS;
    let refs: Vec<LeaseRef> = cuts
        .iter()
        .map(|(id, token)| LeaseRef { id, token: *token })
        .collect();
    let mut access = QueueAccess::new(ctx, keys.clone());
    match access.queue() {
        Ok(Some(queue)) => {
            queue.cut_leases(&refs, until, now);
        }
        // Gone, or replaced by another type: no lease to cut.
        Ok(None) | Err(_) => return Ok(()),
    }
    if access.finish() {
        let mut words: Vec<Vec<u8>> = vec![
            keys.queue().to_vec(),
            until.to_string().into_bytes(),
            cuts.len().to_string().into_bytes(),
        ];
        for (id, token) in cuts {
            words.push(id.clone());
            words.push(token.to_string().into_bytes());
        }
        let args: Vec<_> = words
            .iter()
            .map(|w| ctx.create_string(w.as_slice()))
            .collect();
        let name = ctx.create_string(CUT_COMMAND);
        crate::commands::replicate(ctx, &name, &args, Some(args.len()), now, &[]);
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
/// RDB) and when a replica becomes primary, the queues are found by one
/// scan of the keyspace, so their leases expire even if no consumer
/// touches them again.
fn rediscover(ctx: &Context) {
    let outcome = guard(|| {
        let found = queue_key::native_queues(ctx);
        with_state(|st| {
            for (queue, due) in found {
                st.schedule.set(&queue, due);
            }
        });
        Ok(())
    });
    if let Err(err) = outcome {
        ctx.log_warning(&format!("vtasks: rediscovering queues failed: {err}"));
    }
    arm(ctx);
}

/// A queue arrived under a key by a command that is not the module's
/// (`RESTORE`, which `MIGRATE` runs on its target, `COPY`, `RENAME`): its
/// deadlines reach the timer here.
pub fn on_key_event(ctx: &Context, event: &str, key: &[u8]) {
    if !matches!(event, "restore" | "copy_to" | "rename_to" | "move_to") {
        return;
    }
    if let Some(due) = queue_key::next_due_of(ctx, key) {
        reschedule(ctx, key, due);
    }
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
