//! Helpers shared by the store tests.

use std::time::Duration;

use tether::cluster::{Attached, Enqueued, RedisStore, SessionRef, StoreConfig, Target};
use tether::{Delivery, Message, Priority, SendOutcome, UserId};

pub use crate::server::RedisServer;

pub const NODE: &str = "node-a";

pub fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

pub fn text(d: &Delivery) -> String {
    String::from_utf8(d.payload().to_vec()).unwrap()
}

pub fn texts(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(text).collect()
}

pub fn seqs(ds: &[Delivery]) -> Vec<u64> {
    ds.iter().map(Delivery::seq).collect()
}

pub fn msg(text: &str, p: Priority) -> Message {
    Message::new(text.to_owned()).with_priority(p)
}

/// A server and a store on it with `config`.
pub async fn store_with(config: StoreConfig) -> (RedisServer, RedisStore) {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), config).await.unwrap();
    (server, store)
}

pub async fn store() -> (RedisServer, RedisStore) {
    store_with(StoreConfig::default()).await
}

/// The single device outcome of an enqueue.
pub fn only(e: Enqueued) -> SendOutcome {
    match e {
        Enqueued::Accepted(mut all) if all.len() == 1 => all.remove(0).outcome,
        other => panic!("expected one device outcome, got {other:?}"),
    }
}

/// Enqueues and expects it kept by the single mailbox without evictions.
pub async fn put(store: &RedisStore, u: &UserId, m: Message) {
    assert_eq!(
        only(store.enqueue(u, &m).await.unwrap()),
        SendOutcome::Queued { evicted: 0 }
    );
}

/// Attaches the default device without a resume point and without filling.
pub async fn attach(store: &RedisStore, u: &UserId) -> Attached {
    store.attach(u, "", NODE, None, 0).await.unwrap()
}

/// Fills everything the window allows (nothing acknowledged) and returns the deliveries.
pub async fn fill_all(store: &RedisStore, s: &SessionRef, next: u64) -> Vec<Delivery> {
    store.fill(s, next, 0, usize::MAX).await.unwrap().delivered
}

/// Waits `d` of real time: the store's clock is Redis's own.
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

pub fn device(name: &str) -> Target {
    Target::Device(name.to_owned())
}
