use redis_module::{Context, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::{bulk, read_one, write_one, Clock};
use crate::args::unknown_option;
use crate::core::error::{VtError, VtResult};
use crate::core::keys::*;
use crate::core::queue::{self};
use crate::parse::parse_selection;
use crate::queue_key::View;

/// VTASKS.DEADLIST <queue> [OFFSET <n>] [COUNT <n>]
#[command({
    name: "VTASKS.DEADLIST",
    flags: [ReadOnly],
    arity: -2,
    summary: "Lists dead-lettered tasks, oldest first, with their errors",
    complexity: "O(log M + N)",
    since: "0.1.0",
    acl_categories: [Read, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadOnly, Access],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_deadlist(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    read_one(ctx, &args, |access, keys, a, _now| {
        let (mut offset, mut count) = (0, 100);
        while let Some(option) = a.next_keyword() {
            match option.as_str() {
                "OFFSET" => offset = a.next_int("OFFSET", 0, i64::MAX)?,
                "COUNT" => count = a.next_int("COUNT", 1, BULK_BATCH as i64)?,
                other => return Err(unknown_option(other)),
            }
        }
        let (offset, count) = (offset as usize, count as usize);
        let entries = match access.view()? {
            View::Missing => return Err(VtError::NoQueue(keys.queue_str())),
            View::Native(queue) => queue.dead_list(offset, count),
            View::Layout(mut store) => {
                require_queue(&mut store, keys)?;
                queue::dead_list(&mut store, keys, offset, count)?
            }
        };
        Ok(RedisValue::Array(
            entries
                .into_iter()
                .map(|e| {
                    RedisValue::Array(vec![
                        bulk(e.id),
                        RedisValue::Integer(e.dead_at),
                        RedisValue::Integer(e.attempts),
                        bulk(e.error),
                    ])
                })
                .collect(),
        ))
    })
}

/// VTASKS.REQUEUE <queue> ALL | IDS <id> [<id> ...]
#[command({
    name: "VTASKS.REQUEUE",
    flags: [Write, DenyOOM],
    arity: -3,
    summary: "Puts dead-lettered tasks back in the queue with their attempts reset",
    complexity: "O(N log M)",
    since: "0.1.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_requeue(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::AfterQueue, |access, a, now| {
        let selection = parse_selection(a)?;
        let name = access.keys().queue_str();
        let queue = access.queue()?.ok_or(VtError::NoQueue(name))?;
        Ok(RedisValue::Integer(queue.requeue(&selection, now)? as i64))
    })
}

/// VTASKS.PURGE <queue> ALL | IDS <id> [<id> ...]
#[command({
    name: "VTASKS.PURGE",
    flags: [Write],
    arity: -3,
    summary: "Deletes dead-lettered tasks for good",
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
fn vtasks_purge(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::Unused, |access, a, _now| {
        let selection = parse_selection(a)?;
        let name = access.keys().queue_str();
        let queue = access.queue()?.ok_or(VtError::NoQueue(name))?;
        Ok(RedisValue::Integer(queue.purge(&selection) as i64))
    })
}

/// Dead-letter commands name an existing queue: a typo should not look like
/// an empty dead-letter list. (A queue of the module's type always exists.)
fn require_queue(store: &mut impl crate::core::store::Store, keys: &QueueKeys) -> VtResult<()> {
    queue::check_types(store, keys)?;
    if store.key_kind(&keys.meta)? == crate::core::store::KeyKind::Missing {
        return Err(VtError::NoQueue(keys.queue_str()));
    }
    Ok(())
}
