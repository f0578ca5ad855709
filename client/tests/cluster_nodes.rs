//! The client and the worker core on a Valkey Cluster of several primaries
//! (`Cluster`: real servers joined by `valkey-cli --cluster create`), with
//! the test target's engine: each queue lives on the node of its slot, a
//! worker fetches from queues of every node and waits on each without
//! polling.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vtasks_client::cluster::key_slot;
use vtasks_client::*;
use vtasks_testkit::{Cluster, Target};

async fn connect(cluster: &Cluster) -> Client {
    let mut options = ClientOptions::new(cluster.url());
    options.engine = Target::current().engine().parse().unwrap();
    options.cluster = true;
    Client::connect_with(options).await.unwrap()
}

/// Queue names whose slots fall on every node, `per_node` each.
fn queues_on_every_node(cluster: &Cluster, primaries: usize, per_node: usize) -> Vec<QueueName> {
    let mut by_node: HashMap<usize, Vec<QueueName>> = HashMap::new();
    for i in 0.. {
        let queue = QueueName::new(&format!("q{i}")).unwrap();
        let node = cluster.primary_of(i64::from(key_slot(queue.wire().as_bytes())), 0);
        let list = by_node.entry(node).or_default();
        if list.len() < per_node {
            list.push(queue);
        }
        if by_node.len() == primaries && by_node.values().all(|l| l.len() == per_node) {
            break;
        }
    }
    let mut all: Vec<QueueName> = by_node.into_values().flatten().collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_reaches_the_node_of_its_queue() {
    let cluster = Cluster::start(3, 0);
    let client = connect(&cluster).await;
    assert!(client.is_cluster());
    let queues = queues_on_every_node(&cluster, 3, 2);
    for queue in &queues {
        let tasks: Vec<NewTask> = (0..5)
            .map(|i| NewTask::new(format!("{queue}-{i}"), b"{}".to_vec()))
            .collect();
        assert_eq!(
            client.enqueue_many(queue, &tasks, None).await.unwrap(),
            vec![true; 5]
        );
    }
    for queue in &queues {
        // The queue's data is on the node serving its slot, and only there.
        let slot = key_slot(queue.wire().as_bytes());
        let owner = cluster.primary_of(i64::from(slot), 0);
        for (i, node) in cluster.nodes.iter().enumerate() {
            let mut con = node.connect();
            let keys: i64 = redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot)
                .query(&mut con)
                .unwrap();
            assert_eq!(keys > 0, i == owner, "{queue} on node {i}");
        }
        let fetched = client
            .fetch(&Fetch {
                count: 2,
                ..Fetch::new(vec![queue.clone()], "w")
            })
            .await
            .unwrap();
        assert_eq!(fetched.tasks.len(), 2);
        let items: Vec<_> = fetched
            .tasks
            .iter()
            .map(|d| (d.id.clone(), d.token, Some(b"1".to_vec())))
            .collect();
        assert_eq!(
            client.ack(queue, &items, None).await.unwrap(),
            vec![Settled::Ok; 2]
        );
        let done = client
            .get(queue, &fetched.tasks[0].id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.status, Status::Done);
        let cancelled = client.cancel(queue, &[format!("{queue}-4")]).await.unwrap();
        assert_eq!(cancelled, vec![true]);
        let stats = client.stats(queue).await.unwrap();
        assert_eq!(stats.get("ready"), Some(2));
        assert_eq!(stats.get("acked"), Some(2));
        client.pause(queue).await.unwrap();
        client.resume(queue).await.unwrap();
    }
    assert!(client.memory_policy().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_queues_of_every_node_with_two_connections_per_node() {
    let cluster = Cluster::start(3, 0);
    let client = connect(&cluster).await;
    let queues = queues_on_every_node(&cluster, 3, 2);
    let mut ids = HashSet::new();
    for queue in &queues {
        let tasks: Vec<NewTask> = (0..200)
            .map(|i| NewTask::new(format!("{queue}-{i}"), b"{}".to_vec()))
            .collect();
        client.enqueue_many(queue, &tasks, None).await.unwrap();
        ids.extend(tasks.into_iter().map(|t| t.id));
    }
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let options = WorkerOptions {
        concurrency: 20,
        block: Duration::from_millis(300),
        burst: true,
        ..WorkerOptions::new(queues.clone(), "w")
    };
    let core = WorkerCore::new(client.clone(), options).unwrap();
    let peak: Arc<Mutex<Vec<usize>>> = Arc::default();
    let watching = {
        let nodes: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
        let peak = peak.clone();
        // Connections per node while the worker runs, besides this one.
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                let counts: Vec<usize> = nodes
                    .iter()
                    .map(|port| {
                        let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                            .unwrap()
                            .get_connection()
                            .unwrap();
                        let list: String =
                            redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
                        list.lines().count() - 1
                    })
                    .collect();
                let mut peak = peak.lock().unwrap();
                if peak.is_empty() {
                    *peak = counts;
                } else {
                    for (p, c) in peak.iter_mut().zip(counts) {
                        *p = (*p).max(c);
                    }
                }
                drop(peak);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
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
        assert_eq!(seen.len(), ids.len());
        assert!(seen.values().all(|&n| n == 1), "each ran once");
    }
    assert_eq!(stats.succeeded as usize, ids.len());
    for queue in &queues {
        let stats = client.stats(queue).await.unwrap();
        assert_eq!(stats.get("acked"), Some(200), "{queue}");
    }
    watching.join().unwrap();
    // The client's connection and the worker's fetch connection.
    let peak = peak.lock().unwrap();
    assert!(
        peak.iter().all(|&c| c <= 2),
        "connections per node: {peak:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_worker_wakes_for_any_of_its_queues_on_any_node() {
    let cluster = Cluster::start(3, 0);
    let client = connect(&cluster).await;
    let queues = queues_on_every_node(&cluster, 3, 3);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let options = WorkerOptions {
        concurrency: 5,
        // Long enough that only a wake-up explains a prompt start.
        block: Duration::from_secs(30),
        ..WorkerOptions::new(queues.clone(), "w")
    };
    let core = WorkerCore::new(client.clone(), options).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn({
        let seen = seen.clone();
        run(
            core,
            move |d: Delivery| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(d.id.clone());
                    Outcome::Success(None)
                }
            },
            async move {
                let _ = stop_rx.await;
            },
            Duration::from_secs(5),
        )
    });
    // Let the worker settle into its wait, then wake it through each queue
    // in turn: the first group of a node blocks, the others are watched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, queue) in queues.iter().enumerate().rev() {
        let id = format!("late-{i}");
        let started = Instant::now();
        client
            .enqueue(queue, NewTask::new(id.clone(), b"{}".to_vec()))
            .await
            .unwrap();
        while !seen.lock().unwrap().contains(&id) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{queue} never woke the worker"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop_tx.send(()).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!(stats.succeeded as usize, queues.len());
}

/// A queue over 16 partitions, spread over the nodes: tasks go to the
/// partition their id picks, a worker of the queue runs every task once,
/// and results, cancellation, dead letters and counts work for the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_queue_spreads_over_the_nodes_and_works_as_one() {
    let cluster = Cluster::start(3, 0);
    let mut options = ClientOptions::new(cluster.url());
    options.engine = Target::current().engine().parse().unwrap();
    options.cluster = true;
    options.partitions = Partitions::new([("emails", 16)]).unwrap();
    let client = Client::connect_with(options).await.unwrap();
    let emails = QueueName::new("emails").unwrap();
    let parts = client.partitions().all(&emails);
    assert_eq!(parts.len(), 16);
    let nodes: HashSet<usize> = parts
        .iter()
        .map(|p| cluster.primary_of(i64::from(key_slot(p.wire().as_bytes())), 0))
        .collect();
    assert_eq!(nodes.len(), 3, "the partitions are on every node");

    let tasks: Vec<NewTask> = (0..1000)
        .map(|i| NewTask::new(format!("{i:032x}"), b"{}".to_vec()))
        .collect();
    let added = client.enqueue_many(&emails, &tasks, None).await.unwrap();
    assert_eq!(added, vec![true; 1000]);
    // Idempotent by id: the same id finds the same partition.
    assert!(!client
        .enqueue(&emails, NewTask::new(tasks[5].id.clone(), b"{}".to_vec()))
        .await
        .unwrap());
    // Partition 0 is the queue itself: a client without the partitions
    // reports each partition alone.
    let plain = connect(&cluster).await;
    let mut used = 0;
    for part in &parts {
        let ready = plain.stats(part).await.unwrap().get("ready").unwrap_or(0);
        assert!(ready < 150, "{part}: {ready} of 1000");
        used += usize::from(ready > 0);
    }
    assert_eq!(used, 16, "every partition got tasks");
    let stats = client.stats(&emails).await.unwrap();
    assert_eq!(stats.get("ready"), Some(1000));
    assert_eq!(stats.get("enqueued"), Some(1000));

    // Cancel two, dead-letter two, then run the rest with a worker.
    let cancel = vec![tasks[0].id.clone(), tasks[1].id.clone()];
    assert_eq!(
        client.cancel(&emails, &cancel).await.unwrap(),
        vec![true, true]
    );
    let doomed = [tasks[2].id.clone(), tasks[3].id.clone()];
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let core = WorkerCore::new(
        client.clone(),
        WorkerOptions {
            concurrency: 20,
            block: Duration::from_millis(300),
            burst: true,
            ..WorkerOptions::new(vec![emails.clone()], "w")
        },
    )
    .unwrap();
    let stats = run(
        core,
        {
            let seen = seen.clone();
            let doomed = doomed.clone();
            move |d: Delivery| {
                let seen = seen.clone();
                let dead = doomed.contains(&d.id);
                async move {
                    *seen.lock().unwrap().entry(d.id.clone()).or_default() += 1;
                    if dead {
                        Outcome::Failure {
                            error: "boom".into(),
                            retry: Retry::Never,
                        }
                    } else {
                        Outcome::Success(Some(format!("\"{}\"", d.queue).into_bytes()))
                    }
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
        assert_eq!(seen.len(), 998);
        assert!(seen.values().all(|&n| n == 1), "each ran once");
    }
    assert_eq!((stats.succeeded, stats.failed), (996, 2));
    // Each result is found from the id alone, and its task ran in the
    // partition the id picks.
    for task in &tasks[4..] {
        let info = client.get(&emails, &task.id).await.unwrap().unwrap();
        assert_eq!(info.status, Status::Done);
        let part = client.partitions().of_task(&emails, &task.id);
        assert_eq!(info.result, Some(format!("\"{part}\"").into_bytes()));
    }
    let stats = client.stats(&emails).await.unwrap();
    assert_eq!(stats.get("acked"), Some(996));
    assert_eq!(stats.get("cancelled"), Some(2));
    assert_eq!(stats.get("dead"), Some(2));
    let dead = client.dead_letters(&emails, 0, 10).await.unwrap();
    let mut dead_ids: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();
    dead_ids.sort();
    let mut expected = doomed.to_vec();
    expected.sort();
    assert_eq!(dead_ids, expected);
    assert_eq!(
        client.dead_letters(&emails, 1, 10).await.unwrap(),
        dead[1..]
    );
    assert_eq!(
        client
            .requeue_dead(&emails, Some(&doomed[..1]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(client.purge_dead(&emails, None).await.unwrap(), 1);
    assert_eq!(client.stats(&emails).await.unwrap().get("ready"), Some(1));
    client.pause(&emails).await.unwrap();
    assert_eq!(client.stats(&emails).await.unwrap().get("paused"), Some(1));
    client.resume(&emails).await.unwrap();
    assert_eq!(client.stats(&emails).await.unwrap().get("paused"), Some(0));
}

/// A FETCHN that reaches a node not serving its queue's slot (a client's
/// slot map gone stale by a reshard) is redirected, as every other command
/// is, rather than answered empty by a node that no longer holds the queue.
/// The module's own commands only: the scripts engine's FCALL declares its
/// keys.
#[test]
fn a_fetch_at_a_node_not_serving_its_queue_is_redirected_module_only() {
    let cluster = Cluster::start(3, 0);
    let queue = QueueName::new("moved").unwrap();
    let slot = key_slot(queue.wire().as_bytes());
    let owner = cluster.primary_of(i64::from(slot), 0);
    let other = (owner + 1) % cluster.nodes.len();
    let mut con = cluster.nodes[other].connect();
    for names in [vec![queue.wire()], vec![queue.wire(), queue.wire()]] {
        let err = redis::cmd("VTASKS.FETCHN")
            .arg(names.len())
            .arg(&names)
            .arg("CONSUMER")
            .arg("w")
            .arg("COUNT")
            .arg(1)
            .query::<redis::Value>(&mut con)
            .unwrap_err();
        assert_eq!(err.code(), Some("MOVED"), "{err}");
    }
}
