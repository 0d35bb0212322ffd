//! The shard log's group commit and replay on the real file system, beside a plain file doing
//! the same durable work, in the same run.
//!
//! - `commit_always/*`, `commit_never/*`: one iteration appends a batch of 1, 64 or 1024
//!   records of `RECORD` bytes and commits it (`Fsync::Always`: one write and one
//!   `fdatasync`; `Fsync::Never`: one write). `Throughput::Elements` is the batch, so criterion
//!   reports records per second. Beside each, `plain_file`: the same bytes without framing,
//!   appended to a `std::fs::File` with one `write_all` (and one `sync_data` under always).
//!   Closed segments are reclaimed (nothing is held), and the plain file is emptied when it
//!   reaches the segment size, so the disk use stays bounded. Where `redis-server` is
//!   installed, `redis` too: a server started on loopback with `appendonly yes` and
//!   `appendfsync always` (or `no`), one connection sending the batch as pipelined `LPUSH`es of
//!   the same records to 1000 per-user lists and waiting for every reply (Redis writes and
//!   syncs its append-only file once per event-loop turn: its own group commit).
//! - `replay/1M`: opening a log of 1,000,000 records of `RECORD` bytes (written once, before
//!   measuring): records per second; the log size is printed, for MB/s.
//!
//! Before measuring, each writer is checked: what it wrote reads back (the log by replaying
//! it, the plain file byte for byte), so a broken build cannot produce a fast, wrong number.
//! The directories live under the system's temp dir (set TMPDIR to measure another disk).

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tether::durable::{Class, FsStorage, Fsync, LogConfig, ShardLog};

/// Payload bytes per record.
const RECORD: usize = 100;
const BATCHES: [usize; 3] = [1, 64, 1024];
const REPLAY_RECORDS: u64 = 1_000_000;
const SEGMENT: u64 = 64 << 20;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn record(i: u64) -> [u8; RECORD] {
    let mut r = [0xA5u8; RECORD];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r
}

fn config(fsync: Fsync) -> LogConfig {
    LogConfig {
        fsync,
        segment_bytes: SEGMENT,
        max_bytes: 8 << 30,
        ..LogConfig::default()
    }
}

/// The log writes what it is given and replays it in order; the plain file reads back.
fn check() {
    let d = dir("check");
    let (mut log, _) = ShardLog::open(
        FsStorage::open(&d).unwrap(),
        config(Fsync::Always),
        |_, _| {},
    )
    .unwrap();
    for i in 0..5000 {
        log.append(&record(i), Class::New).unwrap();
        if i % 100 == 99 {
            let c = log.commit(0).unwrap();
            assert_eq!(c.synced_to, c.written_to);
        }
    }
    log.commit(0).unwrap();
    drop(log);
    let mut next = 0;
    ShardLog::open(
        FsStorage::open(&d).unwrap(),
        config(Fsync::Always),
        |_, p| {
            assert_eq!(p, record(next));
            next += 1;
        },
    )
    .unwrap();
    assert_eq!(next, 5000);
    let path = d.join("plain");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&record(1)).unwrap();
    f.sync_data().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), record(1));
    std::fs::remove_dir_all(&d).unwrap();
}

