use redis_module::{Context, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::read_one;
use crate::core::error::VtError;
use crate::core::queue;
use crate::queue_key::View;
use crate::server_time;

/// VTASKS.STATS <queue>
#[command({
    name: "VTASKS.STATS",
    flags: [ReadOnly],
    arity: 2,
    summary: "Counts per state, blocked consumers, oldest ready task age and totals of a queue",
    complexity: "O(P + K) for P priorities in use and K overdue leases and expired results not yet returned (the timer returns them within milliseconds)",
    since: "0.1.0",
    acl_categories: [Read, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadOnly, Access],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_stats(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    read_one(ctx, &args, |access, keys, a, now| {
        a.finish()?;
        let blocked = server_time::blocked_on(keys.queue());
        let stats = match access.view()? {
            View::Missing => return Err(VtError::NoQueue(keys.queue_str())),
            View::Native(queue) => queue.stats(now, blocked),
            View::Layout(mut store) => queue::stats(&mut store, keys, now, blocked)?,
        };
        Ok(RedisValue::Array(
            stats
                .into_iter()
                .flat_map(|(name, value)| {
                    [
                        RedisValue::SimpleStringStatic(name),
                        RedisValue::Integer(value),
                    ]
                })
                .collect(),
        ))
    })
}
