//! `NativeClient`: each method runs its command on the Tokio runtime. Given
//! a `Bridge` it returns a ticket at once and the result arrives through
//! the bridge (async callers); given `None` it waits, without holding the
//! GIL, and returns the result (sync callers).

use std::future::Future;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use vtasks_client::schedule::{CatchUp, Schedule, Spec};
use vtasks_client::wire::{BlockingEnqueuer, Endpoint};
use vtasks_client::{
    payload, Client, ClientOptions, Error, NewTask, Partitions, QueueName, WaitReplicas, When,
};

use crate::bridge::{to_python, Bridge, Reply};
use crate::errors::to_pyerr;
use crate::runtime;

#[pyclass(frozen, module = "vtasks._native")]
pub struct NativeClient {
    pub client: Client,
    /// Connections of its own for blocking enqueues (`wire.rs`).
    blocking: BlockingEnqueuer,
}

/// Blocking enqueues that may run at once on connections of their own;
/// more wait for the client's connection.
const BLOCKING_CONNECTIONS: usize = 4;

/// Runs `work` through the bridge (returns a ticket) or to completion.
pub fn dispatch<F>(py: Python<'_>, bridge: Option<&Bridge>, work: F) -> PyResult<Py<PyAny>>
where
    F: Future<Output = Result<Reply, Error>> + Send + 'static,
{
    match bridge {
        Some(bridge) => Ok(bridge.spawn(work).into_pyobject(py)?.into_any().unbind()),
        None => {
            let reply = py.detach(|| runtime().block_on(work)).map_err(to_pyerr)?;
            to_python(py, reply)
        }
    }
}

fn queue(name: &str) -> PyResult<QueueName> {
    QueueName::new(name).map_err(to_pyerr)
}

/// A task as Python passes it: (id, payload, priority, delay_ms, run_at_ms, max_attempts).
type TaskTuple = (String, Vec<u8>, i32, Option<u64>, Option<u64>, Option<u32>);

fn new_tasks(
    tasks: Vec<TaskTuple>,
    replace_finished: bool,
    max_lost_leases: Option<u32>,
) -> PyResult<Vec<NewTask>> {
    tasks
        .into_iter()
        .map(|(id, body, priority, delay, run_at, attempts)| {
            Ok(NewTask {
                priority,
                when: match (delay, run_at) {
                    (_, Some(at)) => When::At(at),
                    (Some(ms), None) => When::After(Duration::from_millis(ms)),
                    (None, None) => When::Now,
                },
                max_attempts: attempts,
                max_lost_leases,
                replace_finished,
                ..NewTask::new(id, payload::compress(body).map_err(to_pyerr)?)
            })
        })
        .collect()
}

#[pymethods]
impl NativeClient {
    #[new]
    #[pyo3(signature = (url, connect_timeout=5.0, response_timeout=10.0, engine="auto", wait_replicas=0, wait_timeout=1.0, cluster=false, partitions=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: String,
        connect_timeout: f64,
        response_timeout: f64,
        engine: &str,
        wait_replicas: u32,
        wait_timeout: f64,
        cluster: bool,
        partitions: Option<Vec<(String, u16)>>,
    ) -> PyResult<Self> {
        let partitions = partitions.unwrap_or_default();
        let partitions =
            Partitions::new(partitions.iter().map(|(q, n)| (q.as_str(), *n))).map_err(to_pyerr)?;
        let options = ClientOptions {
            cluster,
            partitions,
            connect_timeout: Duration::from_secs_f64(connect_timeout.max(0.001)),
            response_timeout: Duration::from_secs_f64(response_timeout.max(0.001)),
            engine: engine.parse().map_err(to_pyerr)?,
            wait_replicas: (wait_replicas > 0).then(|| WaitReplicas {
                replicas: wait_replicas,
                timeout: Duration::from_secs_f64(wait_timeout.max(0.001)),
            }),
            ..ClientOptions::new(url)
        };
        let client = py
            .detach(|| runtime().block_on(Client::connect_with(options)))
            .map_err(to_pyerr)?;
        let blocking = BlockingEnqueuer::new(&client, BLOCKING_CONNECTIONS);
        Ok(NativeClient { client, blocking })
    }

    /// The partition of `queue_name` a task with this id lives in (the
    /// queue itself unless it is partitioned), without braces.
    fn partition_of(&self, queue_name: &str, id: &str) -> PyResult<String> {
        let queue = queue(queue_name)?;
        Ok(self
            .client
            .partitions()
            .of_task(&queue, id)
            .name()
            .to_string())
    }

    /// The queue a partition belongs to (any other queue is its own).
    fn logical_queue(&self, queue_name: &str) -> PyResult<String> {
        let queue = queue(queue_name)?;
        Ok(self.client.partitions().logical(&queue).name().to_string())
    }

    /// Every partition of `queue_name`, partition 0 (the queue) first.
    fn partitions_of(&self, queue_name: &str) -> PyResult<Vec<String>> {
        let queue = queue(queue_name)?;
        Ok(self
            .client
            .partitions()
            .all(&queue)
            .iter()
            .map(|q| q.name().to_string())
            .collect())
    }

    /// Whether the client talks to a Valkey Cluster.
    #[getter]
    fn cluster(&self) -> bool {
        self.client.is_cluster()
    }

    /// The engine in use: "module" or "scripts".
    #[getter]
    fn engine(&self) -> &'static str {
        self.client.engine().as_str()
    }

    /// `max_lost_leases` applies to every task of the call (None: the
    /// server's default).
    /// A blocking call (no bridge) with `own_connection` takes one of the
    /// client's blocking connections when one is free (`wire.rs`).
    #[pyo3(signature = (bridge, queue_name, tasks, maxlen=None, replace_finished=false, max_lost_leases=None, own_connection=false))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
        tasks: Vec<TaskTuple>,
        maxlen: Option<u64>,
        replace_finished: bool,
        max_lost_leases: Option<u32>,
        own_connection: bool,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let tasks = new_tasks(tasks, replace_finished, max_lost_leases)?;
        if bridge.is_none() && own_connection {
            let request = self
                .client
                .enqueue_request(&queue, &tasks, maxlen)
                .map_err(to_pyerr)?;
            let engine = self.client.engine();
            let sent = py.detach(|| self.blocking.enqueue(&request, tasks.len(), engine));
            if let Some(outcome) = sent {
                return to_python(py, Reply::Bools(outcome.map_err(to_pyerr)?));
            }
        }
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client
                .enqueue_many(&queue, &tasks, maxlen)
                .await
                .map(Reply::Bools)
        })
    }

    /// Where a connection of the caller's own may connect to send
    /// enqueues (`wire.rs` in the client crate): `("tcp", host, port)`,
    /// `("unix", path, 0)`, or None when only this client's connection
    /// will do (TLS, enqueues that wait for replicas).
    fn own_connection_endpoint(&self) -> Option<(&'static str, String, u16)> {
        self.client
            .own_connection_endpoint()
            .map(|endpoint| match endpoint {
                Endpoint::Tcp { host, port } => ("tcp", host, port),
                Endpoint::Unix { path } => ("unix", path, 0),
            })
    }

    /// What such a connection sends first (`AUTH`, `SELECT`), and how
    /// many `OK` replies it gets.
    fn own_connection_handshake<'py>(&self, py: Python<'py>) -> (Bound<'py, PyBytes>, usize) {
        let (bytes, count) = self.client.own_connection_handshake();
        (PyBytes::new(py, &bytes), count)
    }

    /// An enqueue (as `enqueue` takes it) as the bytes such a connection
    /// writes, for the engine in use.
    #[pyo3(signature = (queue_name, tasks, maxlen=None, replace_finished=false, max_lost_leases=None))]
    fn enqueue_request<'py>(
        &self,
        py: Python<'py>,
        queue_name: &str,
        tasks: Vec<TaskTuple>,
        maxlen: Option<u64>,
        replace_finished: bool,
        max_lost_leases: Option<u32>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let queue = queue(queue_name)?;
        let tasks = new_tasks(tasks, replace_finished, max_lost_leases)?;
        let bytes = self
            .client
            .enqueue_request(&queue, &tasks, maxlen)
            .map_err(to_pyerr)?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn get(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
        id: String,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client
                .get(&queue, &id)
                .await
                .map(|info| Reply::Task(info.map(Box::new)))
        })
    }

    fn stats(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client.stats(&queue).await.map(|s| Reply::Stats(s.values))
        })
    }

    #[pyo3(signature = (bridge, queue_name, offset=0, count=100))]
    fn dead_letters(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
        offset: u64,
        count: u64,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client
                .dead_letters(&queue, offset, count)
                .await
                .map(Reply::Dead)
        })
    }

    #[pyo3(signature = (bridge, queue_name, ids=None))]
    fn requeue_dead(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
        ids: Option<Vec<String>>,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client
                .requeue_dead(&queue, ids.as_deref())
                .await
                .map(|n| Reply::Int(n as i64))
        })
    }

    #[pyo3(signature = (bridge, queue_name, ids=None))]
    fn purge_dead(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
        ids: Option<Vec<String>>,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client
                .purge_dead(&queue, ids.as_deref())
                .await
                .map(|n| Reply::Int(n as i64))
        })
    }

    fn pause(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client.pause(&queue).await.map(|_| Reply::None)
        })
    }

    fn resume(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client.resume(&queue).await.map(|_| Reply::None)
        })
    }

    fn cancel(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
        ids: Vec<String>,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client.cancel(&queue, &ids).await.map(Reply::Bools)
        })
    }

    /// Deletes up to 10,000 waiting tasks (`VTASKS.CLEAR`); how many.
    fn clear_queue(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client.clear(&queue).await.map(|n| Reply::Int(n as i64))
        })
    }

    /// Adds or changes a schedule; "added", "changed" or "unchanged".
    /// `timing` is the text form (`schedule_timing` builds it).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (bridge, queue_name, name, timing, payload, priority=0, max_attempts=3, catch_up="last", enabled=true))]
    fn set_schedule(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
        name: String,
        timing: &str,
        payload: Vec<u8>,
        priority: i32,
        max_attempts: u32,
        catch_up: &str,
        enabled: bool,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let spec = Spec::parse(timing).map_err(|e| to_pyerr(Error::InvalidInput(e.0)))?;
        let mut schedule = Schedule::new(name, spec, payload);
        schedule.priority = priority;
        schedule.max_attempts = max_attempts;
        schedule.catch_up = CatchUp::parse(catch_up).map_err(to_pyerr)?;
        schedule.enabled = enabled;
        // Refused here, before anything is sent.
        schedule
            .validate(vtasks_client::schedule::now_ms())
            .map_err(to_pyerr)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            let outcome = client.set_schedule(&queue, &schedule).await?;
            Ok(Reply::Text(Some(
                match outcome {
                    vtasks_client::SetOutcome::Added => "added",
                    vtasks_client::SetOutcome::Changed => "changed",
                    vtasks_client::SetOutcome::Unchanged => "unchanged",
                }
                .to_string(),
            )))
        })
    }

    /// Removes schedules by name; how many there were.
    fn unschedule(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
        names: Vec<String>,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client
                .unschedule(&queue, &names)
                .await
                .map(|n| Reply::Int(n as i64))
        })
    }

    /// A queue's schedules as dicts, by name.
    fn schedules(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        queue_name: &str,
    ) -> PyResult<Py<PyAny>> {
        let queue = queue(queue_name)?;
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client.schedules(&queue).await.map(Reply::Schedules)
        })
    }

    fn has_module(&self, py: Python<'_>, bridge: Option<&Bridge>) -> PyResult<Py<PyAny>> {
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            client.has_module().await.map(Reply::Bool)
        })
    }

    /// A warning naming the server's `maxmemory-policy` and the fix when
    /// that policy can evict task data, else None (read now, `INFO memory`).
    fn eviction_warning(&self, py: Python<'_>, bridge: Option<&Bridge>) -> PyResult<Py<PyAny>> {
        let client = self.client.clone();
        dispatch(py, bridge, async move {
            let policy = client.memory_policy().await?;
            Ok(Reply::Text(policy.and_then(|p| p.eviction_warning())))
        })
    }
}

/// The text form of a schedule's timing from `cron` (5 or 6 fields, 6 with
/// seconds first) in `timezone`, or from `every` seconds; ValueError with
/// the reason if invalid.
#[pyfunction]
#[pyo3(signature = (cron=None, every=None, timezone="UTC"))]
pub fn schedule_timing(cron: Option<&str>, every: Option<u64>, timezone: &str) -> PyResult<String> {
    let spec = match (cron, every) {
        (Some(cron), None) => Spec::cron(cron, timezone),
        (None, Some(every)) => Spec::every(every),
        _ => {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "a schedule needs exactly one of cron and every",
            ))
        }
    }
    .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.0))?;
    Ok(spec.text())
}

/// The first occurrence of a timing (text form) strictly after `after_ms`
/// (unix ms), or None if there is none.
#[pyfunction]
pub fn next_occurrence(timing: &str, after_ms: i64) -> PyResult<Option<i64>> {
    let spec = Spec::parse(timing).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.0))?;
    Ok(spec.next_after(after_ms))
}
