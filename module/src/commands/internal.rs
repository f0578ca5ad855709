//! Commands the server sends itself: to its replicas and its AOF. Clients
//! are refused.

use redis_module::{Context, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::{replaying, to_reply, write_one, Clock};
use crate::args::Args;
use crate::core::error::{VtError, VtResult};
use crate::core::keys::{QueueKeys, MAINTENANCE_BATCH, MAX_TIMESTAMP_MS};
use crate::core::native::codec;
use crate::guard;
use crate::parse::parse_lease_refs;
use crate::queue_key::QueueAccess;

fn internal_only(ctx: &Context, name: &str) -> VtResult<()> {
    if replaying(ctx) {
        Ok(())
    } else {
        Err(VtError::syntax(format!(
            "{name} is sent by the server to its replicas and AOF only"
        )))
    }
}

/// VTASKS.MAINTAIN <queue> NOW <unix-ms>
#[command({
    name: "VTASKS.MAINTAIN",
    flags: [Write],
    arity: 4,
    summary: "Internal: the timer's maintenance of a queue at a given time, as replicas and the AOF receive it",
    complexity: "O(K log N) for K due entries, at most 1,000 of each kind",
    since: "0.2.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_maintain(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if let Err(err) = internal_only(ctx, "VTASKS.MAINTAIN") {
        return to_reply(Err(err));
    }
    write_one(ctx, &args, Clock::AtEnd, |access, a, now| {
        a.finish()?;
        if let Some(queue) = access.queue()? {
            queue.maintain(now, MAINTENANCE_BATCH)?;
        }
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

/// VTASKS.CUTLEASES <queue> <until> <n> <id> <token> [<id> <token> ...] NOW <unix-ms>
#[command({
    name: "VTASKS.CUTLEASES",
    flags: [Write],
    arity: -8,
    summary: "Internal: leases whose connections closed cut to end at a given time, as replicas and the AOF receive it",
    complexity: "O(N log M) for N leases",
    since: "0.2.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_cutleases(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if let Err(err) = internal_only(ctx, "VTASKS.CUTLEASES") {
        return to_reply(Err(err));
    }
    write_one(ctx, &args, Clock::AtEnd, |access, a, now| {
        let until = a.next_int("until", 0, MAX_TIMESTAMP_MS)?;
        let items = parse_lease_refs(a, "CUTLEASES")?;
        a.finish()?;
        let cut = match access.queue()? {
            Some(queue) => queue.cut_leases(&items, until, now),
            None => 0,
        };
        Ok(RedisValue::Integer(cut as i64))
    })
}

/// VTASKS.LOADCHUNK <queue> <chunk>
#[command({
    name: "VTASKS.LOADCHUNK",
    flags: [Write],
    arity: 3,
    summary: "Internal: one chunk of a queue as an AOF rewrite writes it; the first chunk replaces the key",
    complexity: "O(N) for N tasks in the chunk",
    since: "0.2.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_loadchunk(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let raw_args: Vec<&[u8]> = args.iter().skip(1).map(|a| a.as_slice()).collect();
    to_reply(guard(|| {
        internal_only(ctx, "VTASKS.LOADCHUNK")?;
        let mut a = Args::new(&raw_args);
        let keys = QueueKeys::parse(a.next_bytes("queue")?)?;
        let chunk = a.next_bytes("chunk")?;
        a.finish()?;
        let mut access = QueueAccess::new(ctx, keys);
        if codec::is_head(chunk) {
            access.replace(codec::decode_head(chunk)?)?;
        } else {
            let queue = access
                .queue()?
                .ok_or_else(|| VtError::Internal("a queue chunk without its head".into()))?;
            codec::decode_more(queue, chunk)?;
        }
        access.finish();
        Ok(RedisValue::SimpleStringStatic("OK"))
    }))
}
