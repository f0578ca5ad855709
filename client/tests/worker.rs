//! The worker core against a real valkey-server with the module.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vtasks_client::*;
use vtasks_testkit::Server;

/// A client of the test target's engine (`VTASKS_TARGET`): the same tests
/// run with the module and with the scripts.
async fn connect(server: &Server) -> Client {
    connect_url(&server.url()).await.unwrap()
}

async fn connect_url(url: &str) -> Result<Client> {
    let mut options = ClientOptions::new(url);
    options.engine = vtasks_testkit::Target::current().engine().parse()?;
    Client::connect_with(options).await
}

fn queue() -> QueueName {
    QueueName::new("work").unwrap()
}

async fn enqueue_n(client: &Client, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("task-{i}")).collect();
    for chunk in ids.chunks(1000) {
        let tasks: Vec<NewTask> = chunk
            .iter()
            .map(|id| NewTask::new(id.clone(), format!("{{\"id\":\"{id}\"}}").into_bytes()))
            .collect();
        client.enqueue_many(&queue(), &tasks, None).await.unwrap();
    }
    ids
}

fn options(consumer: &str) -> WorkerOptions {
    WorkerOptions {
        concurrency: 50,
        block: Duration::from_millis(200),
        burst: true,
        ..WorkerOptions::new(vec![queue()], consumer)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_each_run_exactly_once() {
    let server = Server::start();
    let client = connect(&server).await;
    let ids = enqueue_n(&client, 10_000).await;
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let core = WorkerCore::new(client.clone(), options("w1")).unwrap();
    let stats = run(
        core,
        {
            let seen = seen.clone();
            move |d: Delivery| {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap().entry(d.id.clone()).or_default() += 1;
                    Outcome::Success(None)
                }
            }
        },
        std::future::pending(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    {
        let seen = seen.lock().unwrap();
        for id in &ids {
            assert_eq!(seen.get(id), Some(&1), "{id} ran once");
        }
        assert_eq!(seen.len(), ids.len());
    }
    assert_eq!(stats.succeeded, 10_000);
    assert_eq!(stats.stale, 0);
    assert!(
        stats.round_trips < 1_000,
        "batched: {} round trips",
        stats.round_trips
    );
    let s = client.stats(&queue()).await.unwrap();
    assert_eq!(
        (s.get("acked"), s.get("ready"), s.get("leased")),
        (Some(10_000), Some(0), Some(0))
    );
}

/// A worker with most slots taken refills them a batch at a time, but a
/// single free slot is still refilled (after a short wait for others),
/// and a refill takes every free slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_refills_its_free_slots_however_few() {
    let server = Server::start();
    let client = connect(&server).await;
    enqueue_n(&client, 20).await;
    let opts = WorkerOptions {
        concurrency: 8,
        ..WorkerOptions::new(vec![queue()], "w1")
    };
    let core = WorkerCore::new(client.clone(), opts).unwrap();
    let mut fetcher = client.blocking_fetcher();
    let first = core.next_batch(&mut fetcher).await.unwrap();
    assert_eq!(first.len(), 8);
    let mut held = first.into_iter();
    let within = Duration::from_secs(10);
    // One slot of eight free: fewer than a refill batch, fetched anyway.
    core.complete(&held.next().unwrap(), Outcome::Success(None));
    let one = tokio::time::timeout(within, core.next_batch(&mut fetcher))
        .await
        .expect("one free slot was never refilled")
        .unwrap();
    assert_eq!(one.len(), 1);
    // Three free: all three in one fetch, with the settlements.
    for delivery in held.by_ref().take(3) {
        core.complete(&delivery, Outcome::Success(None));
    }
    let three = tokio::time::timeout(within, core.next_batch(&mut fetcher))
        .await
        .expect("three free slots were never refilled")
        .unwrap();
    assert_eq!(three.len(), 3);
    let stats = client.stats(&queue()).await.unwrap();
    assert_eq!(stats.get("leased"), Some(8));
    assert_eq!(stats.get("ready"), Some(8));
    assert_eq!(core.stats().succeeded, 4);
}

/// Extra capacity lets the worker hold more than its concurrency (a
/// waiting worker fetches at once when it is raised); lowered, nothing
/// more is fetched until the tasks held fall below the new capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_capacity_deepens_what_a_worker_holds_and_lowering_it_fetches_nothing() {
    let server = Server::start();
    let client = connect(&server).await;
    enqueue_n(&client, 20).await;
    let opts = WorkerOptions {
        concurrency: 4,
        ..WorkerOptions::new(vec![queue()], "w1")
    };
    let core = WorkerCore::new(client.clone(), opts).unwrap();
    let mut fetcher = client.blocking_fetcher();
    let within = Duration::from_secs(10);
    let first = core.next_batch(&mut fetcher).await.unwrap();
    assert_eq!(first.len(), 4);
    // Full: the next batch waits until the capacity is raised.
    let raise = {
        let core = core.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            core.set_extra_capacity(4);
        })
    };
    let more = tokio::time::timeout(within, core.next_batch(&mut fetcher))
        .await
        .expect("raising the capacity did not wake the waiting worker")
        .unwrap();
    raise.await.unwrap();
    assert_eq!(more.len(), 4);
    assert_eq!(client.stats(&queue()).await.unwrap().get("leased"), Some(8));
    // Back to none extra with eight held: two finished leave six, still
    // above the capacity of four, so no fetch.
    core.set_extra_capacity(0);
    let mut held = first.into_iter().chain(more);
    for delivery in held.by_ref().take(2) {
        core.complete(&delivery, Outcome::Success(None));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), core.next_batch(&mut fetcher))
            .await
            .is_err(),
        "fetched beyond the lowered capacity"
    );
    // Three more finished: three held, one slot free.
    for delivery in held.by_ref().take(3) {
        core.complete(&delivery, Outcome::Success(None));
    }
    let one = tokio::time::timeout(within, core.next_batch(&mut fetcher))
        .await
        .expect("a slot under the lowered capacity was never refilled")
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(client.stats(&queue()).await.unwrap().get("leased"), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered_with_the_error() {
    let server = Server::start();
    let client = connect(&server).await;
    let task = NewTask {
        max_attempts: Some(3),
        ..NewTask::new("flaky", b"{}".to_vec())
    };
    client.enqueue(&queue(), task).await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let core = WorkerCore::new(client.clone(), options("w1")).unwrap();
    let opts = WorkerOptions {
        burst: false,
        ..options("w1")
    };
    let core2 = WorkerCore::new(client.clone(), opts).unwrap();
    drop(core);
    let handle = tokio::spawn(run(
        core2,
        {
            let attempts = attempts.clone();
            move |d: Delivery| {
                let attempts = attempts.clone();
                async move {
                    attempts.lock().unwrap().push(d.attempt);
                    Outcome::Failure {
                        error: format!("ValueError: attempt {}", d.attempt),
                        retry: Retry::After(Duration::from_millis(50)),
                    }
                }
            }
        },
        async {
            tokio::time::sleep(Duration::from_secs(2)).await;
        },
        Duration::from_secs(1),
    ));
    let stats = handle.await.unwrap().unwrap();
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    assert_eq!(stats.failed, 3);
    let info = client.get(&queue(), "flaky").await.unwrap().unwrap();
    assert_eq!(info.status, Status::Dead);
    assert_eq!(info.error.as_deref(), Some("ValueError: attempt 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_task_longer_than_its_lease_running_once() {
    let server = Server::start();
    let client = connect(&server).await;
    client
        .enqueue(&queue(), NewTask::new("slow", b"{}".to_vec()))
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(0));
    let opts = WorkerOptions {
        lease: Duration::from_millis(300),
        ..options("w1")
    };
    let core = WorkerCore::new(client.clone(), opts).unwrap();
    let stats = run(
        core,
        {
            let runs = runs.clone();
            move |_d: Delivery| {
                let runs = runs.clone();
                async move {
                    *runs.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_millis(1_200)).await;
                    Outcome::Success(None)
                }
            }
        },
        std::future::pending(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(*runs.lock().unwrap(), 1);
    assert_eq!(stats.stale, 0, "the acknowledgement was accepted");
    assert_eq!(stats.lost_leases, 0);
    let s = client.stats(&queue()).await.unwrap();
    assert_eq!((s.get("acked"), s.get("expired")), (Some(1), Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_tasks_finish_and_loses_nothing() {
    let server = Server::start();
    let client = connect(&server).await;
    let ids = enqueue_n(&client, 200).await;
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let opts = WorkerOptions {
        concurrency: 10,
        burst: false,
        ..options("w1")
    };
    let core = WorkerCore::new(client.clone(), opts).unwrap();
    let stats = run(
        core,
        {
            let done = done.clone();
            move |d: Delivery| {
                let done = done.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    done.lock().unwrap().push(d.id);
                    Outcome::Success(None)
                }
            }
        },
        {
            // Shut down once a few tasks are done, whatever the machine's speed.
            let done = done.clone();
            async move {
                while done.lock().unwrap().len() < 20 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let first = done.lock().unwrap().len();
    assert!(first > 0 && first < 200, "stopped part-way: {first}");
    let s = client.stats(&queue()).await.unwrap();
    assert_eq!(
        s.get("leased"),
        Some(0),
        "nothing left leased after shutdown"
    );
    assert_eq!(s.get("acked"), Some(first as i64));
    assert_eq!(s.get("expired"), Some(0));
    assert_eq!(stats.succeeded as usize, first);

    // A second worker finishes the rest; every task ran exactly once.
    let core = WorkerCore::new(client.clone(), options("w2")).unwrap();
    run(
        core,
        {
            let done = done.clone();
            move |d: Delivery| {
                let done = done.clone();
                async move {
                    done.lock().unwrap().push(d.id);
                    Outcome::Success(None)
                }
            }
        },
        std::future::pending(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut all = done.lock().unwrap().clone();
    all.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(all, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_run_is_survived() {
    restart_mid_run(false).await;
}

/// The same with the server killed (SIGKILL) instead of shut down: it
/// comes back from its AOF (`appendfsync always`), with no shutdown save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_is_survived() {
    restart_mid_run(true).await;
}

async fn restart_mid_run(kill: bool) {
    let mut server = Server::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let client = connect(&server).await;
    let ids = enqueue_n(&client, 3_000).await;
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let opts = WorkerOptions {
        concurrency: 20,
        lease: Duration::from_secs(2),
        ..options("w1")
    };
    let core = WorkerCore::new(client.clone(), opts).unwrap();
    let worker = tokio::spawn(run(
        core,
        {
            let seen = seen.clone();
            move |d: Delivery| {
                let seen = seen.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    *seen.lock().unwrap().entry(d.id.clone()).or_default() += 1;
                    Outcome::Success(None)
                }
            }
        },
        std::future::pending(),
        Duration::from_secs(5),
    ));
    // Restart once the run is well under way and far from finished.
    while seen.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _server = tokio::task::spawn_blocking(move || {
        if kill {
            server.kill_and_restart();
        } else {
            server.restart();
        }
        server
    })
    .await
    .unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker finished")
        .unwrap()
        .unwrap();
    assert!(
        stats.reconnects > 0,
        "the restart cut the worker's connection"
    );
    let seen = seen.lock().unwrap();
    for id in &ids {
        assert!(seen.contains_key(id), "{id} was never run");
    }
    // Only tasks whose fetch reply was lost in the cut may run twice (after
    // their lease expired); at most one batch of them.
    let twice = seen.values().filter(|n| **n > 1).count();
    assert!(twice <= 20, "{twice} tasks ran twice");
}

/// A result the server would refuse (over 16 MiB once encoded) would fail
/// the whole FETCHN that carries the batch's settlements. The worker core
/// dead-letters that task with the reason, and the rest of the batch is
/// acknowledged as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_size_limit_dead_letters_its_task_and_the_batch_goes_on() {
    let server = Server::start();
    let client = connect(&server).await;
    // Few tasks: each result is 16 MiB, which takes a loaded machine
    // seconds to move (the scripts engine's leases last 5 s).
    let ids = enqueue_n(&client, 5).await;
    let limit = vtasks_protocol::MAX_PAYLOAD;
    let core = WorkerCore::new(client.clone(), options("w1")).unwrap();
    let stats = run(
        core,
        move |d: Delivery| async move {
            let size = if d.id == "task-2" { limit + 1 } else { limit };
            Outcome::Success(Some(vec![b'x'; size]))
        },
        std::future::pending(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!((stats.succeeded, stats.failed), (4, 1), "{stats:?}");
    for id in &ids {
        let info = client.get(&queue(), id).await.unwrap().unwrap();
        if id == "task-2" {
            assert_eq!(info.status, Status::Dead);
            let error = info.error.unwrap();
            assert!(
                error.contains(&format!(
                    "result of {} bytes exceeds the limit of {limit} bytes",
                    limit + 1
                )),
                "{error}"
            );
        } else {
            assert_eq!(info.status, Status::Done, "{id}");
            assert_eq!(info.result.map(|r| r.len()), Some(limit), "{id}");
        }
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs `rounds` batches of `per_round` tasks through one idle worker on
/// the default options (5 s block), each batch once the previous one is
/// done, and returns, per task, how long after its handler returned the
/// server recorded it done (`finished_at`, same clock). `due_in`: the
/// batch is enqueued that far in the future, all with the same run time,
/// so it falls due together into a worker blocked on an empty queue;
/// without it the tasks are ready at once. Handlers end a little apart
/// (`spread` more per round), so completions land at every point of the
/// worker's settling.
async fn settlement_lags(
    rounds: usize,
    per_round: usize,
    due_in: Option<Duration>,
) -> Vec<(String, i64)> {
    let server = Server::start();
    let client = connect(&server).await;
    let ended: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let opts = WorkerOptions {
        concurrency: 32,
        ..WorkerOptions::new(vec![queue()], "w1")
    };
    let core = WorkerCore::new(client.clone(), opts).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(run(
        core,
        {
            let ended = ended.clone();
            move |d: Delivery| {
                let ended = ended.clone();
                async move {
                    let micros: u64 = std::str::from_utf8(&d.payload).unwrap().parse().unwrap();
                    tokio::time::sleep(Duration::from_micros(micros)).await;
                    ended.lock().unwrap().insert(d.id.clone(), unix_ms());
                    Outcome::Success(None)
                }
            }
        },
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    for round in 0..rounds {
        let when = match due_in {
            Some(delay) => When::At(unix_ms() as u64 + delay.as_millis() as u64),
            None => When::Now,
        };
        let tasks: Vec<NewTask> = (0..per_round)
            .map(|i| {
                let micros = 20_000 + i * (300 + 200 * round);
                NewTask {
                    when,
                    ..NewTask::new(format!("r{round}-t{i}"), micros.to_string().into_bytes())
                }
            })
            .collect();
        client.enqueue_many(&queue(), &tasks, None).await.unwrap();
        let total = ((round + 1) * per_round) as i64;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while client.stats(&queue()).await.unwrap().get("acked") != Some(total) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round} never finished"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    let ended = ended.lock().unwrap().clone();
    let mut lags = Vec::new();
    for (id, end) in ended {
        let info = client.get(&queue(), &id).await.unwrap().unwrap();
        assert_eq!(info.status, Status::Done, "{id}");
        lags.push((id, info.finished_at.unwrap() - end));
    }
    assert_eq!(lags.len(), rounds * per_round);
    lags
}

fn assert_prompt(lags: &[(String, i64)]) {
    let late: Vec<_> = lags.iter().filter(|(_, lag)| *lag > 500).collect();
    assert!(
        late.is_empty(),
        "results final more than 0.5 s after their task ended (ms): {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_batches_falling_due_together_are_settled_as_they_end() {
    let lags = settlement_lags(12, 20, Some(Duration::from_millis(300))).await;
    assert_prompt(&lags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_ending_while_the_fetch_waits_are_settled_as_they_end() {
    let lags = settlement_lags(12, 8, None).await;
    assert_prompt(&lags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_holds_two_connections() {
    let server = Server::start();
    let client = connect(&server).await;
    let ids = enqueue_n(&client, 20).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = Arc::new(Mutex::new(0));
    let opts = WorkerOptions {
        concurrency: 4,
        ..WorkerOptions::new(vec![queue()], "w1")
    };
    let worker = tokio::spawn(run(
        WorkerCore::new(client.clone(), opts).unwrap(),
        {
            let done = done.clone();
            move |_d: Delivery| {
                let done = done.clone();
                async move {
                    *done.lock().unwrap() += 1;
                    Outcome::Success(None)
                }
            }
        },
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    // Once everything ran, the worker waits in a blocking fetch: every
    // connection it ever opened is still there.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let blocked = loop {
        let clients = tokio::task::block_in_place(|| server.clients());
        let blocked = clients
            .iter()
            .any(|c| c.get("flags").is_some_and(|f| f.contains('b')));
        if *done.lock().unwrap() == ids.len() && blocked {
            break clients;
        }
        assert!(std::time::Instant::now() < deadline, "{clients:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        blocked.len(),
        2,
        "the shared command connection and the fetch connection: {blocked:?}"
    );
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

/// The worker's fetch connection drops while a task runs (longer than the
/// module's 2 s grace): the worker reconnects, renews its running lease at
/// once and keeps it. The task runs once and its acknowledgement is not
/// refused as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_fetch_connection_drops_keeps_its_leases() {
    let server = Server::start();
    let client = connect(&server).await;
    enqueue_n(&client, 1).await;
    let runs = Arc::new(Mutex::new(0u32));
    let started = Arc::new(tokio::sync::Notify::new());
    let core = WorkerCore::new(
        client.clone(),
        WorkerOptions {
            burst: false,
            block: Duration::from_secs(30),
            ..options("w1")
        },
    )
    .unwrap();
    let handle = tokio::spawn(run(
        core,
        {
            let (runs, started) = (runs.clone(), started.clone());
            move |_d: Delivery| {
                let (runs, started) = (runs.clone(), started.clone());
                async move {
                    *runs.lock().unwrap() += 1;
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    Outcome::Success(None)
                }
            }
        },
        std::future::pending(),
        Duration::from_secs(10),
    ));
    started.notified().await;
    // The worker is back in a blocking fetch for more work: drop that
    // connection as a network fault would.
    let mut admin = server.connect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let killed = loop {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
        let fetching: Vec<&str> = list
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("cmd=vtasks.fetchn") || l.contains("cmd=blpop")
            })
            .filter_map(|l| l.split(' ').find_map(|w| w.strip_prefix("id=")))
            .collect();
        if let [id] = fetching[..] {
            let n: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query(&mut admin)
                .unwrap();
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no fetch connection: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(killed, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = client.stats(&queue()).await.unwrap();
        if s.get("acked") == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never acknowledged: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.abort();
    assert_eq!(*runs.lock().unwrap(), 1, "the task ran once");
    let s = client.stats(&queue()).await.unwrap();
    assert_eq!((s.get("expired"), s.get("ready")), (Some(0), Some(0)));
}

/// A handler that panics fails its task's attempt: the task waits for
/// its retry instead of staying leased to a worker that renews the lease
/// forever, and a burst worker still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_fails_the_attempt_and_the_worker_goes_on() {
    let server = Server::start();
    let client = connect(&server).await;
    let ids = enqueue_n(&client, 3).await;
    let core = WorkerCore::new(client.clone(), options("w1")).unwrap();
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            core,
            |d: Delivery| async move {
                if d.id == "task-1" {
                    panic!("boom in {}", d.id);
                }
                Outcome::Success(None)
            },
            std::future::pending(),
            Duration::from_secs(5),
        ),
    )
    .await
    .expect("the burst ended")
    .unwrap();
    assert_eq!((stats.succeeded, stats.failed), (2, 1), "{stats:?}");
    let info = client.get(&queue(), &ids[1]).await.unwrap().unwrap();
    assert_eq!(info.status, Status::Delayed, "waiting for its retry");
    assert_eq!((info.attempts, info.failed_attempts), (1, 1));
    assert!(
        info.error
            .as_deref()
            .is_some_and(|e| e.contains("panicked: boom in task-1")),
        "{:?}",
        info.error
    );
}
