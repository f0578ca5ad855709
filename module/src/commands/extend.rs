use redis_module::{Context, RedisResult, RedisString};
use redis_module_macros::command;

use super::{statuses, write_one, Clock};
use crate::core::keys::*;
use crate::core::queue::Settled;
use crate::parse::parse_lease_refs;
use crate::server_time;

/// VTASKS.EXTEND <queue> <lease-ms> <n> <id> <token> [<id> <token> ...]
#[command({
    name: "VTASKS.EXTEND",
    flags: [Write],
    arity: -6,
    summary: "Renews the leases of running tasks",
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
fn vtasks_extend(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::AtEnd, |access, a, now| {
        let lease = a.next_int("lease", 1, MAX_DURATION_MS)?;
        let items = parse_lease_refs(a, "EXTEND")?;
        a.finish()?;
        let outcomes = match access.queue()? {
            Some(queue) => queue.extend(&items, lease, now),
            None => vec![Settled::NoTask; items.len()],
        };
        // The renewing connection holds the leases too (see core::holders).
        if let Some(client) = server_time::lease_holder(ctx) {
            let queue_name = access.keys().queue();
            server_time::with_holders(|h| {
                for (item, outcome) in items.iter().zip(&outcomes) {
                    if *outcome == Settled::Ok {
                        h.renewed(client, queue_name, item.id, item.token);
                    }
                }
            });
        }
        Ok(statuses(outcomes, Settled::as_str))
    })
}
