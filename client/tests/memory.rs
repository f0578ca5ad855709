//! A server at its `maxmemory` (policy `noeviction`, as `module/valkey.conf`
//! sets): commands that add work are refused with `Error::ServerFull`, and
//! everything that drains, settles or reads still runs, so a worker with
//! default settings drains the backlog that filled it. On every target
//! (module, scripts on Valkey, scripts on Redis 7.0).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vtasks_client::scripts;
use vtasks_client::*;
use vtasks_testkit::{Server, Target};

async fn connect(server: &Server) -> Client {
    let mut options = ClientOptions::new(server.url());
    options.engine = Target::current().engine().parse().unwrap();
    Client::connect_with(options).await.unwrap()
}

fn queue() -> QueueName {
    QueueName::new("full").unwrap()
}

fn task(id: &str) -> NewTask {
    // About 2 KB each: a few thousand fill 8 MB.
    let body = format!("{{\"id\":\"{id}\",\"pad\":\"{}\"}}", "x".repeat(2000));
    NewTask::new(id, body.into_bytes())
}

/// Enqueues batches of 50 until the server refuses, then single tasks
/// until it refuses those too (a batch's own arguments count towards the
/// memory in use while it is read, so a smaller call may still fit); the
/// ids it accepted and the last refusal.
async fn fill(client: &Client) -> (Vec<String>, Error) {
    let mut ids = Vec::new();
    for size in [50, 1] {
        for batch in 0.. {
            let chunk: Vec<String> = (0..size).map(|i| format!("t-{size}-{batch}-{i}")).collect();
            let tasks: Vec<NewTask> = chunk.iter().map(|id| task(id)).collect();
            match client.enqueue_many(&queue(), &tasks, None).await {
                Ok(added) => {
                    assert!(added.iter().all(|a| *a));
                    ids.extend(chunk);
                }
                Err(err) if size == 1 => return (ids, err),
                Err(_) => break,
            }
            assert!(batch < 5000, "8 MB never filled");
        }
    }
    unreachable!()
}

