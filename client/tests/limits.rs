//! Both engines take their limits and defaults from `vtasks-protocol`: every
//! boundary value is accepted, and the first value past it refused, with
//! the same reply, by the module (Valkey with `libvtasks.so`) and by the
//! scripts engine on Valkey and on Redis. The values come from the crate,
//! so a limit changed there is checked at its new place.

use redis::aio::MultiplexedConnection;
use redis::Value;
use vtasks_client::vtasks_protocol::*;
use vtasks_client::{scripts, Error};
use vtasks_testkit::Server;

/// One server per engine, each with its own data.
struct Engines {
    _servers: Vec<Server>,
    module: MultiplexedConnection,
    scripts_valkey: MultiplexedConnection,
    scripts_redis: MultiplexedConnection,
}

/// A connection without a response timeout: a 16 MiB payload or 10,000
/// tasks through the Lua library take a while on a loaded machine.
async fn connect(server: &Server) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// What a command came to: its reply, with unix times masked (they differ
/// between servers), or the error text the caller sees.
type Outcome = std::result::Result<String, String>;

fn shown(value: &Value) -> String {
    match value {
        Value::Int(n) if *n > 1_000_000_000_000 => "<time>".to_string(),
        Value::Int(n) => n.to_string(),
        Value::BulkString(bytes) if bytes.len() > 64 => format!("<{} bytes>", bytes.len()),
        Value::BulkString(bytes)
            if std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|n| n > 1_000_000_000_000) =>
        {
            "<time>".to_string()
        }
        Value::BulkString(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".to_string(),
        Value::Nil => "nil".to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(shown).collect::<Vec<_>>().join(", ")
        ),
        other => format!("{other:?}"),
    }
}

fn outcome(reply: vtasks_client::Result<Value>) -> Outcome {
    match reply {
        Ok(value) => Ok(shown(&value)),
        Err(err) => Err(err.to_string()),
    }
}

impl Engines {
    async fn start() -> Engines {
        let servers = vec![
            Server::start_with_module(&[]),
            Server::start_without_module(&[]),
            Server::start_redis(&[]),
        ];
        Engines {
            module: connect(&servers[0]).await,
            scripts_valkey: connect(&servers[1]).await,
            scripts_redis: connect(&servers[2]).await,
            _servers: servers,
        }
    }

    /// Runs one `VTASKS.*` command on every engine; asserts that they agree
    /// and returns the common outcome.
    async fn run(&mut self, words: &[Vec<u8>]) -> Outcome {
        let mut cmd = redis::cmd(std::str::from_utf8(&words[0]).unwrap());
        for word in &words[1..] {
            cmd.arg(word);
        }
        let module = outcome(
            cmd.query_async::<Value>(&mut self.module)
                .await
                .map_err(Error::from),
        );
        let on_valkey = outcome(scripts::query(&mut self.scripts_valkey, &cmd).await);
        let on_redis = outcome(scripts::query(&mut self.scripts_redis, &cmd).await);
        let name = String::from_utf8_lossy(&words[0]);
        assert_eq!(
            module, on_valkey,
            "{name}: module and scripts on Valkey differ"
        );
        assert_eq!(
            module, on_redis,
            "{name}: module and scripts on Redis differ"
        );
        module
    }

    async fn accepted(&mut self, what: &str, words: Vec<Vec<u8>>) -> String {
        match self.run(&words).await {
            Ok(reply) => reply,
            Err(err) => panic!("{what}: refused by every engine: {err}"),
        }
    }

    async fn refused(&mut self, what: &str, words: Vec<Vec<u8>>) -> String {
        match self.run(&words).await {
            Ok(reply) => panic!("{what}: accepted by every engine: {reply}"),
            Err(err) => err,
        }
    }
}

fn words(parts: &[&dyn ToString]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_string().into_bytes()).collect()
}

fn enqueue(id: &str, options: &[&dyn ToString]) -> Vec<Vec<u8>> {
    let mut w = words(&[&"VTASKS.ENQUEUE", &"{lim}", &"TASK", &id, &"{}"]);
    w.extend(words(options));
    w
}

fn fetch(queues: &[String], options: &[&dyn ToString]) -> Vec<Vec<u8>> {
    let mut w = words(&[&"VTASKS.FETCHN", &queues.len()]);
    w.extend(queues.iter().map(|q| q.clone().into_bytes()));
    w.extend(words(options));
    w
}

