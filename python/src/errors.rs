//! Rust errors as Python exceptions, one class per kind of failure. They
//! are defined in `_native` but belong to the public `vtasks` package (which
//! re-exports them), so their `__module__` is `vtasks`: a class path
//! recorded with a task's error (`vtasks.ConnectionFailed`) imports, and
//! the exceptions pickle.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use vtasks_client::Error;

create_exception!(
    vtasks,
    VtasksError,
    PyException,
    "Base class of vtasks errors."
);
create_exception!(
    vtasks,
    ConnectionFailed,
    VtasksError,
    "Valkey could not be reached, or the connection broke."
);
create_exception!(
    vtasks,
    ServerError,
    VtasksError,
    "Valkey answered with an error; `code` is its error code."
);
create_exception!(
    vtasks,
    QueueFull,
    ServerError,
    "The queue holds as many tasks as its MAXLEN allows."
);
create_exception!(
    vtasks,
    ServerFull,
    ServerError,
    "Valkey is at its maxmemory and refused to add work (an enqueue, a requeue); nothing was written."
);
create_exception!(
    vtasks,
    NoSuchQueue,
    ServerError,
    "The queue has never been used."
);
create_exception!(
    vtasks,
    InvalidArgument,
    VtasksError,
    "An argument vtasks refuses before sending anything."
);
create_exception!(
    vtasks,
    ModuleNotLoaded,
    VtasksError,
    "The module engine was asked for on a server without the vtasks module."
);
create_exception!(
    vtasks,
    PayloadError,
    VtasksError,
    "A payload that is not valid (compressed) JSON."
);
create_exception!(
    vtasks,
    NotReplicated,
    VtasksError,
    "Written on the primary, but fewer replicas than asked for confirmed it in time."
);
create_exception!(
    vtasks,
    ProtocolError,
    VtasksError,
    "A reply that does not follow the vtasks protocol."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("VtasksError", py.get_type::<VtasksError>())?;
    m.add("ConnectionFailed", py.get_type::<ConnectionFailed>())?;
    m.add("ServerError", py.get_type::<ServerError>())?;
    m.add("QueueFull", py.get_type::<QueueFull>())?;
    m.add("NoSuchQueue", py.get_type::<NoSuchQueue>())?;
    m.add("ServerFull", py.get_type::<ServerFull>())?;
    m.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    m.add("PayloadError", py.get_type::<PayloadError>())?;
    m.add("ModuleNotLoaded", py.get_type::<ModuleNotLoaded>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("NotReplicated", py.get_type::<NotReplicated>())?;
    Ok(())
}

pub fn to_pyerr(err: Error) -> PyErr {
    match &err {
        Error::Server { code, .. } => {
            let exc = match code.as_str() {
                "QUEUEFULL" => QueueFull::new_err(err.to_string()),
                "NOQUEUE" => NoSuchQueue::new_err(err.to_string()),
                _ => ServerError::new_err(err.to_string()),
            };
            let code = code.clone();
            Python::attach(|py| {
                let _ = exc.value(py).setattr("code", code);
            });
            exc
        }
        Error::ServerFull(_) => {
            let exc = ServerFull::new_err(err.to_string());
            Python::attach(|py| {
                let _ = exc.value(py).setattr("code", "OOM");
            });
            exc
        }
        Error::Connection(_) => ConnectionFailed::new_err(err.to_string()),
        Error::InvalidInput(_) => InvalidArgument::new_err(err.to_string()),
        Error::Payload(_) => PayloadError::new_err(err.to_string()),
        Error::Protocol(_) => ProtocolError::new_err(err.to_string()),
        Error::ModuleMissing(_) => ModuleNotLoaded::new_err(err.to_string()),
        Error::NotReplicated { .. } => NotReplicated::new_err(err.to_string()),
    }
}
