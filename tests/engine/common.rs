//! Helpers shared by the integration tests.

use std::time::Duration;

use tether::{Clock, Delivery, Engine, Session, UserId};

/// How long a test waits for something that must happen before it fails instead of hanging.
pub const GUARD: Duration = Duration::from_secs(30);

/// Lets everything issued so far take effect at the current time, then moves the clock and
/// lets the shards act on the new time. (`send` returns once the command is queued, so
/// without the first barrier a send could be processed after the clock moved.)
pub async fn advance(engine: &Engine, clock: &Clock, ms: u64) {
    engine.barrier().await;
    clock.advance(Duration::from_millis(ms));
    engine.barrier().await;
}

pub fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// The next delivery, failing the test if none comes within [`GUARD`] or the session ended.
pub async fn recv(s: &mut Session) -> Delivery {
    tokio::time::timeout(GUARD, s.recv())
        .await
        .expect("hang guard: no delivery within 30 s")
        .expect("session ended unexpectedly")
}

pub fn text(d: &Delivery) -> String {
    String::from_utf8(d.payload().to_vec()).unwrap()
}

/// After a barrier every delivery made so far is in the outbox: nothing more must be there.
pub async fn assert_nothing_more(engine: &Engine, s: &mut Session) {
    engine.barrier().await;
    match s.try_recv() {
        Err(tether::TryRecvError::Empty) => {}
        Ok(d) => panic!("unexpected delivery seq {} {:?}", d.seq(), text(&d)),
        Err(e) => panic!("unexpected {e:?}"),
    }
}
