//! `ReplyReader`: the replies of a connection the event loop owns
//! (`vtasks._wire`), read as the client reads them (`wire.rs` in the
//! client crate).

use pyo3::prelude::*;
use vtasks_client::wire::{self, EnqueueReply};
use vtasks_client::Engine;

use crate::bridge::{to_python, Reply};
use crate::errors::to_pyerr;

#[pyclass(module = "vtasks._native")]
pub struct ReplyReader {
    reader: wire::ReplyReader,
}

#[pymethods]
impl ReplyReader {
    #[new]
    fn new() -> Self {
        ReplyReader {
            reader: wire::ReplyReader::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.reader.feed(data);
    }

    /// The next whole reply, read as the reply to an enqueue of `count`
    /// tasks with `engine`: `(True, [added, ...])`, `(False, exception)`,
    /// or `(None, None)` when the client must send it instead (nothing
    /// ran); None if no whole reply has arrived. An unreadable stream
    /// raises `ProtocolError`.
    fn next_enqueue(
        &mut self,
        py: Python<'_>,
        count: usize,
        engine: &str,
    ) -> PyResult<Option<(Option<bool>, Py<PyAny>)>> {
        let engine = if engine == "scripts" {
            Engine::Scripts
        } else {
            Engine::Module
        };
        let Some(reply) = self.reader.next_enqueue(count, engine) else {
            return Ok(None);
        };
        Ok(Some(match reply.map_err(to_pyerr)? {
            EnqueueReply::Added(added) => (Some(true), to_python(py, Reply::Bools(added))?),
            EnqueueReply::Failed(err) => (Some(false), to_pyerr(err).into_value(py).into_any()),
            EnqueueReply::UseClient => (None, py.None()),
        }))
    }

    /// Whether a handshake's `OK` has arrived (False: not yet); raises the
    /// error the reply carries instead.
    fn next_handshake(&mut self) -> PyResult<bool> {
        match self.reader.next_handshake() {
            None => Ok(false),
            Some(outcome) => outcome.map(|()| true).map_err(to_pyerr),
        }
    }
}
