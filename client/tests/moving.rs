//! Moving a queue between the engines (Valkey with the module): what one
//! engine leaves in flight (ready, delayed and leased tasks, dead letters)
//! the other carries on with, in both directions, after `VTASKS.ADOPT`
//! (keyspace layout to the module's type; also done on first use) or
//! `VTASKS.EXPORT` (back to the keyspace layout, for a server without the
//! module). This is what a deployment moving between managed Valkey
//! (scripts) and Valkey with the module goes through. The two engines never
//! serve one queue at the same time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vtasks_client::*;
use vtasks_testkit::Server;

async fn client(server: &Server, engine: EngineChoice) -> Client {
    let mut options = ClientOptions::new(server.url());
    options.engine = engine;
    let client = Client::connect_with(options).await.unwrap();
    assert_eq!(
        client.engine(),
        match engine {
            EngineChoice::Scripts => Engine::Scripts,
            _ => Engine::Module,
        }
    );
    client
}

fn fetch(queue: &QueueName, consumer: &str, count: usize, lease_ms: u64) -> Fetch {
    Fetch {
        count,
        lease: Duration::from_millis(lease_ms),
        ..Fetch::new(vec![queue.clone()], consumer)
    }
}

fn ack_of(d: &Delivery) -> Ack {
    Ack {
        queue: d.queue.clone(),
        id: d.id.clone(),
        token: d.token,
        result: Some(format!("\"done by {}\"", d.id).into_bytes()),
    }
}

/// `first` enqueues 40 tasks (10 delayed, 5 allowed one lost lease) and leaves
/// them in flight: 10 leased under a short lease and never settled (5 of
/// them with a lost-lease budget of 1, so their expiry dead-letters them), 5 dead-lettered
/// by a NACK. `between` converts the
/// queue. `second` then runs the queue to the end: expired leases come back
/// or die, delayed tasks become due, dead letters are requeued. Every task
/// ends done exactly once, and the totals add up.
async fn hand_over(first: &Client, second: &Client, name: &str, between: impl FnOnce(&str)) {
    let queue = QueueName::new(name).unwrap();
    let tasks: Vec<NewTask> = (0..40)
        .map(|i| {
            let mut t = NewTask::new(format!("t{i:02}"), b"{}".to_vec());
            if i >= 30 {
                t.when = When::After(Duration::from_millis(400));
            }
            if i < 5 {
                t.max_lost_leases = Some(1);
                t.priority = 10; // leased first, below
            }
            t
        })
        .collect();
    assert!(first
        .enqueue_many(&queue, &tasks, None)
        .await
        .unwrap()
        .iter()
        .all(|added| *added));

    // In flight from the first engine: 10 leases that will expire...
    let abandoned = first.fetch(&fetch(&queue, "first", 10, 200)).await.unwrap();
    assert_eq!(abandoned.tasks.len(), 10);
    assert!(abandoned.tasks[..5].iter().all(|d| d.id.as_str() < "t05"));
    // ...and 5 dead letters.
    let doomed = first
        .fetch(&fetch(&queue, "first", 5, 30_000))
        .await
        .unwrap();
    let nacks: Vec<(String, i64, Retry, String)> = doomed
        .tasks
        .iter()
        .map(|d| (d.id.clone(), d.token, Retry::Never, "bad payload".into()))
        .collect();
    let outcomes = first.nack(&queue, &nacks).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == NackOutcome::Dead));

    // The queue changes hands: the second engine takes over.
    between(name);
    assert_eq!(second.requeue_dead(&queue, None).await.unwrap(), 5);
    let mut done: BTreeMap<String, u32> = BTreeMap::new();
    let mut pending = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut request = fetch(&queue, "second", 16, 30_000);
        request.acks = std::mem::take(&mut pending);
        let got = second.fetch(&request).await.unwrap();
        assert!(got.acks.iter().all(|a| *a == Settled::Ok), "{got:?}");
        for d in &got.tasks {
            *done.entry(d.id.clone()).or_default() += 1;
            pending.push(ack_of(d));
        }
        let stats = second.stats(&queue).await.unwrap();
        let open = ["ready", "delayed", "leased"]
            .iter()
            .map(|s| stats.get(s).unwrap())
            .sum::<i64>();
        if open == 0 && pending.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "queue never drained: {stats:?}");
        if got.tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // The 5 tasks allowed one lost lease died at its expiry; the rest ran once
    // under the second engine.
    let dead = second.dead_letters(&queue, 0, 100).await.unwrap();
    let mut dead_ids: Vec<&str> = dead.iter().map(|d| d.id.as_str()).collect();
    dead_ids.sort();
    assert_eq!(dead_ids, ["t00", "t01", "t02", "t03", "t04"]);
    assert!(dead
        .iter()
        .all(|d| d.error.starts_with("lease lost 1 time")));
    assert_eq!(done.len(), 35);
    assert!(done.values().all(|n| *n == 1), "{done:?}");
    for id in done.keys() {
        let info = second.get(&queue, id).await.unwrap().unwrap();
        assert_eq!(info.status, Status::Done, "{id}");
        assert_eq!(info.consumer.as_deref(), Some("second"));
    }
    let stats = second.stats(&queue).await.unwrap();
    for (name, value) in [
        ("enqueued", 40),
        ("acked", 35),
        ("expired", 10),
        ("dead_lettered", 10), // 5 by NACK, 5 by expiry
        ("requeued", 5),
        ("dead", 5),
    ] {
        assert_eq!(stats.get(name), Some(value), "{name}: {stats:?}");
    }
}

