//! The asyncio bridge. Rust futures run on the Tokio runtime; each result
//! is pushed into a shared list and, when the list goes from empty to
//! non-empty, one byte is written to a socket the event loop watches
//! (`loop.add_reader`). The loop then takes every finished result in one
//! `drain()` call and resolves their futures, so a burst of completions
//! costs one wake-up and one crossing of the boundary, not one each.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use vtasks_client::{payload, DeadTask, Delivery, Error, ScheduleInfo, Status, TaskInfo};

use crate::errors::to_pyerr;
use crate::runtime;

/// A finished operation's value, turned into Python objects on the loop.
pub enum Reply {
    None,
    Bool(bool),
    Bools(Vec<bool>),
    Int(i64),
    Words(Vec<&'static str>),
    Deliveries(Vec<Delivery>),
    /// Boxed: a task's fields are large beside the other replies.
    Task(Option<Box<TaskInfo>>),
    Stats(Vec<(String, i64)>),
    Dead(Vec<DeadTask>),
    Text(Option<String>),
    /// A state's name and what it says.
    State(&'static str, Option<String>),
    Schedules(Vec<ScheduleInfo>),
}

/// A ticket's outcome; `true` marks one item of a stream, more to come.
type Completion = (u64, Result<Reply, Error>, bool);

pub struct Shared {
    done: Mutex<Vec<Completion>>,
    signaled: AtomicBool,
    writer: UnixStream,
    reader: UnixStream,
    next_ticket: AtomicU64,
}

impl Shared {
    fn push(&self, completion: Completion) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(completion);
        if !self.signaled.swap(true, Ordering::AcqRel) {
            // A full socket buffer already means "wake up"; nothing is lost.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

#[pyclass(frozen, module = "vtasks._native")]
pub struct Bridge {
    pub shared: Arc<Shared>,
}

impl Bridge {
    /// Runs `work` on the runtime; returns the ticket its result will carry.
    pub fn spawn<F>(&self, work: F) -> u64
    where
        F: Future<Output = Result<Reply, Error>> + Send + 'static,
    {
        self.spawn_stream(|_| work)
    }

    /// As `spawn`, for work that also hands out items before its result
    /// (each through the `Items` it is given); they arrive under the same
    /// ticket, marked as items, in the order sent, before the result.
    pub fn spawn_stream<W, F>(&self, work: W) -> u64
    where
        W: FnOnce(Items) -> F,
        F: Future<Output = Result<Reply, Error>> + Send + 'static,
    {
        let ticket = self.shared.next_ticket.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let work = work(Items {
            shared: shared.clone(),
            ticket,
        });
        runtime().spawn(async move {
            let outcome = work.await;
            shared.push((ticket, outcome, false));
        });
        ticket
    }
}

/// Sends the items of a stream (`Bridge::spawn_stream`).
#[derive(Clone)]
pub struct Items {
    shared: Arc<Shared>,
    ticket: u64,
}

impl Items {
    pub fn send(&self, item: Reply) {
        self.shared.push((self.ticket, Ok(item), true));
    }
}

#[pymethods]
impl Bridge {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(Bridge {
            shared: Arc::new(Shared {
                done: Mutex::new(Vec::new()),
                signaled: AtomicBool::new(false),
                writer,
                reader,
                next_ticket: AtomicU64::new(1),
            }),
        })
    }

    /// The file descriptor the event loop watches.
    fn fileno(&self) -> i32 {
        self.shared.reader.as_raw_fd()
    }

    /// Every finished operation (and stream item) since the last call, as
    /// `(ticket, succeeded, value_or_exception, is_item)` tuples.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Order matters: consume the wake-up bytes, then clear the flag, then
        // take the results. A result pushed after the flag is cleared writes
        // a new byte, so it is never left without a wake-up.
        let mut sink = [0u8; 256];
        while matches!((&self.shared.reader).read(&mut sink), Ok(n) if n > 0) {}
        self.shared.signaled.store(false, Ordering::Release);
        let done = std::mem::take(&mut *self.shared.done.lock().unwrap_or_else(|p| p.into_inner()));
        let items = PyList::empty(py);
        for (ticket, outcome, item) in done {
            let (ok, value) = match outcome {
                Ok(reply) => (true, to_python(py, reply)?),
                Err(err) => (false, to_pyerr(err).into_value(py).into_any()),
            };
            items.append((ticket, ok, value, item))?;
        }
        Ok(items)
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Delayed => "delayed",
        Status::Ready => "ready",
        Status::Leased => "leased",
        Status::Done => "done",
        Status::Dead => "dead",
    }
}

pub fn to_python(py: Python<'_>, reply: Reply) -> PyResult<Py<PyAny>> {
    Ok(match reply {
        Reply::None => py.None(),
        Reply::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Reply::Int(n) => n.into_pyobject(py)?.into_any().unbind(),
        Reply::Bools(v) => PyList::new(py, v)?.into_any().unbind(),
        Reply::Words(v) => PyList::new(py, v)?.into_any().unbind(),
        Reply::Deliveries(tasks) => {
            let list = PyList::empty(py);
            for t in tasks {
                // The call, read here (`call`); a payload that does not
                // read as one goes to Python as it is (one that does not
                // decompress too), and the worker refuses it with the reason.
                let body = payload::json_text(&t.payload).unwrap_or(t.payload.as_slice().into());
                let call = match crate::call::decode_call(py, &body) {
                    Some(call) => call.into_any(),
                    None => PyBytes::new(py, &body).into_any(),
                };
                list.append((t.queue.name(), t.id, t.token, t.attempt, call))?;
            }
            list.into_any().unbind()
        }
        Reply::Task(None) | Reply::Text(None) => py.None(),
        Reply::Schedules(list) => {
            let out = PyList::empty(py);
            for s in list {
                let d = PyDict::new(py);
                d.set_item("name", s.name)?;
                d.set_item("timing", s.timing)?;
                d.set_item("payload", PyBytes::new(py, &s.payload))?;
                d.set_item("priority", s.priority)?;
                d.set_item("max_attempts", s.max_attempts)?;
                d.set_item("catch_up", s.catch_up.name())?;
                d.set_item("enabled", s.enabled)?;
                d.set_item("next", s.next)?;
                d.set_item("pending_since", s.pending_since)?;
                d.set_item("last", s.last)?;
                d.set_item("last_id", s.last_id)?;
                d.set_item("runs", s.runs)?;
                d.set_item("skipped", s.skipped)?;
                out.append(d)?;
            }
            out.into_any().unbind()
        }
        Reply::State(kind, detail) => (kind, detail).into_pyobject(py)?.into_any().unbind(),
        Reply::Text(Some(text)) => text.into_pyobject(py)?.into_any().unbind(),
        Reply::Task(Some(info)) => {
            let d = PyDict::new(py);
            d.set_item("status", status_name(info.status))?;
            d.set_item("priority", info.priority)?;
            d.set_item("attempts", info.attempts)?;
            d.set_item("max_attempts", info.max_attempts)?;
            d.set_item("failed_attempts", info.failed_attempts)?;
            d.set_item("lost_leases", info.lost_leases)?;
            d.set_item("max_lost_leases", info.max_lost_leases)?;
            d.set_item("enqueued_at", info.enqueued_at)?;
            d.set_item("run_at", info.run_at)?;
            d.set_item("started_at", info.started_at)?;
            d.set_item("leased_at", info.leased_at)?;
            d.set_item("deadline", info.deadline)?;
            d.set_item("finished_at", info.finished_at)?;
            d.set_item("consumer", info.consumer)?;
            d.set_item("workers", info.workers)?;
            d.set_item("error", info.error)?;
            let text = |b: &[u8]| {
                payload::json_text(b)
                    .map(|t| t.into_owned())
                    .unwrap_or_else(|_| b.to_vec())
            };
            d.set_item("result", info.result.map(|r| PyBytes::new(py, &text(&r))))?;
            d.set_item("payload", PyBytes::new(py, &text(&info.payload)))?;
            d.into_any().unbind()
        }
        Reply::Stats(values) => {
            let d = PyDict::new(py);
            for (name, value) in values {
                d.set_item(name, value)?;
            }
            d.into_any().unbind()
        }
        Reply::Dead(entries) => {
            let list = PyList::empty(py);
            for e in entries {
                list.append((e.id, e.dead_at, e.attempts, e.error))?;
            }
            list.into_any().unbind()
        }
    })
}
