//! The scripts engine on a server in cluster mode (one node owning every
//! slot). Cluster mode makes the server check that every key a function
//! touches is in the slot of the keys it declared, so this proves the hash
//! tag discipline of the library: declared queue keys, and the task keys it
//! derives from them, all live in the queue's slot.

use std::time::{Duration, Instant};

use vtasks_client::*;
use vtasks_testkit::Server;

fn cluster_node() -> Server {
    let server = Server::start_without_module(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ]);
    let mut con = server.connect();
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query(&mut con)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).unwrap();
        if info.contains("cluster_state:ok") {
            return server;
        }
        assert!(Instant::now() < deadline, "cluster never came up: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fetch(queues: &[&QueueName], count: usize) -> Fetch {
    Fetch {
        count,
        lease: Duration::from_millis(200),
        ..Fetch::new(queues.iter().map(|q| (*q).clone()).collect(), "w")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_a_command_touches_is_in_its_queues_slot() {
    let server = cluster_node();
    let mut options = ClientOptions::new(server.url());
    options.engine = EngineChoice::Scripts;
    let client = Client::connect_with(options).await.unwrap();
    let queue = QueueName::new("orders").unwrap();

    let tasks: Vec<NewTask> = (0..20)
        .map(|i| {
            let mut t = NewTask::new(format!("t{i}"), b"{}".to_vec());
            if i >= 15 {
                t.when = When::After(Duration::from_millis(150));
            }
            t
        })
        .collect();
    client
        .enqueue_many(&queue, &tasks, Some(1000))
        .await
        .unwrap();

    // Lease 5 and let them expire; dead-letter 5; acknowledge 5 in a fetch.
    let abandoned = client.fetch(&fetch(&[&queue], 5)).await.unwrap();
    assert_eq!(abandoned.tasks.len(), 5);
    let doomed = client.fetch(&fetch(&[&queue], 5)).await.unwrap();
    let nacks: Vec<_> = doomed
        .tasks
        .iter()
        .map(|d| (d.id.clone(), d.token, Retry::Never, "bad".to_string()))
        .collect();
    client.nack(&queue, &nacks).await.unwrap();
    let held = client.fetch(&fetch(&[&queue], 5)).await.unwrap();
    let mut request = fetch(&[&queue], 20);
    request.acks = held
        .tasks
        .iter()
        .map(|d| Ack {
            queue: queue.clone(),
            id: d.id.clone(),
            token: d.token,
            result: Some(b"1".to_vec()),
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let rest = client.fetch(&request).await.unwrap();
    assert!(rest.acks.iter().all(|a| *a == Settled::Ok));
    // The 5 expired leases came back and the 5 delayed tasks fell due.
    assert_eq!(rest.tasks.len(), 10, "{rest:?}");

    assert_eq!(client.requeue_dead(&queue, None).await.unwrap(), 5);
    assert_eq!(client.purge_dead(&queue, None).await.unwrap(), 0);
    assert!(client.get(&queue, "t0").await.unwrap().is_some());
    client.pause(&queue).await.unwrap();
    client.resume(&queue).await.unwrap();
    let stats = client.stats(&queue).await.unwrap();
    assert_eq!(stats.get("enqueued"), Some(20));
    assert_eq!(stats.get("acked"), Some(5));

    // A blocking fetch sleeps on the wake list and an enqueue wakes it.
    let mut fetcher = client.blocking_fetcher();
    let fetcher_id = fetcher.connect().await.unwrap();
    let mut blocking = fetch(&[&queue], 100);
    blocking.block = Some(Duration::from_secs(10));
    let drained = fetcher.fetch(&blocking).await.unwrap();
    assert_eq!(drained.tasks.len(), 5, "the requeued tasks");
    let waiter = tokio::spawn(async move {
        let mut request = fetch(&[&QueueName::new("orders").unwrap()], 1);
        request.block = Some(Duration::from_secs(10));
        let started = Instant::now();
        let got = fetcher.fetch(&request).await.unwrap();
        (got.tasks.len(), started.elapsed())
    });
    // Enqueued once the fetch sleeps on the wake list, so the wake-up,
    // not the first look, hands it over.
    tokio::task::block_in_place(|| server.wait_blocked(fetcher_id));
    client
        .enqueue(&queue, NewTask::new("late", b"{}".to_vec()))
        .await
        .unwrap();
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got, 1);
    assert!(waited < Duration::from_secs(5), "woken by the enqueue");

    // Queues in different slots cannot share one call in a cluster, with
    // either engine: the server refuses it before anything runs.
    let other = QueueName::new("invoices").unwrap();
    let err = client
        .fetch(&fetch(&[&queue, &other], 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
}
