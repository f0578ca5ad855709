//! The client against a real server: Valkey with the module, or (with
//! `VTASKS_TARGET`) a server without it and the scripts engine.

use std::time::Duration;

use serde_json::json;
use vtasks_client::*;
use vtasks_testkit::{Server, Target};

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

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

#[tokio::test]
async fn enqueue_fetch_ack_get_stats() {
    let server = Server::start();
    let client = connect(&server).await;
    let target = vtasks_testkit::Target::current();
    assert_eq!(client.has_module().await.unwrap(), !target.uses_scripts());
    assert_eq!(client.engine().as_str(), target.engine());
    let queue = q("emails");
    let body = payload::encode(&json!({"to": "ada@example.com"})).unwrap();
    assert!(client
        .enqueue(&queue, NewTask::new("t1", body.clone()))
        .await
        .unwrap());
    assert!(
        !client
            .enqueue(&queue, NewTask::new("t1", body.clone()))
            .await
            .unwrap(),
        "idempotent"
    );

    let fetch = Fetch {
        count: 10,
        ..Fetch::new(vec![queue.clone()], "w1")
    };
    let got = client.fetch(&fetch).await.unwrap();
    assert_eq!(got.tasks.len(), 1);
    let task = &got.tasks[0];
    assert_eq!(
        payload::decode(&task.payload).unwrap()["to"],
        "ada@example.com"
    );
    let result = payload::encode(&json!("sent")).unwrap();
    let acked = client
        .ack(&queue, &[(task.id.clone(), task.token, Some(result))], None)
        .await
        .unwrap();
    assert_eq!(acked, [Settled::Ok]);

    let info = client.get(&queue, "t1").await.unwrap().unwrap();
    assert_eq!(info.status, Status::Done);
    assert_eq!(info.attempts, 1);
    assert_eq!(info.workers, ["w1"]);
    assert_eq!(
        payload::decode(info.result.as_ref().unwrap()).unwrap(),
        json!("sent")
    );
    assert!(info.finished_at.unwrap() >= info.enqueued_at);
    assert_eq!(client.get(&queue, "nope").await.unwrap(), None);
    let stats = client.stats(&queue).await.unwrap();
    assert_eq!(stats.get("acked"), Some(1));
    assert_eq!(stats.get("done"), Some(1));
}

