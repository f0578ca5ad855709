use redis_module::{Context, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::{bulk, read_one};
use crate::core::keys::validate_id;
use crate::core::queue;
use crate::queue_key::View;

/// VTASKS.GET <queue> <id>
#[command({
    name: "VTASKS.GET",
    flags: [ReadOnly, Fast],
    arity: 3,
    summary: "One task's state: status, attempts, timestamps, error, result, payload",
    complexity: "O(1)",
    since: "0.1.0",
    acl_categories: [Read, Fast, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadOnly, Access],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_get(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    read_one(ctx, &args, |access, keys, a, now| {
        let id = a.next_bytes("task id")?;
        validate_id(id)?;
        a.finish()?;
        let found = match access.view()? {
            View::Missing => None,
            View::Native(queue) => queue.get(id, now),
            View::Layout(mut store) => queue::get(&mut store, keys, id)?,
        };
        Ok(match found {
            None => RedisValue::Null,
            Some(fields) => RedisValue::Array(
                fields
                    .into_iter()
                    .flat_map(|(name, value)| [RedisValue::SimpleStringStatic(name), bulk(value)])
                    .collect(),
            ),
        })
    })
}
