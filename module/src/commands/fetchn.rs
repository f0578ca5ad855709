use redis_module::{Context, ContextFlags, RedisResult, RedisString, RedisValue};
use redis_module_macros::command;

use super::{bulk, clock_and_args, replicate, statuses, to_reply, Clock};
use crate::args::Args;
use crate::blocking::{self, Pending};
use crate::core::error::VtResult;
use crate::core::keys::*;
use crate::core::native::TaskQueue;
use crate::core::queue::{Leased, NackOutcome, Settled};
use crate::guard;
use crate::parse::{FetchCall, FetchRequest};
use crate::queue_key::QueueAccess;
use crate::server_time;

/// VTASKS.FETCHN <numqueues> <queue> [<queue> ...] CONSUMER <name> [COUNT <n>] [LEASE <ms>] [BLOCK <ms>] [KEEP <ms>] [ACK <n> <queue> <id> <token> <result> ...] [NACK <n> <queue> <id> <token> <retry-delay-ms | DEAD> <error> ...]
#[command({
    name: "VTASKS.FETCHN",
    flags: [Write],
    arity: -5,
    summary: "Settles finished tasks and leases up to COUNT ready tasks, blocking until one is ready",
    complexity: "O((N + A) log M) for N fetched and A settled tasks",
    since: "0.1.0",
    acl_categories: [Write, Slow, Blocking, Single("vtasks")],
    key_spec: [{
        notes: "the queues to fetch from, in order of preference",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 1 }),
        find_keys: Keynum({ key_num_idx: 0, first_key: 1, key_step: 1 }),
    }, {
        notes: "the first queue again, by position",
        flags: [ReadWrite, Update],
        begin_search: Index({ index: 2 }),
        find_keys: Range({ last_key: 0, steps: 1, limit: 0 }),
    }],
})]
fn vtasks_fetchn(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let raw_args: Vec<&[u8]> = args.iter().skip(1).map(|a| a.as_slice()).collect();
    to_reply(guard(|| {
        let (now, parse_args) = clock_and_args(ctx, &raw_args, Clock::AtEnd)?;
        let call = FetchCall::parse(&mut Args::new(&parse_args))?;
        let mut queues = Queues::new(ctx, &call.request.queues);
        forget_settled(&call);
        let outcome = settle(&mut queues, &call, now).and_then(|(acks, nacks)| {
            Ok((
                acks,
                nacks,
                fetch_ready(ctx, &mut queues, &call.request, now)?,
            ))
        });
        if queues.finish() {
            // Replicas never block: BLOCK is left out of the replicated form.
            let skip = call.block_at.map(|i| vec![i, i + 1]).unwrap_or_default();
            replicate(
                ctx,
                &args[0],
                &args[1..],
                Some(parse_args.len()),
                now,
                &skip,
            );
        }
        let (acks, nacks, tasks) = outcome?;
        let may_block = !ctx
            .get_flags()
            .intersects(ContextFlags::MULTI | ContextFlags::LUA | ContextFlags::DENY_BLOCKING);
        // A watched queue that got a task since the caller last looked
        // (`WAKE <ms>`) ends the wait before it starts.
        let woken = !call.wake.is_empty()
            && blocking::ready_since(&call.wake, now.saturating_sub(call.wake_since_ms));
        match call.block_ms {
            Some(timeout) if tasks.is_empty() && may_block && !woken => {
                let pending = Pending::new(call.request, acks, nacks, call.wake);
                blocking::block(ctx, pending, timeout);
                Ok(RedisValue::NoReply)
            }
            _ => Ok(fetch_reply(&call.request.queues, tasks, acks, nacks)),
        }
    }))
}

/// The queues of one FETCHN, each opened once however often it is named.
pub struct Queues<'c> {
    access: Vec<QueueAccess<'c>>,
    /// For each queue argument, its entry in `access`.
    of_arg: Vec<usize>,
}

impl<'c> Queues<'c> {
    pub fn new(ctx: &'c Context, queues: &[QueueKeys]) -> Self {
        let mut access: Vec<QueueAccess> = Vec::with_capacity(queues.len());
        let mut of_arg = Vec::with_capacity(queues.len());
        for keys in queues {
            match access.iter().position(|a| a.keys() == keys) {
                Some(i) => of_arg.push(i),
                None => {
                    of_arg.push(access.len());
                    access.push(QueueAccess::new(ctx, keys.clone()));
                }
            }
        }
        Queues { access, of_arg }
    }

    /// The queue named by argument `qi`, if it exists.
    fn queue(&mut self, qi: usize) -> VtResult<Option<&mut TaskQueue>> {
        self.access[self.of_arg[qi]].queue()
    }

    /// Finishes every queue; true if any changed.
    pub fn finish(self) -> bool {
        self.access
            .into_iter()
            .fold(false, |changed, access| access.finish() | changed)
    }
}