#[tokio::test]
async fn server_errors_keep_their_codes() {
    let server = Server::start();
    let client = connect(&server).await;
    let err = client.stats(&q("never")).await.unwrap_err();
    assert_eq!(err.code(), Some("NOQUEUE"), "{err}");
    client
        .enqueue_many(&q("small"), &[NewTask::new("a", b"{}".to_vec())], Some(1))
        .await
        .unwrap();
    let err = client
        .enqueue_many(&q("small"), &[NewTask::new("b", b"{}".to_vec())], Some(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("QUEUEFULL"), "{err}");
    let bad_priority = NewTask {
        priority: 500,
        ..NewTask::new("c", b"{}".to_vec())
    };
    assert!(matches!(
        client.enqueue(&q("small"), bad_priority).await.unwrap_err(),
        Error::InvalidInput(_)
    ));
}

#[tokio::test]
async fn bad_urls_and_absent_servers_are_clear_errors() {
    let err = Client::connect("http://localhost").await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = ClientOptions {
        reconnect_retries: 1,
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::new(format!("valkey://127.0.0.1:{port}"))
    };
    let err = Client::connect_with(options).await.unwrap_err();
    assert!(err.is_connection(), "{err}");
}

/// Until the fetch connection `id` waits server-side, so the wake-up (or
/// the unblock) that follows is what ends its wait.
async fn wait_blocked(server: &Server, id: i64) {
    tokio::task::block_in_place(|| server.wait_blocked(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_fetch_wakes_on_enqueue_and_can_be_interrupted() {
    let server = Server::start();
    let client = connect(&server).await;
    let queue = q("jobs");
    let mut fetcher = client.blocking_fetcher();
    let id = fetcher.connect().await.unwrap();
    let fetch = Fetch {
        count: 5,
        block: Some(Duration::from_secs(20)),
        ..Fetch::new(vec![queue.clone()], "w")
    };
    let waiting = tokio::spawn({
        let fetch = fetch.clone();
        async move { (fetcher.fetch(&fetch).await, fetcher) }
    });
    wait_blocked(&server, id).await;
    client
        .enqueue(&queue, NewTask::new("x", b"1".to_vec()))
        .await
        .unwrap();
    let (got, mut fetcher) = waiting.await.unwrap();
    assert_eq!(got.unwrap().tasks[0].id, "x");

    let waiting = tokio::spawn(async move { fetcher.fetch(&fetch).await });
    wait_blocked(&server, id).await;
    let started = std::time::Instant::now();
    assert!(client.unblock(id).await.unwrap());
    let got = waiting.await.unwrap().unwrap();
    assert!(got.tasks.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended by CLIENT UNBLOCK"
    );
}

/// A blocking fetch hands out a delayed task at its time, not at the
/// server's next clock tick: at `hz 1` a blocked command's own timeout
/// fires once a second, so a scripts sleep ended by BLPOP's timeout
/// alone returned up to a second late (the module's timer is on time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_fetch_takes_a_delayed_task_on_time_whatever_the_servers_tick() {
    let server = Server::start_with(&["--hz", "1"]);
    let client = connect(&server).await;
    let queue = q("later");
    let mut fetcher = client.blocking_fetcher();
    fetcher.connect().await.unwrap();
    // A BLPOP whose timeout is over at once returns on the server's next
    // tick: what follows starts just after one, a second before the next.
    let mut raw = server.connect();
    let _: redis::Value = redis::cmd("BLPOP")
        .arg("tick")
        .arg("0.001")
        .query(&mut raw)
        .unwrap();
    let started = std::time::Instant::now();
    let delayed = NewTask {
        when: When::After(Duration::from_millis(200)),
        ..NewTask::new("d", b"{}".to_vec())
    };
    assert!(client.enqueue(&queue, delayed).await.unwrap());
    let fetch = Fetch {
        count: 1,
        block: Some(Duration::from_secs(5)),
        ..Fetch::new(vec![queue.clone()], "w")
    };
    let got = fetcher.fetch(&fetch).await.unwrap();
    let took = started.elapsed();
    assert_eq!(got.tasks.len(), 1, "the delayed task, within the block");
    assert_eq!(got.tasks[0].id, "d");
    assert!(
        took >= Duration::from_millis(190),
        "not before its time: {took:?}"
    );
    assert!(
        took < Duration::from_millis(700),
        "at its time, not on the server's next tick a second after the last: {took:?}"
    );
}

/// CLEAR of more waiting tasks than one call deletes: call after call until
/// 0, ready and delayed tasks gone (their ids free, as after a cancel), the
/// leased ones still leased and acknowledged after it, and a consumer
/// blocked on the queue still waiting and served by the next enqueue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_deletes_waiting_tasks_in_bounded_calls() {
    let server = Server::start();
    let client = connect(&server).await;
    let err = client.clear(&q("never")).await.unwrap_err();
    assert_eq!(err.code(), Some("NOQUEUE"), "{err}");

    let queue = q("big");
    let ready: Vec<NewTask> = (0..10_050)
        .map(|i| NewTask::new(format!("r{i}"), b"{}".to_vec()))
        .collect();
    for chunk in ready.chunks(5_000) {
        client.enqueue_many(&queue, chunk, None).await.unwrap();
    }
    let delayed: Vec<NewTask> = (0..30)
        .map(|i| NewTask {
            when: When::After(Duration::from_secs(3600)),
            ..NewTask::new(format!("d{i}"), b"{}".to_vec())
        })
        .collect();
    client.enqueue_many(&queue, &delayed, None).await.unwrap();
    let running = client
        .fetch(&Fetch {
            count: 5,
            ..Fetch::new(vec![queue.clone()], "w")
        })
        .await
        .unwrap()
        .tasks;
    assert_eq!(running.len(), 5);

    let mut calls = Vec::new();
    loop {
        let n = client.clear(&queue).await.unwrap();
        calls.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(calls, [10_000, 10_050 + 30 - 5 - 10_000, 0]);
    let stats = client.stats(&queue).await.unwrap();
    let count = |name| stats.get(name).unwrap();
    assert_eq!(
        (count("ready"), count("delayed"), count("leased")),
        (0, 0, 5)
    );
    assert_eq!(count("cancelled"), 10_075);
    assert_eq!(client.get(&queue, "r9000").await.unwrap(), None);
    assert_eq!(client.get(&queue, "d0").await.unwrap(), None);
    let items: Vec<_> = running
        .iter()
        .map(|t| (t.id.clone(), t.token, None))
        .collect();
    assert_eq!(
        client.ack(&queue, &items, None).await.unwrap(),
        [Settled::Ok; 5]
    );
    assert!(
        client
            .enqueue(&queue, NewTask::new("r9000", b"{}".to_vec()))
            .await
            .unwrap(),
        "a cleared task's id is free again"
    );

    // A consumer waiting on a queue with only delayed tasks keeps waiting
    // through their clearing, and gets the next task enqueued.
    let quiet = q("quiet");
    client.enqueue_many(&quiet, &delayed, None).await.unwrap();
    let mut fetcher = client.blocking_fetcher();
    let id = fetcher.connect().await.unwrap();
    let fetch = Fetch {
        block: Some(Duration::from_secs(20)),
        ..Fetch::new(vec![quiet.clone()], "w")
    };
    let waiting = tokio::spawn(async move { fetcher.fetch(&fetch).await });
    wait_blocked(&server, id).await;
    assert_eq!(client.clear(&quiet).await.unwrap(), 30);
    wait_blocked(&server, id).await;
    assert!(!waiting.is_finished(), "the clear woke nobody");
    client
        .enqueue(&quiet, NewTask::new("next", b"{}".to_vec()))
        .await
        .unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.tasks[0].id, "next");
}

#[tokio::test]
async fn tls_connections_work() {
    let dir = std::env::temp_dir().join(format!("vtasks-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (installed by scripts/setup.sh)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tls_port = tls_port.to_string();
    let server = Server::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    // The certificate is self-signed, so this test skips verification;
    // production URLs verify against the system's roots.
    let client = connect_url(&format!("rediss://127.0.0.1:{tls_port}/#insecure"))
        .await
        .unwrap();
    assert!(client
        .enqueue(&q("secure"), NewTask::new("t", b"{}".to_vec()))
        .await
        .unwrap());
    assert_eq!(
        client.stats(&q("secure")).await.unwrap().get("ready"),
        Some(1)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_loading_server_is_a_transient_error() {
    let loading = Error::Server {
        code: "LOADING".into(),
        message: "Valkey is loading the dataset in memory".into(),
    };
    assert!(loading.is_transient());
    assert!(Error::Connection("reset".into()).is_transient());
    let full = Error::Server {
        code: "QUEUEFULL".into(),
        message: String::new(),
    };
    assert!(!full.is_transient());
}

/// A server that lost the library (`FUNCTION FLUSH`, a fresh server after a
/// failover) answers "Function not found" without running anything; the
/// client loads the library and repeats the call, so nothing runs twice.
#[tokio::test]
async fn the_scripts_library_is_loaded_again_when_the_server_lost_it() {
    let server = Server::start();
    let mut options = ClientOptions::new(server.url());
    options.engine = EngineChoice::Scripts;
    let client = Client::connect_with(options).await.unwrap();
    let queue = q("flushed");
    let flush = || async {
        let mut con = server.connect();
        let _: () = redis::cmd("FUNCTION").arg("FLUSH").query(&mut con).unwrap();
        let loaded: Vec<redis::Value> = redis::cmd("FUNCTION").arg("LIST").query(&mut con).unwrap();
        assert!(loaded.is_empty());
    };
    flush().await;
    assert!(client
        .enqueue(&queue, NewTask::new("a", b"{}".to_vec()))
        .await
        .unwrap());
    flush().await;
    let got = client
        .fetch(&Fetch {
            count: 10,
            ..Fetch::new(vec![queue.clone()], "w")
        })
        .await
        .unwrap();
    assert_eq!(got.tasks.len(), 1);
    flush().await;
    let acked = client
        .ack(
            &queue,
            &[(got.tasks[0].id.clone(), got.tasks[0].token, None)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(acked, [Settled::Ok]);
    let stats = client.stats(&queue).await.unwrap();
    assert_eq!(stats.get("enqueued"), Some(1), "enqueued once");
    assert_eq!(stats.get("acked"), Some(1), "acknowledged once");
}

async fn client_waiting_for(server: &Server, replicas: u32, timeout: Duration) -> Client {
    let mut options = ClientOptions::new(server.url());
    options.engine = vtasks_testkit::Target::current().engine().parse().unwrap();
    options.wait_replicas = Some(WaitReplicas { replicas, timeout });
    Client::connect_with(options).await.unwrap()
}

#[tokio::test]
async fn wait_replicas_returns_once_a_replica_holds_the_enqueue() {
    // Syncing the replica at once rather than after the default 5 s wait.
    let primary = Server::start_with(&["--repl-diskless-sync-delay", "0"]);
    let replica = Server::start_replica_of(&primary);
    let mut admin = replica.connect();
    let queue = q("durable");
    let client = client_waiting_for(&primary, 1, Duration::from_secs(10)).await;
    let added = client
        .enqueue_many(&queue, &[NewTask::new("t1", b"{}".to_vec())], None)
        .await
        .unwrap();
    assert_eq!(added, [true]);
    // Acknowledged means the replica has it, with no further wait.
    let exists: i64 = if Target::current().uses_scripts() {
        redis::cmd("EXISTS")
            .arg("{durable}:t:t1")
            .query(&mut admin)
            .unwrap()
    } else {
        let task: redis::Value = redis::cmd("VTASKS.GET")
            .arg("{durable}")
            .arg("t1")
            .query(&mut admin)
            .unwrap();
        (task != redis::Value::Nil) as i64
    };
    assert_eq!(
        exists, 1,
        "the replica holds the task when the enqueue returns"
    );

    // Asking for more replicas than there are: the write stands on the
    // primary, and the caller is told it is not replicated enough.
    let greedy = client_waiting_for(&primary, 2, Duration::from_secs(1)).await;
    let err = greedy
        .enqueue(&queue, NewTask::new("t2", b"{}".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotReplicated {
                acked: 1,
                wanted: 2
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("confirmed by 1 of 2 replicas"),
        "{err}"
    );
    assert_eq!(client.get(&queue, "t2").await.unwrap().unwrap().attempts, 0);
    // Repeating it is safe: the id exists, nothing is added twice.
    let again = client
        .enqueue(&queue, NewTask::new("t2", b"{}".to_vec()))
        .await
        .unwrap();
    assert!(!again);
}

/// Schedules through the Rust types: set, list, change, remove; a
/// blocking fetcher receives each occurrence (with the scripts engine it
/// also computes and sets each next occurrence, as workers do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_set_list_fire_and_remove() {
    let server = Server::start();
    let client = connect(&server).await;
    let queue = q("ticks");
    let bad = Schedule::new("bad", Spec::every(1).unwrap(), vec![b'x'; 70_000]);
    assert!(matches!(
        client.set_schedule(&queue, &bad).await,
        Err(Error::InvalidInput(_))
    ));
    let mut tick = Schedule::new("tick", Spec::every(1).unwrap(), b"{}".to_vec());
    tick.priority = 4;
    assert_eq!(
        client.set_schedule(&queue, &tick).await.unwrap(),
        SetOutcome::Added
    );
    assert_eq!(
        client.set_schedule(&queue, &tick).await.unwrap(),
        SetOutcome::Unchanged
    );
    let listed = client.schedules(&queue).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].timing.as_str(),
            listed[0].priority
        ),
        ("tick", "every 1", 4)
    );
    let first = listed[0].next.unwrap();
    assert_eq!(first % 1000, 0);

    let mut fetcher = client.blocking_fetcher();
    let fetch = Fetch {
        count: 10,
        block: Some(Duration::from_secs(10)),
        ..Fetch::new(vec![queue.clone()], "w")
    };
    let mut seen = Vec::new();
    while seen.len() < 2 {
        for task in fetcher.fetch(&fetch).await.unwrap().tasks {
            seen.push(task.id);
        }
    }
    assert_eq!(seen[0], format!("schedule:tick:{first}"));
    assert_eq!(seen[1], format!("schedule:tick:{}", first + 1000));
    let info = &client.schedules(&queue).await.unwrap()[0];
    assert!(info.runs >= 2 && info.last.is_some());

    let mut every_two = tick.clone();
    every_two.spec = Spec::cron("*/2 * * * * *", "UTC").unwrap();
    assert_eq!(
        client.set_schedule(&queue, &every_two).await.unwrap(),
        SetOutcome::Changed
    );
    assert_eq!(
        client
            .unschedule(&queue, &["tick".to_string()])
            .await
            .unwrap(),
        1
    );
    assert!(client.schedules(&queue).await.unwrap().is_empty());
}

/// A partitioned queue on one server: the tasks it held before it was
/// partitioned stay in partition 0 (the queue itself) and still run, new
/// ones go where their ids point, one fetch takes from every partition,
/// and the queue's counts and results cover them all.
#[tokio::test]
async fn a_partitioned_queue_on_one_server() {
    let server = Server::start();
    let plain = connect(&server).await;
    let queue = q("jobs");
    plain
        .enqueue(&queue, NewTask::new("before", b"{}".to_vec()))
        .await
        .unwrap();
    let mut options = ClientOptions::new(server.url());
    options.engine = Target::current().engine().parse().unwrap();
    options.partitions = Partitions::new([("jobs", 4)]).unwrap();
    let client = Client::connect_with(options).await.unwrap();
    let tasks: Vec<NewTask> = (0..40)
        .map(|i| NewTask::new(format!("t{i}"), b"{}".to_vec()))
        .collect();
    client.enqueue_many(&queue, &tasks, None).await.unwrap();
    for part in client.partitions().all(&queue) {
        let ready = plain.stats(&part).await.unwrap().get("ready").unwrap();
        assert!(ready > 0, "{part} got none");
    }
    let fetched = client
        .fetch(&Fetch {
            count: 100,
            ..Fetch::new(vec![queue.clone()], "w")
        })
        .await
        .unwrap();
    assert_eq!(fetched.tasks.len(), 41);
    // Settled through the queue's name: each goes to its task's partition.
    let items: Vec<_> = fetched
        .tasks
        .iter()
        .map(|d| (d.id.clone(), d.token, None))
        .collect();
    let acked = client.ack(&queue, &items, None).await.unwrap();
    assert_eq!(acked, vec![Settled::Ok; 41]);
    assert_eq!(
        client.get(&queue, "before").await.unwrap().unwrap().status,
        Status::Done
    );
    assert_eq!(client.stats(&queue).await.unwrap().get("acked"), Some(41));
}

/// Clearing a partitioned queue clears every partition, those no task
/// went to included, and leaves leased tasks alone.
#[tokio::test]
async fn clearing_a_partitioned_queue_clears_every_partition() {
    let server = Server::start();
    let plain = connect(&server).await;
    let queue = q("jobs");
    let mut options = ClientOptions::new(server.url());
    options.engine = Target::current().engine().parse().unwrap();
    options.partitions = Partitions::new([("jobs", 8)]).unwrap();
    let client = Client::connect_with(options).await.unwrap();
    let tasks: Vec<NewTask> = (0..6)
        .map(|i| NewTask::new(format!("t{i}"), b"{}".to_vec()))
        .collect();
    client.enqueue_many(&queue, &tasks, None).await.unwrap();
    let mut used = vec![];
    for part in client.partitions().all(&queue) {
        if plain.stats(&part).await.is_ok() {
            used.push(part);
        }
    }
    assert!(
        used.len() < 8,
        "some partition got no task, so clearing must skip it"
    );
    // A fetch names partitions that exist.
    let fetched = client
        .fetch(&Fetch {
            count: 1,
            ..Fetch::new(vec![used[0].clone()], "w")
        })
        .await
        .unwrap();
    assert_eq!(fetched.tasks.len(), 1);
    assert_eq!(client.clear(&queue).await.unwrap(), 5);
    assert_eq!(client.clear(&queue).await.unwrap(), 0);
    let stats = client.stats(&queue).await.unwrap();
    assert_eq!(
        (stats.get("ready"), stats.get("leased")),
        (Some(0), Some(1))
    );
    let leased = &fetched.tasks[0];
    assert_eq!(
        client
            .get(&queue, &leased.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Leased
    );
}
