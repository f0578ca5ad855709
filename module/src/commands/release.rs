use redis_module::{Context, RedisResult, RedisString};
use redis_module_macros::command;

use super::{statuses, write_one, Clock};
use crate::core::queue::Settled;
use crate::parse::parse_lease_refs;
use crate::server_time;

/// VTASKS.RELEASE <queue> <n> <id> <token> [<id> <token> ...]
#[command({
    name: "VTASKS.RELEASE",
    flags: [Write],
    arity: -5,
    summary: "Gives back leased tasks that were never started, without counting an attempt",
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
fn vtasks_release(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::AtEnd, |access, a, now| {
        let items = parse_lease_refs(a, "RELEASE")?;
        a.finish()?;
        let outcomes = match access.queue()? {
            Some(queue) => queue.release(&items, now),
            None => vec![Settled::NoTask; items.len()],
        };
        let queue_name = access.keys().queue();
        server_time::with_holders(|h| {
            for item in &items {
                h.settled(queue_name, item.id, item.token);
            }
        });
        Ok(statuses(outcomes, Settled::as_str))
    })
}