fn commit(c: &mut Criterion, name: &str, fsync: Fsync) {
    let mut group = c.benchmark_group(name);
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        let d = dir(&format!("{name}-{batch}"));
        let (mut log, _) =
            ShardLog::open(FsStorage::open(&d).unwrap(), config(fsync), |_, _| {}).unwrap();
        let mut i = 0u64;
        group.bench_function(BenchmarkId::new("tether", batch), |b| {
            b.iter(|| {
                for _ in 0..batch {
                    log.append(&record(i), Class::New).unwrap();
                    i += 1;
                }
                black_box(log.commit(0).unwrap());
                log.reclaim().unwrap();
            })
        });
        drop(log);
        let path = d.join("plain");
        let mut file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut buf = Vec::with_capacity(batch * RECORD);
        let mut len = 0u64;
        group.bench_function(BenchmarkId::new("plain_file", batch), |b| {
            b.iter(|| {
                buf.clear();
                for _ in 0..batch {
                    buf.extend_from_slice(&record(i));
                    i += 1;
                }
                file.write_all(&buf).unwrap();
                if fsync == Fsync::Always {
                    file.sync_data().unwrap();
                }
                len += buf.len() as u64;
                if len >= SEGMENT {
                    file.set_len(0).unwrap();
                    len = 0;
                }
            })
        });
        let mode = if fsync == Fsync::Always {
            "always"
        } else {
            "no"
        };
        if let Some(mut redis) = Redis::start(&d.join("redis"), mode) {
            // The check: 2000 pushes land, 2 in each of the 1000 lists.
            redis.push(&mut buf, 0, 2000);
            assert_eq!(redis.llen("user7"), 2);
            group.bench_function(BenchmarkId::new("redis", batch), |b| {
                b.iter(|| {
                    redis.push(&mut buf, i, batch);
                    i += batch as u64;
                })
            });
        } else {
            eprintln!("redis-server not found: the redis peer is skipped");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
    group.finish();
}

/// A redis-server on a free loopback port, persisting to `dir`; `None` where not installed.
struct Redis {
    child: Child,
    conn: TcpStream,
}

impl Redis {
    fn start(dir: &Path, fsync: &str) -> Option<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        std::fs::create_dir_all(dir).ok()?;
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", fsync])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let mut child = child;
        let started = Instant::now();
        let conn = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(conn) => break conn,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server did not start: {e}");
                }
            }
        };
        conn.set_nodelay(true).unwrap();
        Some(Redis { child, conn })
    }

    /// Sends `batch` pipelined LPUSHes of records `first..` and waits for all the replies.
    fn push(&mut self, buf: &mut Vec<u8>, first: u64, batch: usize) {
        buf.clear();
        for i in first..first + batch as u64 {
            let key = format!("user{}", i % 1000);
            write!(
                buf,
                "*3\r\n$5\r\nLPUSH\r\n${}\r\n{key}\r\n${RECORD}\r\n",
                key.len()
            )
            .unwrap();
            buf.extend_from_slice(&record(i));
            buf.extend_from_slice(b"\r\n");
        }
        self.conn.write_all(buf).unwrap();
        // Each reply is one line (":<list length>\r\n"); an error reply would be one too,
        // and is caught by the check below.
        let (mut lines, mut chunk) = (0, [0u8; 65536]);
        while lines < batch {
            let n = self.conn.read(&mut chunk).unwrap();
            assert!(n > 0, "redis closed the connection");
            assert!(
                chunk[0] != b'-',
                "redis error: {}",
                String::from_utf8_lossy(&chunk[..n])
            );
            lines += chunk[..n].iter().filter(|&&b| b == b'\n').count();
        }
    }

    fn llen(&mut self, key: &str) -> u64 {
        write!(self.conn, "*2\r\n$4\r\nLLEN\r\n${}\r\n{key}\r\n", key.len()).unwrap();
        let mut reply = [0u8; 64];
        let n = self.conn.read(&mut reply).unwrap();
        let text = std::str::from_utf8(&reply[..n]).unwrap();
        text.trim().trim_start_matches(':').parse().unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn commits(c: &mut Criterion) {
    check();
    commit(c, "commit_always", Fsync::Always);
    commit(c, "commit_never", Fsync::Never);
}

fn replay(c: &mut Criterion) {
    let d = dir("replay");
    let (mut log, _) = ShardLog::open(
        FsStorage::open(&d).unwrap(),
        config(Fsync::Never),
        |_, _| {},
    )
    .unwrap();
    for i in 0..REPLAY_RECORDS {
        log.append(&record(i), Class::New).unwrap();
        if i % 1024 == 1023 {
            log.commit(0).unwrap();
        }
    }
    log.sync(0).unwrap();
    let bytes = log.space().log_bytes;
    drop(log);
    eprintln!("replay: {REPLAY_RECORDS} records, {bytes} bytes of log");
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(REPLAY_RECORDS));
    group.bench_function("1M", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let storage = FsStorage::open(&d).unwrap();
                let (mut n, mut sum) = (0u64, 0u64);
                let start = Instant::now();
                let (log, report) = ShardLog::open(storage, config(Fsync::Never), |_, p| {
                    n += 1;
                    sum = sum.wrapping_add(u64::from_le_bytes(p[..8].try_into().unwrap()));
                })
                .unwrap();
                total += start.elapsed();
                assert_eq!((n, report.records), (REPLAY_RECORDS, REPLAY_RECORDS));
                assert_eq!(sum, REPLAY_RECORDS * (REPLAY_RECORDS - 1) / 2);
                drop(log);
            }
            total
        })
    });
    group.finish();
    std::fs::remove_dir_all(&d).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = commits, replay
}
criterion_main!(benches);
