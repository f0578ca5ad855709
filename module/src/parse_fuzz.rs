//! A property harness for the commands' argument parsers, without a server:
//! random and mutated argument lists go through every parser; none may
//! panic, every error must render as a reply with a code, and whatever a
//! parser accepts must lie within the documented limits. The live-server
//! fuzz (`tests/bad_input.rs`) covers the same inputs end to end; this one
//! is fast enough for millions of cases (`VTASKS_PARSE_FUZZ_CASES`, default
//! 20,000 per parser; `make fuzz` runs 1,000,000).

use crate::args::{parse_int, Args};
use crate::core::error::VtError;
use crate::core::keys::*;
use crate::core::queue::{Retry, When};
use crate::parse::*;

/// xorshift64*: deterministic, so a failure names the seed that found it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[self.below(items.len())]
    }
}

const KEYWORDS: &[&[u8]] = &[
    b"TASK",
    b"task",
    b"PRIORITY",
    b"DELAY",
    b"RUNAT",
    b"ATTEMPTS",
    b"LOSTLEASES",
    b"REPLACEFINISHED",
    b"MAXLEN",
    b"CONSUMER",
    b"COUNT",
    b"LEASE",
    b"BLOCK",
    b"KEEP",
    b"ACK",
    b"NACK",
    b"DEAD",
    b"ALL",
    b"IDS",
    b"OFFSET",
    b"NOW",
    b"SLEPT",
    b"NEXT",
    b"CATCHUP",
    b"LAST",
    b"NONE",
    b"DISABLED",
];

const NUMBERS: &[&[u8]] = &[
    b"0",
    b"1",
    b"2",
    b"3",
    b"-1",
    b"100",
    b"101",
    b"-100",
    b"-101",
    b"1000",
    b"1001",
    b"10000",
    b"10001",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"9223372036854775808",
    b"99999999999999999999",
    b"1e3",
    b"0x10",
    b"+5",
    b" 1",
    b"1.5",
    b"",
    b"281474976710656",
    b"31536000000",
    b"31536000001",
];

const QUEUES: &[&[u8]] = &[
    b"{q}", b"{other}", b"q", b"{}", b"{q", b"q}", b"{a}b", b"{q}:x",
];

/// One argument: a keyword, number, queue name, or something odd.
fn word(rng: &mut Rng, scratch: &mut Vec<Vec<u8>>) -> usize {
    let bytes: Vec<u8> = match rng.below(8) {
        0 | 1 => rng.pick(KEYWORDS).to_vec(),
        2 | 3 => rng.pick(NUMBERS).to_vec(),
        4 => rng.pick(QUEUES).to_vec(),
        5 => (0..rng.below(12)).map(|_| rng.next() as u8).collect(),
        6 => vec![b'x'; [0, 1, 128, 129, 256, 257, 4096][rng.below(7)]],
        _ => format!("t{}", rng.below(5)).into_bytes(),
    };
    scratch.push(bytes);
    scratch.len() - 1
}

