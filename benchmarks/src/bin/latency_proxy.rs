//! A TCP proxy that adds a fixed latency to each direction, to put Valkey
//! "2 ms away" on one machine (no `tc netem` here).
//!
//!   latency_proxy --target 127.0.0.1:6379 [--delay-ms 1] [--listen 127.0.0.1:0]
//!
//! Prints `listening on HOST:PORT` once it listens, then runs until it is
//! killed or its standard input closes (a parent that dies takes it along).
//!
//! Every chunk read from one side is written to the other `--delay-ms`
//! after the read returned, and reading goes on while earlier chunks wait:
//! latency, not a bandwidth limit. Each direction of each connection has a
//! reading thread, which stamps chunks with their due time, and a delivery
//! thread, which sleeps until each chunk's due time and writes it. The
//! process asks for a timer slack of 1 ns, so those sleeps end within
//! microseconds of the due time instead of the default 50 µs late, and no
//! event loop rounds timeouts to milliseconds (the asyncio proxy this
//! replaces made a 2 ms round trip 2.36 ms).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

struct Options {
    target: String,
    listen: String,
    delay: Duration,
}

fn options() -> Options {
    let mut o = Options {
        target: String::new(),
        listen: "127.0.0.1:0".into(),
        delay: Duration::from_millis(1),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--target" => o.target = value,
            "--listen" => o.listen = value,
            "--delay-ms" => {
                let ms: f64 = value.parse().expect("--delay-ms: a number of milliseconds");
                assert!(
                    ms.is_finite() && ms >= 0.0,
                    "--delay-ms must not be negative"
                );
                o.delay = Duration::from_secs_f64(ms / 1000.0);
            }
            other => panic!("unknown argument {other} (usage: --target HOST:PORT [--delay-ms MS] [--listen HOST:PORT])"),
        }
    }
    assert!(!o.target.is_empty(), "--target HOST:PORT is required");
    o
}

fn main() {
    let o = options();
    // Threads inherit the timer slack of the thread that creates them.
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let listener = TcpListener::bind(&o.listen).expect("bind the listening address");
    println!(
        "listening on {}",
        listener.local_addr().expect("the bound address")
    );
    std::io::stdout().flush().expect("flush stdout");
    thread::spawn(|| {
        // Exit once the parent closes our standard input (or dies).
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    for client in listener.incoming().flatten() {
        let target = o.target.clone();
        let delay = o.delay;
        thread::spawn(move || forward(client, &target, delay));
    }
}

/// Connects to the target and starts both directions; a target that
/// cannot be reached closes the client's connection.
fn forward(client: TcpStream, target: &str, delay: Duration) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
    }
    let (Ok(client_write), Ok(server_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    pipe(client, server_write, delay);
    pipe(server, client_write, delay);
}

/// One direction: a reading thread and a delivery thread joined by a
/// channel of (due time, bytes); an empty chunk is the end of the stream,
/// delivered with the same delay as a shutdown of the writing side.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (chunks, due_chunks) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = chunks.send((Instant::now() + delay, Vec::new()));
    });
    thread::spawn(move || {
        while let Ok((due, data)) = due_chunks.recv() {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if data.is_empty() || to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
