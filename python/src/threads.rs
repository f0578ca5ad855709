//! `ThreadSchedstat`: how long a thread has waited for a CPU, read from
//! `/proc/self/task/<tid>/schedstat` without letting go of the GIL.
//!
//! The task threads' watcher (`vtasks.worker._TaskThreads`) reads a few of
//! these at each look. `os.pread` lets go of the GIL for the read, and
//! taking it back among forty threads that keep the interpreter busy took
//! the watcher up to a second and a half for one look. A read of this file
//! takes microseconds: holding the GIL for it costs less than one turn at
//! the GIL.

use std::fs::File;
use std::os::unix::fs::FileExt;

use pyo3::prelude::*;

#[pyclass(module = "vtasks._native", frozen)]
pub struct ThreadSchedstat {
    file: File,
}

#[pymethods]
impl ThreadSchedstat {
    /// Opens the schedstat file of the thread with this native id (a
    /// thread of this process); OSError where there is none (not Linux, or
    /// the thread has ended).
    #[new]
    fn new(native_id: u64) -> PyResult<Self> {
        let file = File::open(format!("/proc/self/task/{native_id}/schedstat"))?;
        Ok(ThreadSchedstat { file })
    }

    /// The seconds the thread has been ready to run and waited in a run
    /// queue for a CPU; None once it has ended (or the file does not read
    /// as schedstat).
    fn waited_seconds(&self) -> Option<f64> {
        let mut buf = [0u8; 128];
        let read = self.file.read_at(&mut buf, 0).ok()?;
        waited_seconds(&buf[..read])
    }
}

/// The second field of a schedstat line (nanoseconds run on a CPU,
/// nanoseconds waited for one, time slices), in seconds.
fn waited_seconds(text: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let _ran: u64 = fields.next()?.parse().ok()?;
    let waited: u64 = fields.next()?.parse().ok()?;
    Some(waited as f64 / 1e9)
}
