use redis_module::{Context, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::{flags, write_one, Clock};
use crate::core::error::VtError;
use crate::core::keys::{validate_id, BULK_BATCH};

/// VTASKS.CANCEL <queue> <id> [<id> ...]
#[command({
    name: "VTASKS.CANCEL",
    flags: [Write],
    arity: -3,
    summary: "Removes tasks that are still waiting (ready or delayed)",
    complexity: "O(N log M)",
    since: "0.1.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Delete],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_cancel(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::Unused, |access, a, _now| {
        let mut ids = Vec::new();
        while !a.is_empty() {
            let id = a.next_bytes("task id")?;
            validate_id(id)?;
            ids.push(id);
        }
        Ok(flags(match access.queue()? {
            Some(queue) => queue.cancel(&ids),
            None => vec![false; ids.len()],
        }))
    })
}

/// VTASKS.CLEAR <queue>
#[command({
    name: "VTASKS.CLEAR",
    flags: [Write],
    arity: 2,
    summary: "Deletes a queue's waiting tasks (ready and delayed), at most 10,000 per call",
    complexity: "O(N log M)",
    since: "0.1.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Delete],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_clear(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    // Replicated verbatim (it reads no clock): a replica holds the same
    // waiting tasks in the same order, so it deletes the same ones.
    write_one(ctx, &args, Clock::Unused, |access, a, _now| {
        a.finish()?;
        let name = access.keys().queue_str();
        let queue = access.queue()?.ok_or(VtError::NoQueue(name))?;
        Ok(RedisValue::Integer(queue.clear(BULK_BATCH) as i64))
    })
}
