use redis_module::{Context, RedisResult, RedisString};
use redis_module_macros::command;

use super::ack::{item_count, parse_token};
use super::{statuses, write_one, Clock};
use crate::args::{parse_int, Args};
use crate::core::error::VtResult;
use crate::core::keys::*;
use crate::core::queue::{self, NackItem, NackOutcome, Retry};

/// VTASKS.NACK <queue> <n> <id> <token> <retry-delay-ms | DEAD> <error> [...]
#[command({
    name: "VTASKS.NACK",
    flags: [Write, DenyOOM],
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
    write_one(ctx, &args, Clock::AtEnd, |store, keys, a, now| {
        let n = item_count(a, "NACK", 4)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(parse_nack_item(a)?);
        }
        a.finish()?;
        let outcomes = queue::nack(store, keys, &items, now)?;
        Ok(statuses(outcomes, NackOutcome::as_str))
    })
}

pub(super) fn parse_nack_item<'a>(a: &mut Args<'a>) -> VtResult<NackItem<'a>> {
    let id = a.next_bytes("task id")?;
    validate_id(id)?;
    let token = parse_token(a)?;
    let delay = a.next_bytes("retry delay")?;
    let retry = if delay.eq_ignore_ascii_case(b"DEAD") {
        Retry::Never
    } else {
        Retry::After(parse_int(delay, "retry delay", 0, MAX_DURATION_MS)?)
    };
    let error = a.next_bytes("error")?;
    Ok(NackItem {
        id,
        token,
        retry,
        error,
    })
}
