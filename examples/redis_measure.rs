//! Measures the Redis store: Redis memory per queued 64-byte message (INFO memory before and
//! after), and Redis round trips per delivered message when a node batches its sessions'
//! fills and acks.
//!
//! Run it against a scratch Redis (it refuses a database that holds keys, and removes its
//! own keys at the end):
//!
//! ```text
//! redis-server --port 6390 --save '' --appendonly yes --daemonize yes --dir /tmp
//! cargo run --release --example redis_measure -- redis://127.0.0.1:6390
//! ```

use std::error::Error;
use std::time::Instant;

use tether::cluster::{Batch, BatchReply, Enqueued, RedisStore, SessionRef, StoreConfig};
use tether::{CloseReason, Message, UserId, UserLimits};

const PAYLOAD: [u8; 64] = [b'x'; 64];

fn user(i: usize) -> UserId {
    UserId::new(format!("measure-{i}")).expect("non-empty")
}

async fn used_memory(c: &mut redis::aio::MultiplexedConnection) -> Result<i64, Box<dyn Error>> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(c).await?;
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .ok_or("INFO memory has no used_memory")?;
    Ok(used.trim().parse()?)
}

async fn clear(c: &mut redis::aio::MultiplexedConnection) -> Result<(), Box<dyn Error>> {
    let _: () = redis::cmd("FLUSHDB").query_async(c).await?;
    Ok(())
}

/// Enqueues `per_user` messages to each of `users` users, 64 requests in flight at a time.
async fn enqueue_all(
    store: &RedisStore,
    users: usize,
    per_user: usize,
) -> Result<(), Box<dyn Error>> {
    let mut pending = Vec::new();
    for m in 0..per_user {
        for u in 0..users {
            let store = store.clone();
            pending.push(async move {
                let e = store.enqueue(&user(u), &Message::new(&PAYLOAD[..])).await?;
                assert!(e.kept(), "message {m} to user {u}: {e:?}");
                Ok::<_, tether::cluster::StoreError>(())
            });
            if pending.len() == 64 {
                for r in futures_util::future::join_all(pending.drain(..)).await {
                    r?;
                }
            }
        }
    }
    for r in futures_util::future::join_all(pending).await {
        r?;
    }
    Ok(())
}

/// Memory per queued message with `devices` away devices per user.
async fn memory(
    url: &str,
    c: &mut redis::aio::MultiplexedConnection,
    users: usize,
    per_user: usize,
    devices: usize,
) -> Result<(), Box<dyn Error>> {
    let config = StoreConfig {
        user_limits: UserLimits {
            max_messages: per_user,
            ..UserLimits::default()
        },
        ..StoreConfig::default()
    };
    let store = RedisStore::connect(url, config).await?;
    for u in 0..users {
        for d in 0..devices {
            let a = store
                .attach(&user(u), &format!("d{d}"), "node", None, 0)
                .await?;
            store.detach(&a.session, 0, CloseReason::Normal).await?;
        }
    }
    let before = used_memory(c).await?;
    enqueue_all(&store, users, per_user).await?;
    let after = used_memory(c).await?;
    let copies = (users * per_user * devices.max(1)) as f64;
    println!(
        "  {users} users x {per_user} messages x {devices} device(s): used_memory +{} bytes, \
         {:.0} bytes per queued copy of a 64-byte message",
        after - before,
        (after - before) as f64 / copies
    );
    clear(c).await
}

/// A node with `users` attached sessions; `rounds` times, `per_round` messages to random
/// users, then one batched pass: each session that was woken acks what it received and
/// fills.
async fn round_trips(
    url: &str,
    c: &mut redis::aio::MultiplexedConnection,
    users: usize,
    rounds: usize,
    per_round: usize,
) -> Result<(), Box<dyn Error>> {
    let store = RedisStore::connect(url, StoreConfig::default()).await?;
    let mut sessions: Vec<(SessionRef, u64)> = Vec::new();
    for u in 0..users {
        let a = store.attach(&user(u), "", "node", None, 0).await?;
        sessions.push((a.session, a.next_seq));
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let (start_trips, started) = (store.round_trips(), Instant::now());
    let (mut publish_trips, mut delivered) = (0, 0u64);
    let mut batch = Batch::new();
    for _ in 0..rounds {
        let before = store.round_trips();
        let mut woken = vec![false; users];
        let mut pending = Vec::new();
        for _ in 0..per_round {
            let u = rng.usize(..users);
            woken[u] = true;
            let store = store.clone();
            pending.push(async move { store.enqueue(&user(u), &Message::new(&PAYLOAD[..])).await });
        }
        for r in futures_util::future::join_all(pending).await {
            let Enqueued::Accepted(all) = r? else {
                return Err("a duplicate".into());
            };
            assert_eq!(all[0].owner.as_deref(), Some("node"));
        }
        publish_trips += store.round_trips() - before;
        batch.clear();
        let order: Vec<usize> = (0..users).filter(|&u| woken[u]).collect();
        for &u in &order {
            let (s, next) = &sessions[u];
            batch.fill(s, *next, next - 1, 1024);
        }
        for (u, reply) in order.iter().zip(store.run(&batch).await?) {
            let BatchReply::Filled(f) = reply? else {
                return Err("not a fill".into());
            };
            delivered += f.delivered.len() as u64;
            sessions[*u].1 = f.next_seq;
        }
    }
    // The last acks, in one more request.
    batch.clear();
    for (s, next) in &sessions {
        batch.ack(s, next - 1);
    }
    store.run(&batch).await?;
    let trips = store.round_trips() - start_trips;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "  {users} sessions, {rounds} rounds of {per_round} publishes: {delivered} delivered, \
         {trips} round trips ({publish_trips} publishing, {} filling and acking): \
         {:.3} per delivered message, {:.4} of them for delivery; {:.0} messages/s",
        trips - publish_trips,
        trips as f64 / delivered as f64,
        (trips - publish_trips) as f64 / delivered as f64,
        delivered as f64 / elapsed
    );
    clear(c).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6390".to_owned());
    let mut c = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: i64 = redis::cmd("DBSIZE").query_async(&mut c).await?;
    if keys != 0 {
        return Err(format!("{url} holds {keys} keys: run this against a scratch Redis").into());
    }
    println!("Redis memory per queued 64-byte message (no id, no TTL):");
    memory(&url, &mut c, 10_000, 1, 0).await?;
    memory(&url, &mut c, 1_000, 100, 0).await?;
    memory(&url, &mut c, 1_000, 100, 1).await?;
    memory(&url, &mut c, 1_000, 100, 2).await?;
    memory(&url, &mut c, 100, 1_000, 1).await?;
    println!("Redis round trips per delivered message:");
    round_trips(&url, &mut c, 1_000, 100, 100).await?;
    round_trips(&url, &mut c, 1_000, 20, 1_000).await?;
    Ok(())
}
