use redis_module::{Context, RedisResult, RedisString};
use redis_module_macros::command;

use super::{statuses, write_one, Clock};
use crate::core::queue::{NackOutcome, Settled};
use crate::parse::{item_count, parse_nack_item};
use crate::server_time;

/// VTASKS.NACK <queue> <n> <id> <token> <retry-delay-ms | DEAD> <error> [...]
#[command({
    name: "VTASKS.NACK",
    flags: [Write],
    arity: -7,
    summary: "Reports failed attempts: retry after a delay, or dead-letter",
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
fn vtasks_nack(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::AtEnd, |access, a, now| {
        let n = item_count(a, "NACK", 4)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(parse_nack_item(a)?);
        }
        a.finish()?;
        let outcomes = match access.queue()? {
            Some(queue) => queue.nack(&items, now)?,
            None => vec![NackOutcome::Refused(Settled::NoTask); items.len()],
        };
        let queue_name = access.keys().queue();
        server_time::with_holders(|h| {
            for item in &items {
                h.settled(queue_name, item.id, item.token);
            }
        });
        Ok(statuses(outcomes, NackOutcome::as_str))
    })
}
