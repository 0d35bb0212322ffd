//! Resuming an interrupted 4 MiB stream, beside the naive design that restarts it, in the same
//! run.
//!
//! The stream: 64 parts of 64 KiB to one connected user (`shards(1)`, `window(16)`). The
//! client reads 30 parts, acknowledging every 4th once it has stored it (so parts 0..=27 are
//! acknowledged and stored), and the connection dies. What is timed is the recovery: from the
//! reconnect to the arrival of part 30, the first part the client never received.
//!
//! When the connection dies the engine has the whole window in flight: parts 28..=43 (16
//! parts), delivered and unacknowledged, of which the client had read only 28 and 29.
//!
//! - `tether_resume`: the client reconnects with its resume point (the last acknowledged seq);
//!   the engine sends its whole in-flight window again with the original seqs (parts
//!   28..=43, counted in `redelivered`). The client receives parts 28 and 29 a second time,
//!   then part 30; 31..=43 it had never read.
//! - `naive_restart`: the producer starts the stream over under a new id (the design without
//!   stream state or acks); the client reconnects fresh and must receive and skip parts 0..29
//!   again before part 30 arrives. The engine sends again every part it had delivered before
//!   (0..=43, as new messages: `redelivered` does not count them). Through the same engine, so
//!   only the design differs.
//!
//! Counted in a checked run before measuring, and printed: what the client receives again
//! (parts it had read before: 2 for the resume, 30 for the restart) and what the engine sends
//! again (parts it had delivered before: 16 for the resume, the `redelivered` counter; 44 for
//! the restart). After each timed recovery the rest of the stream is read and acknowledged
//! (untimed), so nothing piles up.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use tether::{Engine, Message, ResumePoint, Session, StreamPart, UserId};

const PART: usize = 64 * 1024;
const PARTS: u32 = 64;
/// Parts the client read before the connection died.
const READ: u32 = 30;
/// Parts it had acknowledged (every 4th, up to the 28th).
const ACKED: u32 = 28;
/// The engine's delivery window: parts `ACKED..ACKED + WINDOW` are in flight at the break.
const WINDOW: u32 = 16;

/// One recovery: the time to part `READ`, and what was sent again, in bytes.
struct Recovery {
    took: Duration,
    /// Parts the client had read before the break and receives again.
    client_again: usize,
    /// Parts the engine had delivered before the break and delivers again.
    engine_again: usize,
}
const HANG: Duration = Duration::from_secs(30);

fn content() -> Bytes {
    (0..PART * PARTS as usize)
        .map(|i| (i % 251) as u8)
        .collect()
}

fn part(content: &Bytes, stream: &str, i: u32) -> Message {
    let at = i as usize * PART;
    Message::new(content.slice(at..at + PART)).with_stream_part(StreamPart::new(
        stream,
        i,
        i == PARTS - 1,
    ))
}

async fn next(s: &mut Session) -> tether::Delivery {
    tokio::time::timeout(HANG, s.recv())
        .await
        .expect("hang guard")
        .expect("session ended")
}

/// Sends the whole stream to a connected `user`, reads `READ` parts acknowledging every 4th,
/// and breaks the connection. Returns the resume point of the last acknowledgement.
async fn interrupted(engine: &Engine, content: &Bytes, user: &UserId) -> ResumePoint {
    let mut s = engine.connect(user, None).await.unwrap();
    for i in 0..PARTS {
        engine.send(user, part(content, "answer", i)).await.unwrap();
    }
    let mut acked = 0;
    for k in 0..READ {
        let d = next(&mut s).await;
        assert_eq!(d.stream_part().unwrap().index(), k);
        if k % 4 == 3 {
            s.ack(d.seq()).unwrap();
            acked = d.seq();
        }
    }
    engine.barrier().await;
    let resume = ResumePoint {
        epoch: s.info().epoch,
        last_seq: acked,
    };
    drop(s);
    resume
}

/// Reads the rest of the stream `stream` and acknowledges it. Returns the bytes of its parts
/// with an index below `below`.
async fn finish(engine: &Engine, s: &mut Session, stream: &str, below: u32) -> usize {
    let mut bytes = 0;
    loop {
        let d = next(s).await;
        s.ack(d.seq()).unwrap();
        let p = d.stream_part().unwrap();
        if p.stream() == stream && p.abort_reason().is_none() && p.index() < below {
            bytes += d.payload().len();
        }
        if p.stream() == stream && p.is_last() {
            break;
        }
    }
    engine.barrier().await;
    bytes
}

