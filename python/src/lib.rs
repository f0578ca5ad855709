//! `vtasks._native`: the thin boundary between Python and the Rust client.
//! It translates types, bridges futures and maps errors; the queue logic is
//! in `vtasks-client`, where Rust tests reach it.

mod bridge;
mod call;
mod client;
mod errors;
mod threads;
mod wire;
mod worker;

use std::sync::OnceLock;

use pyo3::prelude::*;

/// One Tokio runtime per process, shared by every client and worker.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vtasks-io")
            .enable_all()
            .build()
            .expect("a Tokio runtime")
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<bridge::Bridge>()?;
    m.add_class::<client::NativeClient>()?;
    m.add_class::<worker::NativeWorker>()?;
    m.add_class::<wire::ReplyReader>()?;
    m.add_class::<threads::ThreadSchedstat>()?;
    m.add_function(wrap_pyfunction!(client::schedule_timing, m)?)?;
    m.add_function(wrap_pyfunction!(client::next_occurrence, m)?)?;
    m.add_function(wrap_pyfunction!(call::decode_call_py, m)?)?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The protocol's limits and defaults by name (`vtasks-protocol`), so the
    // Python package validates with the numbers the engines check.
    let limits = pyo3::types::PyDict::new(m.py());
    for (name, value) in vtasks_protocol::LIMITS {
        limits.set_item(name, value)?;
    }
    m.add("LIMITS", limits)?;
    // How long a producer polls for an enqueue's reply before it sleeps,
    // and how many enqueues go without polling after one that overran it
    // (`wire.rs` in the client crate); the event loop's own connection
    // (`vtasks._wire`) follows the same rule.
    m.add("SPIN_FOR", vtasks_client::wire::SPIN_FOR.as_secs_f64())?;
    m.add("SPIN_PAUSE", vtasks_client::wire::SPIN_PAUSE)?;
    Ok(())
}
