use redis_module::{Context, RedisResult, RedisString};
use redis_module_macros::command;

use super::{statuses, write_one, Clock};
use crate::args::unknown_option;
use crate::core::keys::*;
use crate::core::queue::Settled;
use crate::parse::{item_count, parse_ack_item};
use crate::server_time;

/// VTASKS.ACK <queue> <n> <id> <token> <result> [<id> <token> <result> ...] [KEEP <ms>]
#[command({
    name: "VTASKS.ACK",
    flags: [Write],
    arity: -6,
    summary: "Marks leased tasks done, keeping their results for a while",
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
fn vtasks_ack(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::AtEnd, |access, a, now| {
        let n = item_count(a, "ACK", 3)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(parse_ack_item(a)?);
        }
        let mut keep = DEFAULT_KEEP_MS;
        while let Some(option) = a.next_keyword() {
            match option.as_str() {
                "KEEP" => keep = a.next_int("KEEP", 0, MAX_DURATION_MS)?,
                other => return Err(unknown_option(other)),
            }
        }
        let outcomes = match access.queue()? {
            Some(queue) => queue.ack(&items, keep, now),
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