/// Applies the call's ACKs and NACKs, one core call per queue, and returns
/// their outcomes in the order given.
fn settle(queues: &mut Queues, call: &FetchCall, now: i64) -> VtResult<(RedisValue, RedisValue)> {
    let mut ack_out = vec![Settled::NoTask; call.acks.len()];
    let mut nack_out = vec![NackOutcome::Refused(Settled::NoTask); call.nacks.len()];
    for qi in 0..call.request.queues.len() {
        let (positions, items) = of_queue(&call.acks, qi);
        if !items.is_empty() {
            if let Some(queue) = queues.queue(qi)? {
                let outcomes = queue.ack(&items, call.keep_ms, now);
                for (pos, outcome) in positions.into_iter().zip(outcomes) {
                    ack_out[pos] = outcome;
                }
            }
        }
        let (positions, items) = of_queue(&call.nacks, qi);
        if !items.is_empty() {
            if let Some(queue) = queues.queue(qi)? {
                let outcomes = queue.nack(&items, now)?;
                for (pos, outcome) in positions.into_iter().zip(outcomes) {
                    nack_out[pos] = outcome;
                }
            }
        }
    }
    Ok((
        statuses(ack_out, Settled::as_str),
        statuses(nack_out, NackOutcome::as_str),
    ))
}

/// The leases the call settles are no longer held by anyone (a settlement
/// under a stale token leaves the current holder in place).
fn forget_settled(call: &FetchCall) {
    let queues = &call.request.queues;
    server_time::with_holders(|h| {
        for (qi, item) in &call.acks {
            h.settled(queues[*qi].queue(), item.id, item.token);
        }
        for (qi, item) in &call.nacks {
            h.settled(queues[*qi].queue(), item.id, item.token);
        }
    });
}

/// The items that settle tasks of queue `qi`, with their places in the call.
fn of_queue<T: Clone>(items: &[(usize, T)], qi: usize) -> (Vec<usize>, Vec<T>) {
    items
        .iter()
        .enumerate()
        .filter(|(_, (q, _))| *q == qi)
        .map(|(pos, (_, item))| (pos, item.clone()))
        .unzip()
}

/// Leases up to `count` tasks across the queues in order, after running any
/// maintenance that is due on each (so nothing waits for the timer). The
/// leases are held by the calling connection: if it closes, they are cut
/// to a short grace (`server_time`).
pub fn fetch_ready(
    ctx: &Context,
    queues: &mut Queues,
    request: &FetchRequest,
    now: i64,
) -> VtResult<Vec<(usize, Leased)>> {
    let holder = server_time::lease_holder(ctx);
    let tasks = lease_from_queues(queues, request, now)?;
    if let Some(client) = holder {
        server_time::with_holders(|h| {
            for (qi, task) in &tasks {
                h.took(client, request.queues[*qi].queue(), &task.id, task.token);
            }
        });
    }
    Ok(tasks)
}

fn lease_from_queues(
    queues: &mut Queues,
    request: &FetchRequest,
    now: i64,
) -> VtResult<Vec<(usize, Leased)>> {
    let mut tasks = Vec::new();
    for qi in 0..request.queues.len() {
        let Some(queue) = queues.queue(qi)? else {
            continue;
        };
        queue.maintain(now, MAINTENANCE_BATCH)?;
        let wanted = request.count - tasks.len();
        if wanted > 0 {
            let leased = queue.fetch(&request.consumer, wanted, request.lease_ms, now);
            tasks.extend(leased.into_iter().map(|l| (qi, l)));
        }
    }
    Ok(tasks)
}

/// `[[queue, id, token, attempt, payload] ...], [ack outcomes], [nack outcomes]`
pub fn fetch_reply(
    queues: &[QueueKeys],
    tasks: Vec<(usize, Leased)>,
    acks: RedisValue,
    nacks: RedisValue,
) -> RedisValue {
    let tasks = tasks
        .into_iter()
        .map(|(qi, task)| {
            RedisValue::Array(vec![
                bulk(queues[qi].queue()),
                bulk(task.id),
                RedisValue::Integer(task.token),
                RedisValue::Integer(task.attempt),
                bulk(task.payload),
            ])
        })
        .collect();
    RedisValue::Array(vec![RedisValue::Array(tasks), acks, nacks])
}

/// Replicates the fetch a woken consumer made, as the FETCHN it amounts to.
pub fn replicate_woken_fetch(ctx: &Context, request: &FetchRequest, now: i64) {
    let mut words: Vec<Vec<u8>> = vec![request.queues.len().to_string().into_bytes()];
    words.extend(request.queues.iter().map(|k| k.queue().to_vec()));
    words.extend([
        b"CONSUMER".to_vec(),
        request.consumer.clone(),
        b"COUNT".to_vec(),
        request.count.to_string().into_bytes(),
        b"LEASE".to_vec(),
        request.lease_ms.to_string().into_bytes(),
    ]);
    let args: Vec<RedisString> = words.into_iter().map(|w| ctx.create_string(w)).collect();
    let name = ctx.create_string("VTASKS.FETCHN");
    replicate(ctx, &name, &args, Some(args.len()), now, &[]);
}
