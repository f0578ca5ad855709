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
//! thread, which sleeps until each chunk's due time and writes it. No event
//! loop rounds timeouts to milliseconds (the asyncio proxy this replaces
//! made a 2 ms round trip 2.35 ms). The process asks for a timer slack of
//! 1 ns instead of the default 50 µs, and a sleep still ends some tens of
//! microseconds late on this machine (the wake-up of a virtual CPU), so the
//! delivery threads learn by how much (`WakeUp`) and set their alarms that
//! much early, then wait out what is left of a wake-up that came early on
//! the CPU: deliveries are centred on their due times.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering};
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
            WAKE_UP.sleep_until(due);
            if data.is_empty() || to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// How late a sleep ends, learnt from every sleep of every delivery thread.
struct WakeUp {
    /// Running estimate of the lateness, in ns.
    late_ns: AtomicI64,
}

static WAKE_UP: WakeUp = WakeUp {
    late_ns: AtomicI64::new(0),
};

/// Estimates above this are not believed (a preempted thread, not the
/// timer): the alarm is never set more than this early.
const MAX_EARLY_NS: i64 = 200_000;

impl WakeUp {
    /// Returns at `due` or as soon after it as the CPU allows.
    fn sleep_until(&self, due: Instant) {
        let early = Duration::from_nanos(
            self.late_ns.load(Ordering::Relaxed).clamp(0, MAX_EARLY_NS) as u64,
        );
        let alarm = due.checked_sub(early).unwrap_or(due);
        let now = Instant::now();
        if alarm <= now {
            // Already due (the chunk waited behind others): no sleep to learn from.
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            return;
        }
        thread::sleep(alarm - now);
        let woke = Instant::now();
        // Lateness of this sleep against its alarm; the estimate moves an
        // eighth of the way towards it.
        let late = woke.saturating_duration_since(alarm).as_nanos() as i64;
        let estimate = self.late_ns.load(Ordering::Relaxed);
        self.late_ns
            .store(estimate + (late - estimate) / 8, Ordering::Relaxed);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
    }
}