/// The value of `field` in a `VTASKS.GET` reply as `shown` prints it.
fn field<'a>(get: &'a str, name: &str) -> &'a str {
    let needle = format!(" {name}, ");
    let at = get
        .find(&needle)
        .unwrap_or_else(|| panic!("{name} in {get}"))
        + needle.len();
    get[at..]
        .split([',', ']'])
        .next()
        .unwrap()
        .trim_matches('"')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_accept_and_refuse_at_the_same_limits() {
    let mut e = Engines::start().await;

    // Priority and attempts.
    for (p, ok) in [
        (MIN_PRIORITY, true),
        (MAX_PRIORITY, true),
        (MIN_PRIORITY - 1, false),
        (MAX_PRIORITY + 1, false),
    ] {
        let cmd = enqueue(&format!("p{p}"), &[&"PRIORITY", &p]);
        if ok {
            assert_eq!(e.accepted("priority", cmd).await, "[1]");
        } else {
            let err = e.refused("priority", cmd).await;
            let range = format!("between {MIN_PRIORITY} and {MAX_PRIORITY}");
            assert!(err.contains(&range), "{err}");
        }
    }
    for (n, ok) in [
        (1, true),
        (MAX_ATTEMPTS, true),
        (0, false),
        (MAX_ATTEMPTS + 1, false),
    ] {
        let cmd = enqueue(&format!("a{n}"), &[&"ATTEMPTS", &n]);
        if ok {
            e.accepted("attempts", cmd).await;
        } else {
            let err = e.refused("attempts", cmd).await;
            assert!(
                err.contains(&format!("between 1 and {MAX_ATTEMPTS}")),
                "{err}"
            );
        }
    }

    for (n, ok) in [
        (1, true),
        (MAX_LOST_LEASES, true),
        (0, false),
        (MAX_LOST_LEASES + 1, false),
    ] {
        let cmd = enqueue(&format!("l{n}"), &[&"LOSTLEASES", &n]);
        if ok {
            e.accepted("lost leases", cmd).await;
        } else {
            let err = e.refused("lost leases", cmd).await;
            assert!(
                err.contains(&format!("between 1 and {MAX_LOST_LEASES}")),
                "{err}"
            );
        }
    }

    // Durations and times.
    e.accepted("delay", enqueue("d1", &[&"DELAY", &MAX_DURATION_MS]))
        .await;
    e.refused("delay", enqueue("d2", &[&"DELAY", &(MAX_DURATION_MS + 1)]))
        .await;
    e.accepted("runat", enqueue("r1", &[&"RUNAT", &MAX_TIMESTAMP_MS]))
        .await;
    e.refused("runat", enqueue("r2", &[&"RUNAT", &(MAX_TIMESTAMP_MS + 1)]))
        .await;

    // Sizes: task id, queue name, payload.
    e.accepted("id", enqueue(&"i".repeat(MAX_ID_LEN), &[]))
        .await;
    let err = e
        .refused("id", enqueue(&"i".repeat(MAX_ID_LEN + 1), &[]))
        .await;
    assert!(err.contains(&format!("1-{MAX_ID_LEN} bytes")), "{err}");
    let longest = format!("{{{}}}", "q".repeat(MAX_QUEUE_NAME));
    let too_long = format!("{{{}}}", "q".repeat(MAX_QUEUE_NAME + 1));
    e.accepted(
        "queue",
        words(&[&"VTASKS.ENQUEUE", &longest, &"TASK", &"x", &"{}"]),
    )
    .await;
    e.refused(
        "queue",
        words(&[&"VTASKS.ENQUEUE", &too_long, &"TASK", &"x", &"{}"]),
    )
    .await;
    let payload = |len: usize| {
        let mut w = words(&[&"VTASKS.ENQUEUE", &"{big}", &"TASK", &len]);
        w.push(vec![b'x'; len]);
        w
    };
    e.accepted("payload", payload(MAX_PAYLOAD)).await;
    let err = e.refused("payload", payload(MAX_PAYLOAD + 1)).await;
    assert!(
        err.contains(&format!("limit of {MAX_PAYLOAD} bytes")),
        "{err}"
    );
    e.accepted("cancel", words(&[&"VTASKS.CANCEL", &"{big}", &MAX_PAYLOAD]))
        .await;

    // Tasks per ENQUEUE.
    let batch = |n: usize, queue: &str| {
        let mut w = words(&[&"VTASKS.ENQUEUE", &queue]);
        for i in 0..n {
            w.extend(words(&[&"TASK", &i, &"{}"]));
        }
        w
    };
    e.accepted("batch", batch(MAX_ENQUEUE_BATCH, "{batch}"))
        .await;
    e.refused("batch", batch(MAX_ENQUEUE_BATCH + 1, "{batch2}"))
        .await;

    // FETCHN: count, queues, consumer name, lease, keep.
    let one = vec!["{batch}".to_string()];
    let consumer = "c".repeat(MAX_CONSUMER_LEN);
    let reply = e
        .accepted(
            "count",
            fetch(&one, &[&"CONSUMER", &consumer, &"COUNT", &MAX_FETCH_COUNT]),
        )
        .await;
    assert_eq!(
        reply.matches("\"{batch}\"").count(),
        MAX_FETCH_COUNT as usize
    );
    e.refused(
        "count",
        fetch(&one, &[&"CONSUMER", &"w", &"COUNT", &(MAX_FETCH_COUNT + 1)]),
    )
    .await;
    e.refused(
        "consumer",
        fetch(&one, &[&"CONSUMER", &"c".repeat(MAX_CONSUMER_LEN + 1)]),
    )
    .await;
    let queues = |n: i64| (0..n).map(|i| format!("{{f{i}}}")).collect::<Vec<_>>();
    e.accepted("queues", fetch(&queues(MAX_QUEUES), &[&"CONSUMER", &"w"]))
        .await;
    e.refused(
        "queues",
        fetch(&queues(MAX_QUEUES + 1), &[&"CONSUMER", &"w"]),
    )
    .await;
    for (option, max) in [("LEASE", MAX_DURATION_MS), ("KEEP", MAX_DURATION_MS)] {
        e.accepted(option, fetch(&one, &[&"CONSUMER", &"w", &option, &max]))
            .await;
        e.refused(
            option,
            fetch(&one, &[&"CONSUMER", &"w", &option, &(max + 1)]),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_apply_the_same_defaults_and_truncate_errors_alike() {
    let mut e = Engines::start().await;
    let get = |id: &str| words(&[&"VTASKS.GET", &"{lim}", &id]);

    // A task enqueued without ATTEMPTS gets DEFAULT_MAX_ATTEMPTS; one
    // leased without LEASE, DEFAULT_LEASE_MS.
    e.accepted("enqueue", enqueue("t", &[])).await;
    let fetched = e
        .accepted("fetch", fetch(&["{lim}".to_string()], &[&"CONSUMER", &"w"]))
        .await;
    assert!(
        fetched.starts_with("[[[\"{lim}\", \"t\", 1, 1, "),
        "{fetched}"
    );
    let info = e.accepted("get", get("t")).await;
    assert_eq!(
        field(&info, "max_attempts"),
        DEFAULT_MAX_ATTEMPTS.to_string()
    );
    // The reply masks times; read them unmasked from one engine.
    let raw: Vec<Value> = redis::cmd("VTASKS.GET")
        .arg("{lim}")
        .arg("t")
        .query_async(&mut e.module)
        .await
        .unwrap();
    let time = |name: &str| {
        let at = raw.iter().position(|v| shown(v) == name).unwrap();
        redis::from_redis_value::<i64>(raw[at + 1].clone()).unwrap()
    };
    assert_eq!(time("deadline") - time("leased_at"), DEFAULT_LEASE_MS);

    // Error texts: MAX_ERROR_TEXT bytes are kept whole, longer ones cut to
    // that length, by every engine.
    for (id, len) in [("whole", MAX_ERROR_TEXT), ("cut", MAX_ERROR_TEXT + 1000)] {
        e.accepted("enqueue", enqueue(id, &[&"ATTEMPTS", &1])).await;
        let reply = e
            .accepted("fetch", fetch(&["{lim}".to_string()], &[&"CONSUMER", &"w"]))
            .await;
        let leased = format!("\"{id}\", ");
        let token = reply
            .find(&leased)
            .map(|at| reply[at + leased.len()..].split(',').next().unwrap())
            .unwrap_or_else(|| panic!("{id} not leased: {reply}"));
        let mut cmd = words(&[&"VTASKS.NACK", &"{lim}", &1, &id, &token, &"DEAD"]);
        cmd.push(vec![b'e'; len]);
        assert_eq!(e.accepted("nack", cmd).await, "[DEAD]");
        let info = e.accepted("get", get(id)).await;
        assert_eq!(field(&info, "error"), format!("<{MAX_ERROR_TEXT} bytes>"));
    }
}
