//! Both engines on one server (Valkey with the module): what one engine
//! leaves in flight (ready, delayed and leased tasks, dead letters) the other
//! carries on with, in both directions, and each engine's consumers are
//! woken by the other engine's writes. This is what a deployment moving
//! between managed Valkey (scripts) and Valkey with the module goes through.

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
/// by a NACK. `second` then runs the queue to the end: expired leases come
/// back or die, delayed tasks become due, dead letters are requeued. Every
/// task ends done exactly once, and the totals add up.
async fn hand_over(first: &Client, second: &Client, name: &str) {
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

    // The second engine takes over.
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
        let info = first.get(&queue, id).await.unwrap().unwrap();
        assert_eq!(info.status, Status::Done, "{id}");
        assert_eq!(info.consumer.as_deref(), Some("second"));
    }
    let stats = first.stats(&queue).await.unwrap();
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

#[tokio::test]
async fn the_scripts_carry_on_what_the_module_left_in_flight() {
    let server = Server::start_with_module(&[]);
    let module = client(&server, EngineChoice::Module).await;
    let scripts = client(&server, EngineChoice::Scripts).await;
    hand_over(&module, &scripts, "module-to-scripts").await;
}

#[tokio::test]
async fn the_module_carries_on_what_the_scripts_left_in_flight() {
    let server = Server::start_with_module(&[]);
    let module = client(&server, EngineChoice::Module).await;
    let scripts = client(&server, EngineChoice::Scripts).await;
    hand_over(&scripts, &module, "scripts-to-module").await;
}

/// Starts a blocking fetch of `consumer` (20 s block) and waits until the
/// queue counts it as blocked. `watcher` must run the module: only the
/// module sees both its own blocked clients and the scripts' sleepers.
async fn blocked_fetch(
    consumer: &Client,
    watcher: &Client,
    queue: &QueueName,
) -> tokio::task::JoinHandle<(Fetched, Instant)> {
    let mut fetcher = consumer.blocking_fetcher();
    let mut request = fetch(queue, "sleeper", 1, 30_000);
    request.block = Some(Duration::from_secs(20));
    let waiter = tokio::spawn(async move {
        let got = fetcher.fetch(&request).await.unwrap();
        (got, Instant::now())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher.stats(queue).await.unwrap().get("blocked") != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the {} consumer never blocked: {:?}",
            consumer.engine(),
            watcher.stats(queue).await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    waiter
}

#[tokio::test]
async fn each_engine_wakes_the_other_engines_blocked_consumers() {
    let server = Server::start_with_module(&[]);
    let module = client(&server, EngineChoice::Module).await;
    let scripts = client(&server, EngineChoice::Scripts).await;
    let queue = QueueName::new("wakes").unwrap();
    module.pause(&queue).await.unwrap(); // creates the queue for STATS
    module.resume(&queue).await.unwrap();

    for (consumer, producer) in [(&scripts, &module), (&module, &scripts)] {
        // An enqueue wakes a consumer of the other engine at once...
        let waiter = blocked_fetch(consumer, &module, &queue).await;
        let sent = Instant::now();
        producer
            .enqueue(
                &queue,
                NewTask::new(format!("now-{}", consumer.engine()), b"{}".to_vec()),
            )
            .await
            .unwrap();
        let (got, woke) = waiter.await.unwrap();
        assert_eq!(got.tasks.len(), 1);
        assert!(woke - sent < Duration::from_secs(2), "woken by the enqueue");
        module
            .ack(
                &queue,
                &[(got.tasks[0].id.clone(), got.tasks[0].token, None)],
                None,
            )
            .await
            .unwrap();

        // ...and a delayed task enqueued by the other engine wakes it when due.
        let waiter = blocked_fetch(consumer, &module, &queue).await;
        let mut later = NewTask::new(format!("later-{}", consumer.engine()), b"{}".to_vec());
        later.when = When::After(Duration::from_millis(300));
        let sent = Instant::now();
        producer.enqueue(&queue, later).await.unwrap();
        let (got, woke) = waiter.await.unwrap();
        assert_eq!(got.tasks.len(), 1, "{}", consumer.engine());
        let waited = woke - sent;
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "woken when the task fell due, after {waited:?}"
        );
        module
            .ack(
                &queue,
                &[(got.tasks[0].id.clone(), got.tasks[0].token, None)],
                None,
            )
            .await
            .unwrap();
    }
}
