//! Enqueue tasks and process them with a worker, from a Rust service.
//!
//!     cargo run -p vtasks-client --example worker -- valkey://127.0.0.1:6379 1000
//!
//! The worker runs in burst mode: it returns once the queue is empty.

use std::time::{Duration, Instant};

use serde_json::json;
use vtasks_client::{
    payload, run, Client, NewTask, Outcome, QueueName, Retry, WorkerCore, WorkerOptions,
};

#[tokio::main]
async fn main() -> vtasks_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "valkey://127.0.0.1:6379".into());
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000);

    let client = Client::connect(&url).await?;
    let queue = QueueName::new("example")?;
    let started = Instant::now();
    let tasks: Vec<NewTask> = (0..count)
        .map(|i| {
            Ok(NewTask::new(
                format!("example-{i}"),
                payload::encode(&json!({"n": i}))?,
            ))
        })
        .collect::<vtasks_client::Result<_>>()?;
    for chunk in tasks.chunks(500) {
        client.enqueue_many(&queue, chunk, None).await?;
    }
    println!("enqueued {count} tasks in {:?}", started.elapsed());

    let options = WorkerOptions {
        concurrency: 50,
        burst: true,
        block: Duration::from_millis(500),
        ..WorkerOptions::new(
            vec![queue.clone()],
            format!("example-{}", std::process::id()),
        )
    };
    let core = WorkerCore::new(client.clone(), options)?;
    let started = Instant::now();
    let stats = run(
        core,
        |task| async move {
            match payload::decode(&task.payload) {
                Ok(body) => {
                    let n = body["n"].as_i64().unwrap_or(0);
                    Outcome::Success(payload::encode(&json!(n * 2)).ok())
                }
                Err(err) => Outcome::Failure {
                    error: err.to_string(),
                    retry: Retry::Never,
                },
            }
        },
        std::future::pending(),
        Duration::from_secs(10),
    )
    .await?;
    println!(
        "processed {} tasks in {:?} with {} round trips ({} failed)",
        stats.succeeded,
        started.elapsed(),
        stats.round_trips,
        stats.failed
    );
    Ok(())
}
