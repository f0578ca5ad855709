use redis_module::{Context, RedisResult, RedisString};
use redis_module_macros::command;

use super::{flags, write_one, Clock};
use crate::parse::parse_tasks;

/// VTASKS.ENQUEUE <queue> [MAXLEN <n>] TASK <id> <payload> [PRIORITY <p>] [DELAY <ms> | RUNAT <unix-ms>] [ATTEMPTS <n>] [LOSTLEASES <n>] [REPLACEFINISHED] [TASK ...]
#[command({
    name: "VTASKS.ENQUEUE",
    flags: [Write, DenyOOM],
    arity: -5,
    summary: "Adds one or many tasks to a queue, idempotently by task id",
    complexity: "O(N log M) for N tasks and M tasks in the queue",
    since: "0.1.0",
    acl_categories: [Write, Slow, Single("vtasks")],
    key_spec: [{
        notes: "the queue",
        flags: [ReadWrite, Insert],
        begin_search: Index({ index: 1 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_enqueue(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    write_one(ctx, &args, Clock::AfterQueue, |access, a, now| {
        let maxlen = if a.take_keyword("MAXLEN") {
            Some(a.next_int("MAXLEN", 0, i64::MAX)? as u64)
        } else {
            None
        };
        let tasks = parse_tasks(a)?;
        let name = access.keys().queue().to_vec();
        let added = access
            .queue_or_create()?
            .enqueue(&name, &tasks, maxlen, now)?;
        Ok(flags(added))
    })
}
