//! A FETCHN with nothing to hand out blocks on its queue keys
//! (`RedisModule_BlockClientOnKeys`, which neither module crate wraps).
//! Valkey calls `on_ready` whenever one of those keys is signalled: by a
//! command or the timer making tasks ready (an enqueue, a delayed task
//! falling due, an expired lease, a release, a resume). If the fetch still finds nothing (another consumer was faster),
//! the client stays blocked.

use std::os::raw::{c_int, c_void};

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
}

const OK: c_int = raw::REDISMODULE_OK as c_int;
const STAY_BLOCKED: c_int = raw::REDISMODULE_ERR as c_int;

pub fn block(ctx: &Context, pending: Pending, timeout_ms: i64) {
    server_time::add_blocked(&pending.request.queues, 1);
    let names: Vec<_> = pending
        .request
        .queues
        .iter()
        .map(|keys| ctx.create_string(keys.queue()))
        .collect();
    let mut raw_names: Vec<*mut raw::RedisModuleString> = names.iter().map(|s| s.inner).collect();
    let privdata = Box::into_raw(Box::new(pending)).cast::<c_void>();
    unsafe {
        raw::RedisModule_BlockClientOnKeys.unwrap()(
            ctx.ctx,
            Some(on_ready),
            Some(on_timeout),
            Some(free_pending),
            timeout_ms,
            raw_names.as_mut_ptr(),
            raw_names.len() as c_int,
            privdata,
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
        Ok(tasks) if tasks.is_empty() => STAY_BLOCKED,
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
    });
}
