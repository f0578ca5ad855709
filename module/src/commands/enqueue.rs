use redis_module::{Context, RedisResult, RedisString};
use redis_module_macros::command;

use super::{flags, write_one, Clock};
use crate::args::{unknown_option, Args};
use crate::core::error::{VtError, VtResult};
use crate::core::keys::*;
use crate::core::queue::{self, NewTask, When};

/// VTASKS.ENQUEUE <queue> [MAXLEN <n>] TASK <id> <payload> [PRIORITY <p>] [DELAY <ms> | RUNAT <unix-ms>] [ATTEMPTS <n>] [REPLACEFINISHED] [TASK ...]
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
    write_one(ctx, &args, Clock::AfterQueue, |store, keys, a, now| {
        let maxlen = if a.take_keyword("MAXLEN") {
            Some(a.next_int("MAXLEN", 0, i64::MAX)? as u64)
        } else {
            None
        };
        let tasks = parse_tasks(a)?;
        let added = queue::enqueue(store, keys, &tasks, maxlen, now)?;
        Ok(flags(added))
    })
}

fn parse_tasks<'a>(a: &mut Args<'a>) -> VtResult<Vec<NewTask<'a>>> {
    let mut tasks = Vec::new();
    while !a.is_empty() {
        if !a.take_keyword("TASK") {
            let word = a.next_keyword().unwrap_or_default();
            return Err(VtError::syntax(format!("expected TASK, got '{word}'")));
        }
        if tasks.len() == MAX_ENQUEUE_BATCH {
            return Err(VtError::OutOfRange {
                what: "number of tasks in one ENQUEUE",
                min: 1,
                max: MAX_ENQUEUE_BATCH as i64,
            });
        }
        let id = a.next_bytes("task id")?;
        validate_id(id)?;
        let payload = a.next_bytes("payload")?;
        validate_payload("payload", payload)?;
        let mut task = NewTask::new(id, payload);
        let mut scheduled = false;
        while !a.is_empty() && !a.peek_is("TASK") {
            let option = a.next_keyword().unwrap_or_default();
            match option.as_str() {
                "PRIORITY" => task.priority = a.next_int("PRIORITY", MIN_PRIORITY, MAX_PRIORITY)?,
                "ATTEMPTS" => task.max_attempts = a.next_int("ATTEMPTS", 1, MAX_ATTEMPTS)?,
                "REPLACEFINISHED" => task.replace_finished = true,
                "DELAY" | "RUNAT" if scheduled => {
                    return Err(VtError::syntax("DELAY and RUNAT cannot be combined"))
                }
                "DELAY" => {
                    task.when = When::Delay(a.next_int("DELAY", 0, MAX_DURATION_MS)?);
                    scheduled = true;
                }
                "RUNAT" => {
                    task.when = When::At(a.next_int("RUNAT", 0, MAX_TIMESTAMP_MS)?);
                    scheduled = true;
                }
                other => return Err(unknown_option(other)),
            }
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        return Err(VtError::syntax("expected at least one TASK"));
    }
    Ok(tasks)
}