/// `VTASKS.ADOPT` or `VTASKS.EXPORT`, with the reply: how many tasks moved.
fn convert(server: &Server, command: &str, queue: &str) -> i64 {
    let mut con = server.connect();
    redis::cmd(command)
        .arg(format!("{{{queue}}}"))
        .query(&mut con)
        .unwrap_or_else(|e| panic!("{command}: {e}"))
}

fn key_type(server: &Server, key: &str) -> String {
    let mut con = server.connect();
    redis::cmd("TYPE").arg(key).query(&mut con).unwrap()
}

/// The module's queue written back in the keyspace layout: the scripts
/// engine carries on what the module left in flight (a move to a server
/// without the module).
#[tokio::test]
async fn the_scripts_carry_on_what_the_module_left_in_flight_after_an_export() {
    let server = Server::start_with_module(&[]);
    let module = client(&server, EngineChoice::Module).await;
    let scripts = client(&server, EngineChoice::Scripts).await;
    hand_over(&module, &scripts, "module-to-scripts", |name| {
        assert_eq!(key_type(&server, &format!("{{{name}}}")), "vtasksque");
        assert_eq!(convert(&server, "VTASKS.EXPORT", name), 40);
        assert_eq!(key_type(&server, &format!("{{{name}}}")), "hash");
        assert_eq!(
            convert(&server, "VTASKS.EXPORT", name),
            0,
            "already exported"
        );
    })
    .await;
}

/// A queue the scripts engine kept, adopted by `VTASKS.ADOPT`: the module
/// carries on what the scripts left in flight.
#[tokio::test]
async fn the_module_carries_on_what_the_scripts_left_in_flight_after_an_adopt() {
    let server = Server::start_with_module(&[]);
    let module = client(&server, EngineChoice::Module).await;
    let scripts = client(&server, EngineChoice::Scripts).await;
    hand_over(&scripts, &module, "scripts-to-module", |name| {
        assert_eq!(key_type(&server, &format!("{{{name}}}")), "hash");
        assert_eq!(convert(&server, "VTASKS.ADOPT", name), 40);
        assert_eq!(key_type(&server, &format!("{{{name}}}")), "vtasksque");
        let mut con = server.connect();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
        assert_eq!(keys, [format!("{{{name}}}")], "the layout's keys are gone");
        assert_eq!(convert(&server, "VTASKS.ADOPT", name), 0, "already adopted");
    })
    .await;
}

/// With no `VTASKS.ADOPT`, the module adopts a scripts-layout queue on the
/// first command that writes to it: here a worker's fetch.
#[tokio::test]
async fn the_module_adopts_a_scripts_queue_on_first_use() {
    let server = Server::start_with_module(&[]);
    let module = client(&server, EngineChoice::Module).await;
    let scripts = client(&server, EngineChoice::Scripts).await;
    hand_over(&scripts, &module, "first-use", |name| {
        assert_eq!(key_type(&server, &format!("{{{name}}}")), "hash");
    })
    .await;
    assert_eq!(key_type(&server, "{first-use}"), "vtasksque");
}

/// A blocked module consumer waits on the queue key; adopting a queue with
/// ready tasks wakes it.
#[tokio::test]
async fn adopting_wakes_a_blocked_module_consumer() {
    let server = Server::start_with_module(&[]);
    let module = client(&server, EngineChoice::Module).await;
    let scripts = client(&server, EngineChoice::Scripts).await;
    let queue = QueueName::new("wakes").unwrap();
    scripts.pause(&queue).await.unwrap();
    scripts
        .enqueue(&queue, NewTask::new("t", b"{}".to_vec()))
        .await
        .unwrap();
    let mut fetcher = module.blocking_fetcher();
    let mut request = fetch(&queue, "sleeper", 1, 30_000);
    request.block = Some(Duration::from_secs(20));
    let waiter = tokio::spawn(async move { fetcher.fetch(&request).await.unwrap() });
    // The fetch adopted the (paused) queue and is blocked on it now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while module.stats(&queue).await.unwrap().get("blocked") != Some(1) {
        assert!(Instant::now() < deadline, "the consumer never blocked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(key_type(&server, "{wakes}"), "vtasksque");
    module.resume(&queue).await.unwrap();
    let got = waiter.await.unwrap();
    assert_eq!(got.tasks.len(), 1);
}
