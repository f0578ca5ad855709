//! `make demo`: starts Valkey with the module on a free port, enqueues
//! 10,000 tasks in batches, has four workers fetch and acknowledge them in
//! batches (each acknowledgement riding on the next fetch), checks that every
//! task was done exactly once, prints what happened and stops the server.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use redis::Value;
use vtasks_benchmarks::Server;

const TASKS: usize = 10_000;
const BATCH: usize = 100;
const WORKERS: usize = 4;
const QUEUE: &str = "{demo}";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::start();
    println!("valkey-server with vtasks on port {}", server.port);
    let client = redis::Client::open(server.url())?;
    let mut con = client.get_connection()?;

    let started = Instant::now();
    let mut added = 0;
    for chunk in (0..TASKS).collect::<Vec<_>>().chunks(BATCH) {
        let mut cmd = redis::cmd("VTASKS.ENQUEUE");
        cmd.arg(QUEUE);
        for i in chunk {
            cmd.arg("TASK")
                .arg(format!("task-{i}"))
                .arg(format!("{{\"n\":{i}}}"));
        }
        let reply: Vec<i64> = cmd.query(&mut con)?;
        added += reply.iter().sum::<i64>();
    }
    let enqueue_time = started.elapsed();
    println!(
        "enqueued  {added} tasks in {} commands: {:.1} ms, {:.0} tasks/s",
        TASKS / BATCH,
        enqueue_time.as_secs_f64() * 1e3,
        added as f64 / enqueue_time.as_secs_f64()
    );

    let done = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let client = client.clone();
            let done = done.clone();
            std::thread::spawn(move || worker(client, format!("demo-worker-{w}"), done))
        })
        .collect();
    let mut round_trips = 0;
    for w in workers {
        round_trips += w.join().expect("worker thread")?;
    }
    let process_time = started.elapsed();
    let done = done.lock().unwrap();
    let unique: HashSet<&String> = done.iter().collect();
    let expected: HashSet<String> = (0..TASKS).map(|i| format!("task-{i}")).collect();
    let all_done = unique.len() == TASKS && unique.iter().all(|id| expected.contains(*id));
    println!(
        "processed {} tasks with {WORKERS} workers in {round_trips} round trips: {:.1} ms, {:.0} tasks/s",
        done.len(),
        process_time.as_secs_f64() * 1e3,
        done.len() as f64 / process_time.as_secs_f64()
    );

    let stats: Vec<Value> = redis::cmd("VTASKS.STATS").arg(QUEUE).query(&mut con)?;
    let stat = |name: &str| -> i64 {
        stats
            .chunks(2)
            .find(|c| matches!(&c[0], Value::SimpleString(s) if s == name))
            .and_then(|c| redis::from_redis_value(c[1].clone()).ok())
            .unwrap_or(-1)
    };
    println!(
        "queue {QUEUE}: enqueued {} acked {} ready {} leased {} dead {}",
        stat("enqueued"),
        stat("acked"),
        stat("ready"),
        stat("leased"),
        stat("dead")
    );
    drop(server);
    println!("valkey-server stopped");
    if !all_done || done.len() != TASKS || stat("acked") != TASKS as i64 {
        return Err(format!(
            "expected each of {TASKS} tasks done exactly once, got {} ({} unique)",
            done.len(),
            unique.len()
        )
        .into());
    }
    println!("every task was done exactly once");
    Ok(())
}

/// A FETCHN reply: leased `[queue, id, token, attempt, payload]`, ack and
/// nack outcomes.
type FetchReply = (
    Vec<(String, String, i64, i64, String)>,
    Vec<String>,
    Vec<String>,
);

/// Fetches batches until the queue stays empty, acknowledging each batch in
/// the call that fetches the next one. Returns its number of round trips.
fn worker(
    client: redis::Client,
    name: String,
    done: Arc<Mutex<Vec<String>>>,
) -> Result<usize, redis::RedisError> {
    let mut con = client.get_connection()?;
    let mut finished: Vec<(String, i64)> = Vec::new();
    let mut round_trips = 0;
    loop {
        let mut cmd = redis::cmd("VTASKS.FETCHN");
        cmd.arg(1)
            .arg(QUEUE)
            .arg("CONSUMER")
            .arg(&name)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(200)
            .arg("KEEP")
            .arg(0);
        if !finished.is_empty() {
            cmd.arg("ACK").arg(finished.len());
            for (id, token) in &finished {
                cmd.arg(QUEUE).arg(id).arg(*token).arg("");
            }
        }
        let (tasks, acks, _nacks): FetchReply = cmd.query(&mut con)?;
        round_trips += 1;
        assert!(
            acks.iter().all(|a| a == "OK"),
            "acknowledgements refused: {acks:?}"
        );
        done.lock()
            .unwrap()
            .extend(finished.drain(..).map(|(id, _)| id));
        if tasks.is_empty() {
            return Ok(round_trips);
        }
        // "Run" each task: here, check its payload names its own number.
        for (_queue, id, token, _attempt, payload) in tasks {
            let n = id.trim_start_matches("task-");
            assert_eq!(payload, format!("{{\"n\":{n}}}"));
            finished.push((id, token));
        }
    }
}
