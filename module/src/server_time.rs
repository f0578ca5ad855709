//! Server-side time: one module timer, armed for the earliest moment any
//! queue needs maintenance, and the in-memory count of blocked consumers.
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
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis_module::server_events::{LoadingSubevent, ServerRole};
use redis_module::{raw, Context, ContextFlags, RedisModuleTimerID};
use redis_module_macros::{loading_event_handler, role_changed_event_handler};

use crate::core::error::VtResult;
use crate::core::keys::{QueueKeys, MAINTENANCE_BATCH};
use crate::core::schedule::Schedule;
use crate::guard;
use crate::queue_key::{self, QueueAccess};

#[derive(Default)]
struct ServerTime {
    schedule: Schedule,
    /// The armed timer and the time it fires at.
    armed: Option<(i64, RedisModuleTimerID)>,
    blocked: HashMap<Vec<u8>, u64>,
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
