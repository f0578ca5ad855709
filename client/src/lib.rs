//! The vtasks client: every `VTASKS.*` command over one multiplexed,
//! self-reconnecting connection, and the worker core (batched fetch and
//! acknowledgement in one round trip, lease renewal, graceful shutdown),
//! with the module or, on servers that cannot load it, the same commands as
//! a Lua script (`engine`, `scripts`).
//!
//! ```no_run
//! # async fn demo() -> vtasks_client::Result<()> {
//! use vtasks_client::{payload, Client, NewTask, QueueName};
//! let client = Client::connect("valkey://127.0.0.1:6379").await?;
//! let queue = QueueName::new("emails")?;
//! let body = payload::encode(&serde_json::json!({"to": "ada@example.com"}))?;
//! client.enqueue(&queue, NewTask::new("welcome-42", body)).await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod cluster;
mod cluster_fetch;
pub mod engine;
pub mod error;
pub mod handoff;
pub mod memory;
pub mod partitions;
pub mod payload;
pub mod protocol;
pub mod queue;
pub mod schedule;
pub mod scripts;
pub mod sentinel;
pub mod wire;
pub mod worker;

pub use client::{BlockingFetcher, Client, ClientOptions, WaitReplicas};
pub use engine::{Engine, EngineChoice};
pub use error::{Error, Result};
pub use handoff::{Handoff, Offer};
pub use memory::MemoryPolicy;
pub use partitions::Partitions;
pub use protocol::{
    Ack, DeadTask, Delivery, Fetch, Fetched, Nack, NackOutcome, NewTask, QueueStats, Retry,
    Settled, Status, TaskInfo, When,
};
pub use queue::QueueName;
pub use schedule::{CatchUp, Schedule, ScheduleInfo, SetOutcome, Spec};
/// Limits and defaults of the protocol, the same numbers the module and the
/// scripts engine check.
pub use vtasks_protocol;
pub use worker::{run, ConnectionState, Outcome, WorkerCore, WorkerOptions, WorkerStats};