/// The timed recovery with resume.
async fn tether_resume(engine: &Engine, content: &Bytes, user: &UserId) -> Recovery {
    let resume = interrupted(engine, content, user).await;
    let start = Instant::now();
    let mut s = engine.connect(user, Some(resume)).await.unwrap();
    let mut client_again = 0;
    loop {
        let d = next(&mut s).await;
        let i = d.stream_part().unwrap().index();
        if i >= READ {
            assert_eq!(i, READ);
            let took = start.elapsed();
            s.ack(d.seq()).unwrap();
            finish(engine, &mut s, "answer", 0).await;
            // Everything the new session got again, with its original seq.
            let engine_again = s.info().redelivered * PART;
            return Recovery {
                took,
                client_again,
                engine_again,
            };
        }
        assert!(i >= ACKED, "an acknowledged part came again");
        client_again += d.payload().len();
    }
}

/// The timed recovery by restart.
async fn naive_restart(engine: &Engine, content: &Bytes, user: &UserId) -> Recovery {
    let mut resume = interrupted(engine, content, user).await;
    // Without acks nothing of the old stream is kept: drop its undelivered parts and count
    // everything handed out as gone, so only the restarted stream flows after the reconnect.
    engine
        .abort_stream(user, "answer", "restart")
        .await
        .unwrap();
    resume.last_seq = engine.mailbox_stats(user).await.unwrap().next_seq - 1;
    // Parts 0..delivered had been handed out; the restart hands them out again.
    let delivered = engine
        .stream_status(user, "answer")
        .await
        .unwrap()
        .delivered;
    let start = Instant::now();
    let mut s = engine.connect(user, Some(resume)).await.unwrap();
    let producer = {
        let (engine, content, user) = (engine.clone(), content.clone(), user.clone());
        tokio::spawn(async move {
            for i in 0..PARTS {
                engine
                    .send(&user, part(&content, "again", i))
                    .await
                    .unwrap();
            }
        })
    };
    let (mut client_again, mut engine_again) = (0, 0);
    let took = loop {
        let d = next(&mut s).await;
        let Some(p) = d.stream_part().filter(|p| p.stream() == "again") else {
            s.ack(d.seq()).unwrap(); // the old stream's abort marker
            continue;
        };
        s.ack(d.seq()).unwrap();
        if p.index() == READ {
            let took = start.elapsed();
            engine_again += d.payload().len();
            break took;
        }
        client_again += d.payload().len();
        engine_again += d.payload().len();
    };
    producer.await.unwrap();
    engine_again += finish(engine, &mut s, "again", delivered).await;
    Recovery {
        took,
        client_again,
        engine_again,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::builder()
        .shards(1)
        .window(16)
        .user_limits(tether::UserLimits {
            max_messages: 1000,
            max_bytes: 8 << 20,
            overflow: tether::OverflowPolicy::Reject,
        })
        .build()
        .unwrap();
    let content = content();
    let mut users = (0u64..).map(|i| UserId::new(format!("u{i}")).unwrap());

    // Checked runs: what each design sends again.
    let redelivered = || {
        rt.block_on(async {
            engine.barrier().await;
            engine.metrics().counters.redelivered
        })
    };
    let before = redelivered();
    let resumed = rt.block_on(tether_resume(&engine, &content, &users.next().unwrap()));
    let resumed_counter = redelivered() - before;
    let restarted = rt.block_on(naive_restart(&engine, &content, &users.next().unwrap()));
    assert_eq!(resumed.client_again, (READ - ACKED) as usize * PART);
    assert_eq!(resumed.engine_again, WINDOW as usize * PART, "the window");
    assert_eq!(resumed_counter, u64::from(WINDOW));
    assert_eq!(restarted.client_again, READ as usize * PART);
    assert_eq!(restarted.engine_again, (ACKED + WINDOW) as usize * PART);
    println!(
        "bytes the client receives again: tether_resume {}, naive_restart {}",
        resumed.client_again, restarted.client_again
    );
    println!(
        "bytes the engine sends again: tether_resume {} (redelivered +{resumed_counter}), \
         naive_restart {}",
        resumed.engine_again, restarted.engine_again
    );

    let mut g = c.benchmark_group("streams/resume_4mib_at_half");
    g.sample_size(20);
    g.bench_function("tether_resume", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let user = users.next().unwrap();
                    rt.block_on(tether_resume(&engine, &content, &user)).took
                })
                .sum()
        })
    });
    let mut users = (0u64..).map(|i| UserId::new(format!("n{i}")).unwrap());
    g.bench_function("naive_restart", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let user = users.next().unwrap();
                    rt.block_on(naive_restart(&engine, &content, &user)).took
                })
                .sum()
        })
    });
    g.finish();
    assert!(engine.memory_used() <= (WINDOW as usize * PART) as u64 * 2);
}

criterion_group!(benches, bench);
criterion_main!(benches);
