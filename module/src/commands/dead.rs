use redis_module::{Context, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::{bulk, read_one, write_one, Clock};
use crate::args::unknown_option;
use crate::core::error::{VtError, VtResult};
use crate::core::keys::*;
use crate::core::queue::{self};
use crate::parse::parse_selection;

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
    read_one(ctx, &args, |store, keys, a, _now| {
        let (mut offset, mut count) = (0, 100);
        while let Some(option) = a.next_keyword() {
            match option.as_str() {
                "OFFSET" => offset = a.next_int("OFFSET", 0, i64::MAX)?,
                "COUNT" => count = a.next_int("COUNT", 1, BULK_BATCH as i64)?,
                other => return Err(unknown_option(other)),
            }
        }
        require_queue(store, keys)?;
        let entries = queue::dead_list(store, keys, offset as usize, count as usize)?;
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
    write_one(ctx, &args, Clock::AfterQueue, |store, keys, a, now| {
        let selection = parse_selection(a)?;
        require_queue(store, keys)?;
        Ok(RedisValue::Integer(
            queue::requeue(store, keys, &selection, now)? as i64,
        ))
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
    write_one(ctx, &args, Clock::Unused, |store, keys, a, _now| {
        let selection = parse_selection(a)?;
        require_queue(store, keys)?;
        Ok(RedisValue::Integer(
            queue::purge(store, keys, &selection)? as i64
        ))
    })
}

/// Dead-letter commands name an existing queue: a typo should not look like
/// an empty dead-letter list.
fn require_queue(store: &mut impl crate::core::store::Store, keys: &QueueKeys) -> VtResult<()> {
    queue::check_types(store, keys)?;
    if store.key_kind(&keys.meta)? == crate::core::store::KeyKind::Missing {
        return Err(VtError::NoQueue(keys.queue_str()));
    }
    Ok(())
}
