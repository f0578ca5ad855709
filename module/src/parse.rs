//! Argument parsing of the commands that take structured arguments, kept
//! free of FFI so it can be tested (and fuzzed, `parse_fuzz`) without a
//! server. The command layer calls these and does the rest.

use crate::args::{parse_int, unknown_option, Args};
use crate::core::error::{VtError, VtResult};
use crate::core::keys::*;
use crate::core::periodic::{CatchUp, Definition};
use crate::core::queue::{AckItem, LeaseRef, NackItem, NewTask, Retry, Selection, When};

/// Reads an item count and checks that the items it announces are there.
pub fn item_count(a: &mut Args, what: &'static str, width: usize) -> VtResult<usize> {
    let n = a.next_int("item count", 1, MAX_FETCH_COUNT * 10)? as usize;
    if a.remaining() < n * width {
        return Err(VtError::syntax(format!(
            "{what} announces {n} items of {width} arguments but only {} arguments follow",
            a.remaining()
        )));
    }
    Ok(n)
}

pub fn parse_token(a: &mut Args) -> VtResult<i64> {
    a.next_int("token", 1, i64::MAX)
}

pub fn parse_ack_item<'a>(a: &mut Args<'a>) -> VtResult<AckItem<'a>> {
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

pub fn parse_nack_item<'a>(a: &mut Args<'a>) -> VtResult<NackItem<'a>> {
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

pub fn parse_lease_refs<'a>(a: &mut Args<'a>, what: &'static str) -> VtResult<Vec<LeaseRef<'a>>> {
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

pub fn parse_tasks<'a>(a: &mut Args<'a>) -> VtResult<Vec<NewTask<'a>>> {
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
                "LOSTLEASES" => {
                    task.max_lost_leases = a.next_int("LOSTLEASES", 1, MAX_LOST_LEASES)?
                }
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

pub fn parse_selection<'a>(a: &mut Args<'a>) -> VtResult<Selection<'a>> {
    match a.next_keyword().as_deref() {
        Some("ALL") => {
            a.finish()?;
            Ok(Selection::All)
        }
        Some("IDS") => {
            let mut ids = Vec::new();
            while !a.is_empty() {
                let id = a.next_bytes("task id")?;
                validate_id(id)?;
                ids.push(id);
            }
            if ids.is_empty() {
                return Err(VtError::syntax("IDS needs at least one task id"));
            }
            Ok(Selection::Ids(ids))
        }
        _ => Err(VtError::syntax("expected ALL or IDS <id> [<id> ...]")),
    }
}

/// What a consumer asked for, kept while it is blocked.
pub struct FetchRequest {
    pub queues: Vec<QueueKeys>,
    pub consumer: Vec<u8>,
    pub count: usize,
    pub lease_ms: i64,
}