/// A valid argument list for parser `kind` (see `parse_all`).
fn valid_words(kind: usize) -> Vec<Vec<u8>> {
    let words: &[&str] = match kind {
        0 => &[
            "TASK",
            "t1",
            "{}",
            "PRIORITY",
            "5",
            "DELAY",
            "10",
            "ATTEMPTS",
            "3",
            "LOSTLEASES",
            "2",
            "TASK",
            "t2",
            "x",
            "REPLACEFINISHED",
        ],
        1 => &[
            "2", "{q}", "{other}", "CONSUMER", "w", "COUNT", "10", "LEASE", "5000", "BLOCK", "100",
            "KEEP", "0", "ACK", "1", "{q}", "t1", "7", "\"ok\"", "NACK", "1", "{other}", "t2", "8",
            "DEAD", "boom",
        ],
        2 => &["2", "t1", "7", "t2", "8"],
        3 => &["t1", "7", "result"],
        4 => &["t1", "7", "1000", "error text"],
        5 => &["IDS", "t1", "t2"],
        6 => &["ALL"],
        8 => &[
            "nightly",
            "cron UTC 0 3 * * *",
            "{}",
            "NEXT",
            "1000",
            "PRIORITY",
            "5",
            "ATTEMPTS",
            "2",
            "CATCHUP",
            "NONE",
            "DISABLED",
        ],
        _ => &["7"],
    };
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

/// A valid argument list for a parser with one to three mutations.
fn valid(kind: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut args = valid_words(kind);
    // One to three mutations: drop, repeat, swap or replace a word.
    for _ in 0..1 + rng.below(3) {
        if args.is_empty() {
            break;
        }
        let i = rng.below(args.len());
        match rng.below(4) {
            0 => {
                args.remove(i);
            }
            1 => args.insert(i, args[i].clone()),
            2 => {
                let j = rng.below(args.len());
                args.swap(i, j);
            }
            _ => {
                let mut scratch = Vec::new();
                let w = word(rng, &mut scratch);
                args[i] = scratch.swap_remove(w);
            }
        }
    }
    args
}

fn random_args(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut scratch = Vec::new();
    for _ in 0..rng.below(14) {
        word(rng, &mut scratch);
    }
    scratch
}

/// An error must render as a reply: a code word, then a message.
fn check_error(err: &VtError, input: &[Vec<u8>]) {
    let text = err.to_string();
    let code = text.split(' ').next().unwrap_or("");
    assert!(
        !code.is_empty()
            && code.chars().all(|c| c.is_ascii_uppercase())
            && text.len() > code.len() + 1,
        "error {text:?} for {input:?} has no code"
    );
    assert!(
        !text.contains('\r') && !text.contains('\n'),
        "error {text:?} breaks the reply line"
    );
}

fn parse_all(kind: usize, input: &[Vec<u8>]) {
    let items: Vec<&[u8]> = input.iter().map(|v| v.as_slice()).collect();
    let mut a = Args::new(&items);
    let outcome: Result<(), VtError> = match kind {
        0 => parse_tasks(&mut a).map(|tasks| {
            assert!(!tasks.is_empty() && tasks.len() <= MAX_ENQUEUE_BATCH);
            for t in &tasks {
                assert!(!t.id.is_empty() && t.id.len() <= MAX_ID_LEN);
                assert!((MIN_PRIORITY..=MAX_PRIORITY).contains(&t.priority));
                assert!((1..=MAX_ATTEMPTS).contains(&t.max_attempts));
                assert!((1..=MAX_LOST_LEASES).contains(&t.max_lost_leases));
                match t.when {
                    When::Delay(ms) => assert!((0..=MAX_DURATION_MS).contains(&ms)),
                    When::At(ms) => assert!((0..=MAX_TIMESTAMP_MS).contains(&ms)),
                    When::Now => {}
                }
            }
        }),
        1 => FetchCall::parse(&mut a).map(|call| {
            let r = &call.request;
            assert!(!r.queues.is_empty() && r.queues.len() as i64 <= MAX_QUEUES);
            assert!(!r.consumer.is_empty() && r.consumer.len() <= MAX_CONSUMER_LEN);
            assert!((1..=MAX_FETCH_COUNT as usize).contains(&r.count));
            assert!((1..=MAX_DURATION_MS).contains(&r.lease_ms));
            assert!(call.block_ms.is_none_or(|ms| (0..=MAX_DURATION_MS).contains(&ms)));
            assert!((0..=MAX_DURATION_MS).contains(&call.keep_ms));
            for (queue, item) in &call.acks {
                assert!(*queue < r.queues.len() && item.token >= 1);
            }
            for (queue, item) in &call.nacks {
                assert!(*queue < r.queues.len() && item.token >= 1);
                assert!(matches!(item.retry, Retry::Never)
                    || matches!(item.retry, Retry::After(ms) if (0..=MAX_DURATION_MS).contains(&ms)));
            }
        }),
        2 => parse_lease_refs(&mut a, "EXTEND").map(|refs| {
            assert!(!refs.is_empty());
            assert!(refs.iter().all(|r| r.token >= 1 && r.id.len() <= MAX_ID_LEN));
        }),
        3 => parse_ack_item(&mut a).map(|item| assert!(item.token >= 1)),
        4 => parse_nack_item(&mut a).map(|item| assert!(item.token >= 1)),
        5 | 6 => parse_selection(&mut a).map(|_| ()),
        8 => parse_schedule(&mut a).map(|(name, def, next)| {
            assert!(!name.is_empty() && name.len() <= MAX_SCHEDULE_NAME);
            assert!(!def.spec.is_empty() && def.spec.len() <= MAX_SCHEDULE_SPEC);
            assert!(def.spec.iter().all(|c| (0x20..0x7f).contains(c)));
            assert!(def.payload.len() <= MAX_SCHEDULE_PAYLOAD);
            assert!((MIN_PRIORITY..=MAX_PRIORITY).contains(&def.priority));
            assert!((1..=MAX_ATTEMPTS).contains(&def.max_attempts));
            assert!((0..=MAX_TIMESTAMP_MS).contains(&next));
        }),
        _ => parse_token(&mut a).map(|t| assert!(t >= 1)),
    };
    assert!(
        a.position() <= items.len(),
        "the cursor ran past the arguments"
    );
    if let Err(err) = outcome {
        check_error(&err, input);
    }
}

fn cases() -> u64 {
    std::env::var("VTASKS_PARSE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn every_parser_survives_random_and_mutated_arguments() {
    const PARSERS: usize = 9;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..cases() {
        let kind = (case % PARSERS as u64) as usize;
        let input = if rng.below(2) == 0 {
            random_args(&mut rng)
        } else {
            valid(kind, &mut rng)
        };
        let seed = rng.0;
        let run = std::panic::catch_unwind(|| parse_all(kind, &input));
        assert!(
            run.is_ok(),
            "parser {kind} panicked on {input:?} (rng state {seed:#x})"
        );
    }
}

#[test]
fn the_valid_forms_parse() {
    // The mutation harness starts from these; they must be accepted as given.
    for kind in 0..9 {
        let input = valid_words(kind);
        let items: Vec<&[u8]> = input.iter().map(|v| v.as_slice()).collect();
        let mut a = Args::new(&items);
        let ok = match kind {
            0 => parse_tasks(&mut a).map(|t| t.len() == 2),
            1 => FetchCall::parse(&mut a).map(|c| c.acks.len() == 1 && c.nacks.len() == 1),
            2 => parse_lease_refs(&mut a, "EXTEND").map(|r| r.len() == 2),
            3 => parse_ack_item(&mut a).map(|i| i.token == 7),
            4 => parse_nack_item(&mut a).map(|i| matches!(i.retry, Retry::After(1000))),
            5 | 6 => parse_selection(&mut a).map(|_| true),
            8 => parse_schedule(&mut a).map(|(_, def, next)| !def.enabled && next == 1000),
            _ => parse_token(&mut a).map(|t| t == 7),
        };
        assert!(matches!(ok, Ok(true)), "valid form {kind}: {ok:?}");
        assert!(a.is_empty(), "valid form {kind} left arguments");
    }
    assert!(parse_int(b"12", "n", 0, 100).is_ok());
}
