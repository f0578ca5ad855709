use redis_module::{Context, RedisResult, RedisString};
use redis_module_macros::command;

use super::ack::{item_count, parse_token};
use super::{statuses, write_one, Clock};
use crate::args::Args;
use crate::core::error::VtResult;
use crate::core::keys::*;
use crate::core::queue::{self, LeaseRef, Settled};

/// VTASKS.EXTEND <queue> <lease-ms> <n> <id> <token> [<id> <token> ...]
#[command({
    name: "VTASKS.EXTEND",
    flags: [Write, DenyOOM],
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
    write_one(ctx, &args, Clock::AtEnd, |store, keys, a, now| {
        let lease = a.next_int("lease", 1, MAX_DURATION_MS)?;
        let items = parse_lease_refs(a, "EXTEND")?;
        a.finish()?;
        let outcomes = queue::extend(store, keys, &items, lease, now)?;
        Ok(statuses(outcomes, Settled::as_str))
    })
}

pub(super) fn parse_lease_refs<'a>(
    a: &mut Args<'a>,
    what: &'static str,
) -> VtResult<Vec<LeaseRef<'a>>> {
    let n = item_count(a, what, 2)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let id = a.next_bytes("task id")?;
        validate_id(id)?;
        items.push(LeaseRef {
            id,
            token: parse_token(a)?,
        });
    }
    Ok(items)
}
