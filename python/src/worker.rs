//! `NativeWorker`: the Rust worker core, driven from Python. Python asks
//! for batches through the bridge and reports each task's outcome with a
//! plain call; settlements travel with the next fetch. Lease renewal runs
//! on the Tokio runtime.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::{watch, Mutex as AsyncMutex};
use vtasks_client::ConnectionState;
use vtasks_client::{
    payload, BlockingFetcher, Delivery, Handoff, Offer, Outcome, QueueName, Retry, WorkerCore,
    WorkerOptions,
};

use crate::bridge::{to_python, Bridge, Reply};
use crate::client::{dispatch, NativeClient};
use crate::errors::to_pyerr;
use crate::runtime;

/// How long a batch waits for a task thread to come and take it before it
/// goes through the event loop instead (`Handoff`): the task threads are
/// all busy, perhaps with long tasks, and free slots should not wait.
const PARKED_FOR: Duration = Duration::from_millis(1);

#[pyclass(frozen, module = "vtasks._native")]
pub struct NativeWorker {
    core: WorkerCore,
    fetcher: Arc<AsyncMutex<BlockingFetcher>>,
    maintenance: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set by `close`: ends the waits of `connection_changed`.
    closed: watch::Sender<bool>,
    /// Batches for a task thread waiting in `take` (see `run`).
    handoff: Arc<Handoff<Vec<Delivery>>>,
}

fn delivery(queue: &str, id: String, token: i64) -> PyResult<Delivery> {
    Ok(Delivery {
        queue: QueueName::new(queue).map_err(to_pyerr)?,
        id,
        token,
        attempt: 0,
        payload: Vec::new(),
    })
}

