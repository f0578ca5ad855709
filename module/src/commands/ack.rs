use redis_module::{Context, RedisResult, RedisString};
use redis_module_macros::command;

use super::{statuses, write_one, Clock};
use crate::args::{unknown_option, Args};
use crate::core::error::{VtError, VtResult};
use crate::core::keys::*;
use crate::core::queue::{self, AckItem, Settled};

/// VTASKS.ACK <queue> <n> <id> <token> <result> [<id> <token> <result> ...] [KEEP <ms>]
#[command({
    name: "VTASKS.ACK",
    flags: [Write, DenyOOM],
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
    write_one(ctx, &args, Clock::AtEnd, |store, keys, a, now| {
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
        let outcomes = queue::ack(store, keys, &items, keep, now)?;
        Ok(statuses(outcomes, Settled::as_str))
    })
}

/// Reads an item count and checks that the items it announces are there.
pub(super) fn item_count(a: &mut Args, what: &'static str, width: usize) -> VtResult<usize> {
    let n = a.next_int("item count", 1, MAX_FETCH_COUNT * 10)? as usize;
    if a.remaining() < n * width {
        return Err(VtError::syntax(format!(
            "{what} announces {n} items of {width} arguments but only {} arguments follow",
            a.remaining()
        )));
    }
    Ok(n)
}

pub(super) fn parse_token(a: &mut Args) -> VtResult<i64> {
    a.next_int("token", 1, i64::MAX)
}

pub(super) fn parse_ack_item<'a>(a: &mut Args<'a>) -> VtResult<AckItem<'a>> {
    let id = a.next_bytes("task id")?;
    validate_id(id)?;
    let token = parse_token(a)?;
    let result = a.next_bytes("result")?;
    validate_payload("result", result)?;
    Ok(AckItem {
        id,
        token,
        result: (!result.is_empty()).then_some(result),
    })
}