fn lease(d: &Delivery) -> (String, i64) {
    (d.id.clone(), d.token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_new_work_and_a_default_worker_drains_it() {
    let server = Server::start_with(&["--maxmemory", "8mb"]);
    let client = connect(&server).await;
    let q = queue();

    // Before the server fills: a dead letter, and two tasks held by a
    // consumer, to settle once it is full.
    client.enqueue(&q, task("poison")).await.unwrap();
    let poison = client
        .fetch(&Fetch::new(vec![q.clone()], "early"))
        .await
        .unwrap();
    let poison = &poison.tasks[0];
    let item = (
        poison.id.clone(),
        poison.token,
        Retry::Never,
        "bad".to_string(),
    );
    client.nack(&q, &[item]).await.unwrap();
    client.enqueue(&q, task("held-1")).await.unwrap();
    client.enqueue(&q, task("held-2")).await.unwrap();
    let held = client
        .fetch(&Fetch {
            count: 2,
            ..Fetch::new(vec![q.clone()], "early")
        })
        .await
        .unwrap()
        .tasks;
    assert_eq!(held.len(), 2);

    let (mut ids, refusal) = fill(&client).await;
    assert!(ids.len() > 1000, "only {} tasks fitted", ids.len());
    assert!(
        matches!(&refusal, Error::ServerFull(text) if text.starts_with("OOM ")),
        "{refusal:?}"
    );
    let message = refusal.to_string();
    assert!(message.contains("maxmemory"), "{message}");
    assert_eq!(refusal.code(), Some("OOM"));

    // Full: adding work is refused, with nothing written ...
    let err = client.enqueue(&q, task("one-more")).await.unwrap_err();
    assert!(matches!(err, Error::ServerFull(_)), "{err:?}");
    assert!(client.get(&q, "one-more").await.unwrap().is_none());
    let err = client.requeue_dead(&q, None).await.unwrap_err();
    assert!(matches!(err, Error::ServerFull(_)), "{err:?}");
    // ... reading, renewing, giving back and settling are not.
    let stats = client.stats(&q).await.unwrap();
    assert_eq!(stats.get("ready"), Some(ids.len() as i64));
    assert_eq!(stats.get("dead"), Some(1));
    assert_eq!(client.dead_letters(&q, 0, 10).await.unwrap().len(), 1);
    assert!(client.get(&q, &ids[0]).await.unwrap().is_some());
    let renewed = client
        .extend(&q, &[lease(&held[0])], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(renewed, [Settled::Ok]);
    let released = client.release(&q, &[lease(&held[1])]).await.unwrap();
    assert_eq!(released, [Settled::Ok]);
    let (id, token) = lease(&held[0]);
    let acked = client
        .ack(&q, &[(id, token, Some(b"1".to_vec()))], None)
        .await
        .unwrap();
    assert_eq!(acked, [Settled::Ok]);
    ids.push(held[1].id.clone());

    // A worker with default settings (burst, to end) drains all of it.
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let core = WorkerCore::new(
        client.clone(),
        WorkerOptions {
            burst: true,
            ..WorkerOptions::new(vec![q.clone()], "drainer")
        },
    )
    .unwrap();
    let stats = run(
        core,
        {
            let seen = seen.clone();
            move |d: Delivery| {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap().entry(d.id.clone()).or_default() += 1;
                    Outcome::Success(Some(b"\"ok\"".to_vec()))
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
        for id in &ids {
            assert_eq!(seen.get(id), Some(&1), "{id} ran once");
        }
    }
    assert_eq!(stats.succeeded, ids.len() as u64);
    assert_eq!(stats.server_full, 0, "nothing the worker sends is refused");
    let after = client.stats(&q).await.unwrap();
    assert_eq!(after.get("ready"), Some(0));
    assert_eq!(after.get("leased"), Some(0));
    assert_eq!(after.get("acked"), Some(ids.len() as i64 + 1));
}

/// Clearing adds no work: a full server runs it, and what it deletes makes
/// room for new tasks.
#[tokio::test]
async fn a_full_server_runs_clear_and_has_room_again() {
    let server = Server::start_with(&["--maxmemory", "8mb"]);
    let client = connect(&server).await;
    let q = queue();
    let (ids, refusal) = fill(&client).await;
    assert!(ids.len() > 1000, "only {} tasks fitted", ids.len());
    assert!(matches!(refusal, Error::ServerFull(_)), "{refusal:?}");
    let mut cleared = 0;
    loop {
        match client.clear(&q).await.unwrap() {
            0 => break,
            n => cleared += n,
        }
    }
    assert_eq!(cleared, ids.len() as u64);
    assert!(client.enqueue(&q, task("after")).await.unwrap());
}

/// The scripts engine's three functions differ in their flags (what a full
/// server runs), so each runs only the commands of its kind.
#[test]
fn each_library_function_runs_only_its_own_commands() {
    let server = Server::start();
    let mut con = server.connect();
    let _: redis::Value = scripts::load_cmd().query(&mut con).unwrap();
    let keys = scripts::declared_keys(&[b"VTASKS.STATS", b"{q}"]);
    let mut call = |command: &str, function: &str, name: &str| {
        let mut cmd = redis::cmd(command);
        cmd.arg(function)
            .arg(keys.len())
            .arg(&keys)
            .arg(name)
            .arg("{q}");
        cmd.query::<redis::Value>(&mut con).unwrap_err().to_string()
    };
    let lib = scripts::function_name();
    let err = call("FCALL", &format!("{lib}_settle"), "ENQUEUE");
    assert!(err.contains("VTASKS.ENQUEUE runs in function"), "{err}");
    let err = call("FCALL", lib, "CLEAR");
    assert!(err.contains("VTASKS.CLEAR runs in function"), "{err}");
    let err = call("FCALL", lib, "STATS");
    assert!(err.contains("VTASKS.STATS runs in function"), "{err}");
    let err = call("FCALL_RO", &format!("{lib}_read"), "FETCHN");
    assert!(err.contains("VTASKS.FETCHN runs in function"), "{err}");
    // The server itself keeps writing functions out of FCALL_RO.
    let err = call("FCALL_RO", &format!("{lib}_settle"), "PAUSE");
    assert!(err.to_lowercase().contains("write flag"), "{err}");
}