#[pymethods]
impl NativeWorker {
    #[new]
    #[pyo3(signature = (client, queues, consumer, concurrency, lease, block, keep_results=None, burst=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        client: &NativeClient,
        queues: Vec<String>,
        consumer: String,
        concurrency: usize,
        lease: f64,
        block: f64,
        keep_results: Option<f64>,
        burst: bool,
    ) -> PyResult<Self> {
        let queues = queues
            .iter()
            .map(|q| QueueName::new(q))
            .collect::<Result<Vec<_>, _>>()
            .map_err(to_pyerr)?;
        let options = WorkerOptions {
            concurrency,
            lease: Duration::from_secs_f64(lease.max(0.0)),
            block: Duration::from_secs_f64(block.max(0.0)),
            keep_results: keep_results.map(|k| Duration::from_secs_f64(k.max(0.0))),
            burst,
            ..WorkerOptions::new(queues, consumer)
        };
        let core = WorkerCore::new(client.client.clone(), options).map_err(to_pyerr)?;
        let fetcher = client.client.blocking_fetcher();
        Ok(NativeWorker {
            core,
            fetcher: Arc::new(AsyncMutex::new(fetcher)),
            maintenance: std::sync::Mutex::new(None),
            closed: watch::Sender::new(false),
            handoff: Arc::new(Handoff::new()),
        })
    }

    /// Starts lease renewal and prompt settlement in the background.
    fn start(&self) {
        let mut slot = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let core = self.core.clone();
            *slot = Some(runtime().spawn(async move { core.maintain().await }));
        }
    }

    /// Runs the worker loop (`WorkerCore::fetch_loop`) on the runtime;
    /// returns its ticket. Each batch, `[(queue, id, token, attempt,
    /// payload)]`, goes to the task threads through `take` (see
    /// `Handoff`) or through the bridge as an item of that ticket; the
    /// result (None, or the error that ended it) comes after every batch,
    /// when no more will.
    fn run(&self, py: Python<'_>, bridge: &Bridge) -> PyResult<Py<PyAny>> {
        let core = self.core.clone();
        let fetcher = self.fetcher.clone();
        let handoff = self.handoff.clone();
        let ticket = bridge.spawn_stream(move |items| async move {
            let mut fetcher = fetcher.lock().await;
            let deliver = |batch| match handoff.offer(batch) {
                Offer::Handed => {}
                Offer::Declined(batch) => items.send(Reply::Deliveries(batch)),
                Offer::Parked(id) => {
                    let (handoff, items) = (handoff.clone(), items.clone());
                    runtime().spawn(async move {
                        tokio::time::sleep(PARKED_FOR).await;
                        handoff.unpark_with(id, |batch| items.send(Reply::Deliveries(batch)));
                    });
                }
            };
            let ended = core.fetch_loop(&mut fetcher, deliver).await;
            // Before the result: the loop reads no item after it.
            handoff.drain_parked_with(|batch| items.send(Reply::Deliveries(batch)));
            ended.map(|_| Reply::None)
        });
        Ok(ticket.into_pyobject(py)?.into_any().unbind())
    }

    /// A batch the worker loop parked for the task threads, or one it
    /// hands to this thread within `timeout` seconds (waited for without
    /// the GIL); a list as `run` describes. None when the time is up or
    /// after `close_handoff`. The caller records the batch, then calls
    /// `accepted`. `park`: whether batches that come while no thread waits
    /// wait for the next thread (short tasks) or go through the bridge.
    fn take(&self, py: Python<'_>, timeout: f64, park: bool) -> PyResult<Option<Py<PyAny>>> {
        let wait = Duration::from_secs_f64(timeout.max(0.0));
        // Without a wait, nothing blocks here but the handoff's own short
        // lock (never held by a thread that needs the GIL): keeping the GIL
        // spares a task thread a turn at taking it back, which costs
        // milliseconds while a hundred threads want it.
        let taken = if wait.is_zero() {
            self.handoff.take(wait, park)
        } else {
            py.detach(|| self.handoff.take(wait, park))
        };
        let Some(batch) = taken else {
            return Ok(None);
        };
        let tasks = to_python(py, Reply::Deliveries(batch));
        if tasks.is_err() {
            // Not recorded: never leave `close_handoff` waiting for it.
            self.handoff.accepted();
        }
        tasks.map(Some)
    }

    /// Whether batches that come while no thread waits in `take` wait for
    /// the next thread (until a `take` says again).
    fn set_parking(&self, park: bool) {
        self.handoff.set_parking(park);
    }

    /// Lets the worker hold `extra` tasks beyond its concurrency from now
    /// on (`WorkerCore::set_extra_capacity`).
    fn set_extra_capacity(&self, extra: usize) {
        self.core.set_extra_capacity(extra);
    }

    /// The batch from `take` is recorded.
    fn accepted(&self) {
        self.handoff.accepted();
    }

    /// Ends `take` for good: waits up to `patience` seconds, without the
    /// GIL, for taken batches to be recorded. Returns the tasks of the
    /// batches handed over but not taken (as one list), and whether every
    /// taken batch was recorded.
    fn close_handoff(&self, py: Python<'_>, patience: f64) -> PyResult<(Py<PyAny>, bool)> {
        let patience = Duration::from_secs_f64(patience.max(0.0));
        let (left, settled) = py.detach(|| self.handoff.close(patience));
        let tasks = to_python(py, Reply::Deliveries(left.into_iter().flatten().collect()))?;
        Ok((tasks, settled))
    }

    /// A task succeeded; `result` is its encoded result, if any. A result
    /// over the size limit once compressed raises `PayloadError` and
    /// records nothing: the caller reports the task with `failed`.
    #[pyo3(signature = (queue, id, token, result=None))]
    fn succeeded(
        &self,
        queue: &str,
        id: String,
        token: i64,
        result: Option<Vec<u8>>,
    ) -> PyResult<()> {
        let result = result
            .map(payload::compress)
            .transpose()
            .map_err(to_pyerr)?;
        // Refused here, before it reaches the batch of settlements, so the
        // caller can record why (`vtasks.PayloadError`).
        if let Some(bytes) = &result {
            payload::check_size("result", bytes).map_err(to_pyerr)?;
        }
        let queue = self.core.queue_named(queue).map_err(to_pyerr)?;
        self.core
            .complete_task(queue, id, token, Outcome::Success(result));
        Ok(())
    }

    /// A task failed: retried after `retry_in` seconds, or dead-lettered
    /// when `retry_in` is None (or its attempts are used up).
    #[pyo3(signature = (queue, id, token, error, retry_in=None))]
    fn failed(
        &self,
        queue: &str,
        id: String,
        token: i64,
        error: String,
        retry_in: Option<f64>,
    ) -> PyResult<()> {
        let retry = match retry_in {
            Some(secs) => Retry::After(Duration::from_secs_f64(secs.max(0.0))),
            None => Retry::Never,
        };
        let queue = self.core.queue_named(queue).map_err(to_pyerr)?;
        self.core
            .complete_task(queue, id, token, Outcome::Failure { error, retry });
        Ok(())
    }

    /// Gives back tasks fetched but never started: `[(queue, id, token)]`.
    fn release(
        &self,
        py: Python<'_>,
        bridge: Option<&Bridge>,
        tasks: Vec<(String, String, i64)>,
    ) -> PyResult<Py<PyAny>> {
        let deliveries = tasks
            .into_iter()
            .map(|(q, id, token)| delivery(&q, id, token))
            .collect::<PyResult<Vec<_>>>()?;
        let core = self.core.clone();
        dispatch(py, bridge, async move {
            core.release(&deliveries).await.map(|_| Reply::None)
        })
    }

    /// Stops fetching and ends a fetch waiting server-side.
    fn stop(&self, py: Python<'_>, bridge: Option<&Bridge>) -> PyResult<Py<PyAny>> {
        self.core.stop();
        dispatch(py, bridge, async move { Ok(Reply::None) })
    }

    /// Once the connection's state is other than `kind` (`"up"`, `"lost"`
    /// or `"full"`), or the worker is closed: the state's kind and, unless
    /// up, the error behind it.
    fn connection_changed(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        kind: String,
    ) -> PyResult<Py<PyAny>> {
        let mut connection = self.core.connection();
        let mut closed = self.closed.subscribe();
        dispatch(py, Some(bridge), async move {
            tokio::select! {
                _ = connection.wait_for(|c| c.kind() != kind) => {}
                _ = closed.wait_for(|closed| *closed) => {}
            }
            let state: ConnectionState = connection.borrow().clone();
            Ok(Reply::State(
                state.kind(),
                state.detail().map(str::to_string),
            ))
        })
    }

    /// Stops background duties, then sends pending settlements.
    fn close(&self, py: Python<'_>, bridge: Option<&Bridge>) -> PyResult<Py<PyAny>> {
        self.closed.send_replace(true);
        let maintenance = self
            .maintenance
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let core = self.core.clone();
        dispatch(py, bridge, async move {
            core.close(maintenance).await.map(|_| Reply::None)
        })
    }

    /// Stops (or resumes) fetching from one queue: its own limit is reached.
    fn hold_back(&self, queue: &str, held: bool) -> PyResult<()> {
        self.core
            .hold_back(&QueueName::new(queue).map_err(to_pyerr)?, held);
        Ok(())
    }

    fn running(&self) -> usize {
        self.core.running()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.core.stats();
        let d = PyDict::new(py);
        d.set_item("fetched", s.fetched)?;
        d.set_item("succeeded", s.succeeded)?;
        d.set_item("failed", s.failed)?;
        d.set_item("released", s.released)?;
        d.set_item("stale", s.stale)?;
        d.set_item("lost_leases", s.lost_leases)?;
        d.set_item("reconnects", s.reconnects)?;
        d.set_item("server_full", s.server_full)?;
        d.set_item("round_trips", s.round_trips)?;
        Ok(d)
    }
}
