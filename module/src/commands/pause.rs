use redis_module::{Context, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::{write_one, Clock};

/// VTASKS.PAUSE <queue>
#[command({
    name: "VTASKS.PAUSE",
    flags: [Write, Fast],
    arity: 2,
    summary: "Stops handing out a queue's tasks; enqueue still works",
    complexity: "O(1)",
    since: "0.1.0",
    acl_categories: [Write, Fast, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_pause(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::Unused, |access, a, _now| {
        a.finish()?;
        access.queue_or_create()?.pause();
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

/// VTASKS.RESUME <queue>
#[command({
    name: "VTASKS.RESUME",
    flags: [Write, Fast],
    arity: 2,
    summary: "Resumes a paused queue and wakes its blocked consumers",
    complexity: "O(1)",
    since: "0.1.0",
    acl_categories: [Write, Fast, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_resume(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::Unused, |access, a, _now| {
        a.finish()?;
        access.queue_or_create()?.resume();
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}
