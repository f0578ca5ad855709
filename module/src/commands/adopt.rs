use redis_module::{Context, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::to_reply;
use crate::args::Args;
use crate::core::error::VtError;
use crate::core::keys::QueueKeys;
use crate::guard;
use crate::queue_key::{self, Kind};

/// VTASKS.ADOPT <queue>
#[command({
    name: "VTASKS.ADOPT",
    flags: [Write],
    arity: 2,
    summary: "Converts a queue kept in the keyspace layout (the scripts engine's) into the module's data type",
    complexity: "O(N) for N tasks in the queue",
    since: "0.2.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_adopt(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    convert(ctx, &args, |ctx, keys| {
        match queue_key::kind_of(ctx, keys) {
            Kind::Layout => queue_key::adopt(ctx, keys),
            Kind::Native => Ok(Some(0)),
            Kind::Missing => Ok(None),
            Kind::Foreign => Err(VtError::WrongType),
        }
    })
}

/// VTASKS.EXPORT <queue>
#[command({
    name: "VTASKS.EXPORT",
    flags: [Write],
    arity: 2,
    summary: "Writes a queue of the module's data type back in the keyspace layout, for a server without the module",
    complexity: "O(N) for N tasks in the queue",
    since: "0.2.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_export(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    convert(ctx, &args, |ctx, keys| {
        match queue_key::kind_of(ctx, keys) {
            Kind::Native => queue_key::export(ctx, keys),
            Kind::Layout => Ok(Some(0)),
            Kind::Missing => Ok(None),
            Kind::Foreign => Err(VtError::WrongType),
        }
    })
}

/// Runs a conversion; replies with how many tasks it moved (0 when the
/// queue already was in the wanted form), `NOQUEUE` when there is no queue.
fn convert(
    ctx: &Context,
    args: &[RedisString],
    run: impl FnOnce(&Context, &QueueKeys) -> crate::core::error::VtResult<Option<u64>>,
) -> RedisResult {
    let raw_args: Vec<&[u8]> = args.iter().skip(1).map(|a| a.as_slice()).collect();
    to_reply(guard(|| {
        let mut a = Args::new(&raw_args);
        let keys = QueueKeys::parse(a.next_bytes("queue")?)?;
        a.finish()?;
        let moved = run(ctx, &keys)?.ok_or_else(|| VtError::NoQueue(keys.queue_str()))?;
        if moved > 0 {
            ctx.replicate_verbatim();
        }
        Ok(RedisValue::Integer(moved as i64))
    }))
}