/// A parsed FETCHN.
pub struct FetchCall<'a> {
    pub request: FetchRequest,
    pub block_ms: Option<i64>,
    /// Index of the BLOCK option among the arguments.
    pub block_at: Option<usize>,
    pub keep_ms: i64,
    pub acks: Vec<(usize, AckItem<'a>)>,
    pub nacks: Vec<(usize, NackItem<'a>)>,
    /// Queues (`{name}`) of other slots whose new ready tasks end a
    /// blocked wait early (`WAKE`): not keys of the command, never read or
    /// written by it.
    pub wake: Vec<Vec<u8>>,
    /// How far back (ms) a task becoming ready in a WAKE queue counts.
    pub wake_since_ms: i64,
}

impl<'a> FetchCall<'a> {
    pub fn parse(a: &mut Args<'a>) -> VtResult<Self> {
        let n = a.next_int("numqueues", 1, MAX_QUEUES)?;
        let mut queues = Vec::with_capacity(n as usize);
        for _ in 0..n {
            queues.push(QueueKeys::parse(a.next_bytes("queue")?)?);
        }
        let mut call = FetchCall {
            request: FetchRequest {
                queues,
                consumer: Vec::new(),
                count: 1,
                lease_ms: DEFAULT_LEASE_MS,
            },
            block_ms: None,
            block_at: None,
            keep_ms: DEFAULT_KEEP_MS,
            acks: Vec::new(),
            nacks: Vec::new(),
            wake: Vec::new(),
            wake_since_ms: 0,
        };
        while let Some(option) = a.next_keyword() {
            match option.as_str() {
                "CONSUMER" => {
                    let name = a.next_bytes("CONSUMER")?;
                    validate_consumer(name)?;
                    call.request.consumer = name.to_vec();
                }
                "COUNT" => call.request.count = a.next_int("COUNT", 1, MAX_FETCH_COUNT)? as usize,
                "LEASE" => call.request.lease_ms = a.next_int("LEASE", 1, MAX_DURATION_MS)?,
                "BLOCK" => {
                    call.block_at = Some(a.position() - 1);
                    call.block_ms = Some(a.next_int("BLOCK", 0, MAX_DURATION_MS)?);
                }
                "KEEP" => call.keep_ms = a.next_int("KEEP", 0, MAX_DURATION_MS)?,
                "WAKE" => {
                    call.wake_since_ms = a.next_int("WAKE", 0, MAX_DURATION_MS)?;
                    let n = a.next_int("WAKE queue count", 1, MAX_QUEUES)?;
                    for _ in 0..n {
                        let queue = a.next_bytes("queue")?;
                        call.wake.push(QueueKeys::parse(queue)?.queue().to_vec());
                    }
                }
                "ACK" => {
                    for _ in 0..item_count(a, "ACK", 4)? {
                        let queue = call.queue_index(a.next_bytes("queue")?)?;
                        call.acks.push((queue, parse_ack_item(a)?));
                    }
                }
                "NACK" => {
                    for _ in 0..item_count(a, "NACK", 5)? {
                        let queue = call.queue_index(a.next_bytes("queue")?)?;
                        call.nacks.push((queue, parse_nack_item(a)?));
                    }
                }
                other => return Err(unknown_option(other)),
            }
        }
        if call.request.consumer.is_empty() {
            return Err(VtError::syntax("CONSUMER <name> is required"));
        }
        Ok(call)
    }

    /// Settled tasks must belong to a queue the call declares as a key, so
    /// ACLs and cluster routing see every key the command touches.
    fn queue_index(&self, queue: &[u8]) -> VtResult<usize> {
        self.request
            .queues
            .iter()
            .position(|k| k.queue() == queue)
            .ok_or_else(|| VtError::UndeclaredQueue(crate::core::error::shown(queue)))
    }
}

/// The arguments of `VTASKS.SCHEDULE` after the queue: the name, the
/// definition and the first occurrence (`NEXT`).
pub fn parse_schedule<'a>(a: &mut Args<'a>) -> VtResult<(&'a [u8], Definition, i64)> {
    let name = a.next_bytes("schedule name")?;
    validate_schedule_name(name)?;
    let spec = a.next_bytes("timing")?;
    validate_schedule_spec(spec)?;
    let payload = a.next_bytes("payload")?;
    if payload.len() > MAX_SCHEDULE_PAYLOAD {
        return Err(VtError::TooLarge {
            what: "schedule payload",
            size: payload.len(),
            limit: MAX_SCHEDULE_PAYLOAD,
        });
    }
    let mut def = Definition {
        spec: spec.to_vec(),
        payload: payload.to_vec(),
        priority: 0,
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        catch_up: CatchUp::Last,
        enabled: true,
    };
    let mut next = None;
    while let Some(option) = a.next_keyword() {
        match option.as_str() {
            "NEXT" => next = Some(a.next_int("NEXT", 0, MAX_TIMESTAMP_MS)?),
            "PRIORITY" => def.priority = a.next_int("PRIORITY", MIN_PRIORITY, MAX_PRIORITY)?,
            "ATTEMPTS" => def.max_attempts = a.next_int("ATTEMPTS", 1, MAX_ATTEMPTS)?,
            "CATCHUP" => {
                def.catch_up = match a.next_keyword().as_deref() {
                    Some("LAST") => CatchUp::Last,
                    Some("NONE") => CatchUp::None,
                    _ => return Err(VtError::syntax("CATCHUP must be LAST or NONE")),
                }
            }
            "DISABLED" => def.enabled = false,
            other => return Err(unknown_option(other)),
        }
    }
    let next = next.ok_or_else(|| VtError::syntax("NEXT <unix-ms> is required"))?;
    Ok((name, def, next))
}
