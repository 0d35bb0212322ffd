//! The Rust client against the real server, in-process on 127.0.0.1:0: delivery and
//! auto-ack, manual acks and redelivery, resume through abrupt disconnects (a TCP proxy the
//! test cuts), and the close codes that stop the client.
#![cfg(all(feature = "server", feature = "client"))]

use crate::harness;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tether::client::{
    AckError, Client, ClientBuilder, ClientError, Event, Publish, PublishOutcome, RequestError,
};
use tether::server::auth::issue_token;
use tether::server::Server;
use tether::{Backoff, Message, StreamPart, UserId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Upper bound for any single wait in these tests; they never assert on time.
const PATIENCE: Duration = harness::GUARD;
const SECRET: &str = harness::SECRET;

fn user(name: &str) -> UserId {
    UserId::new(name).expect("user id")
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// A client with a fast reconnect schedule, so tests do not wait out the default backoff.
fn builder(addr: SocketAddr, name: &str) -> ClientBuilder {
    Client::builder(url(addr), harness::token(name))
        .backoff(Backoff::new(Duration::from_millis(5), Duration::from_millis(50)).with_seed(1))
}

async fn next(client: &mut Client) -> Result<Event, ClientError> {
    tokio::time::timeout(PATIENCE, client.recv())
        .await
        .expect("an event within the test's patience")
}

async fn next_event(client: &mut Client) -> Event {
    next(client).await.expect("an event, not an error")
}

async fn expect_connected(client: &mut Client) -> tether::client::ConnectedInfo {
    match next_event(client).await {
        Event::Connected(info) => info,
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn expect_message(client: &mut Client) -> tether::client::Delivered {
    match next_event(client).await {
        Event::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Waits (bounded) until the engine holds `n` unacknowledged messages for `name`.
async fn wait_in_flight(server: &Server, name: &str, n: usize) {
    let mut last = None;
    for _ in 0..1000 {
        let stats = server.engine().mailbox_stats(&user(name)).await;
        last = stats.as_ref().map(|s| s.in_flight);
        if last == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("in flight for {name}: {last:?}, expected {n}");
}

/// Waits (bounded) until the server has `n` WebSocket connections open.
async fn wait_connections(server: &Server, n: usize) {
    for _ in 0..1000 {
        if server.connections() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} connections, expected {n}", server.connections());
}

/// A TCP proxy on 127.0.0.1:0 whose connections the test can cut at once, as a network
/// failure would (both sockets dropped without a WebSocket close), or freeze (nothing
/// forwarded, sockets kept open: a dead path that TCP alone does not notice).
struct Proxy {
    addr: SocketAddr,
    /// One fault trigger per proxied connection not yet faulted.
    live: Arc<Mutex<Vec<oneshot::Sender<Fault>>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Cut,
    Freeze,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let live = Arc::new(Mutex::new(Vec::new()));
        let registry = live.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (trigger, fault) = oneshot::channel();
                registry.lock().expect("proxy registry").push(trigger);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let frozen = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        f = fault => f == Ok(Fault::Freeze),
                    };
                    if frozen {
                        // Hold both sockets open, forwarding nothing, until the other side
                        // gives up on them.
                        let mut buf = [0u8; 1024];
                        use tokio::io::AsyncReadExt;
                        while matches!(inbound.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                });
            }
        });
        Proxy { addr, live }
    }

    /// Applies `fault` to every proxied connection that is still forwarding; returns how many
    /// that was (none while the client is between connections). Each connection is faulted
    /// at most once, so the count is the number of disconnects this call causes.
    fn fault(&self, fault: Fault) -> usize {
        let triggers = std::mem::take(&mut *self.live.lock().expect("proxy registry"));
        triggers
            .into_iter()
            .filter(|t| !t.is_closed())
            .filter_map(|t| t.send(fault).ok())
            .count()
    }

    fn cut(&self) -> usize {
        self.fault(Fault::Cut)
    }

    fn freeze(&self) -> usize {
        self.fault(Fault::Freeze)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_receive_and_auto_ack() {
    let server = harness::server(&[]).await;
    let alice = user("alice");
    for n in 1..=3 {
        let m = Message::new(format!(r#"{{"n":{n}}}"#));
        server.engine().send(&alice, m).await.expect("send");
    }
    let mut client = builder(server.local_addr(), "alice")
        .connect()
        .await
        .expect("connects");
    let info = expect_connected(&mut client).await;
    assert_eq!(info.user, "alice");
    assert!(!info.recovered);
    assert_eq!(info.missed.total(), 0);
    for n in 1..=3u64 {
        let m = expect_message(&mut client).await;
        assert_eq!(m.seq(), n);
        assert_eq!(m.data_str(), format!(r#"{{"n":{n}}}"#));
        #[derive(serde::Deserialize)]
        struct Body {
            n: u64,
        }
        assert_eq!(m.json::<Body>().expect("json").n, n);
    }
    // Receiving the third acknowledged the first two: their handlers had returned.
    wait_in_flight(&server, "alice", 1).await;
    assert_eq!(
        client.resume_point().map(|r| r.last_seq),
        Some(2),
        "processed"
    );
    // Closing acknowledges the third.
    client.close().await;
    wait_in_flight(&server, "alice", 0).await;

    // A fresh connection gets nothing again.
    let mut again = builder(server.local_addr(), "alice")
        .connect()
        .await
        .expect("connects");
    let info = expect_connected(&mut again).await;
    assert_eq!((info.redelivered, info.pending), (0, 0));
    again.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_acks_and_redelivery_of_what_was_not_acknowledged() {
    let server = harness::server(&[]).await;
    let bob = user("bob");
    for n in 1..=3 {
        let m = Message::new(format!("{n}"));
        server.engine().send(&bob, m).await.expect("send");
    }
    let mut client = builder(server.local_addr(), "bob")
        .auto_ack(false)
        .connect()
        .await
        .expect("connects");
    let first = expect_connected(&mut client).await;
    for n in 1..=3 {
        assert_eq!(expect_message(&mut client).await.seq(), n);
    }
    assert_eq!(
        client.ack(4),
        Err(AckError::NotReceived {
            seq: 4,
            received: 3
        })
    );
    client.ack(2).expect("ack 2");
    wait_in_flight(&server, "bob", 1).await;

    // The connection dies before 3 is acknowledged: 3 comes again, 1 and 2 do not.
    client.reconnect();
    assert!(matches!(
        next_event(&mut client).await,
        Event::Disconnected(d) if d.code.is_none()
    ));
    let info = expect_connected(&mut client).await;
    assert!(info.recovered);
    assert_eq!(info.epoch, first.epoch);
    assert_eq!(info.redelivered, 1);
    let again = expect_message(&mut client).await;
    assert_eq!((again.seq(), again.data_str()), (3, "3"));
    client.ack(3).expect("ack 3");
    wait_in_flight(&server, "bob", 0).await;
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_point_carries_over_to_a_new_client() {
    let server = harness::server(&[]).await;
    let carol = user("carol");
    for n in 1..=4 {
        let m = Message::new(format!("{n}"));
        server.engine().send(&carol, m).await.expect("send");
    }
    let mut client = builder(server.local_addr(), "carol")
        .connect()
        .await
        .expect("connects");
    expect_connected(&mut client).await;
    assert_eq!(expect_message(&mut client).await.seq(), 1);
    assert_eq!(expect_message(&mut client).await.seq(), 2);
    // Processed: 1 (2 was returned, its handler has not come back for more).
    let point = client.resume_point().expect("a resume point");
    assert_eq!(point.last_seq, 1);
    drop(client);

    let mut next_client = builder(server.local_addr(), "carol")
        .resume_from(point)
        .connect()
        .await
        .expect("connects");
    let info = expect_connected(&mut next_client).await;
    assert!(info.recovered);
    let seqs = [
        expect_message(&mut next_client).await.seq(),
        expect_message(&mut next_client).await.seq(),
        expect_message(&mut next_client).await.seq(),
    ];
    assert_eq!(seqs, [2, 3, 4]);
    next_client.close().await;
    wait_in_flight(&server, "carol", 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_through_cut_connections_without_loss_or_duplicates() {
    const TOTAL: u64 = 400;
    let server = harness::server(&[]).await;
    let proxy = Proxy::start(server.local_addr()).await;
    let dave = user("dave");
    let mut client = builder(proxy.addr, "dave")
        // A small channel, so the client also has to stop reading while the test is busy.
        .event_capacity(4)
        .connect()
        .await
        .expect("connects");
    let engine = server.engine().clone();
    let producer = tokio::spawn(async move {
        for i in 0..TOTAL {
            let m = Message::new(format!(r#"{{"i":{i}}}"#));
            engine.send(&dave, m).await.expect("send");
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let mut seen = HashSet::new();
    let mut last_seq = 0;
    let (mut connects, mut disconnects, mut cuts) = (0, 0, 0);
    // Cut once this many messages have surfaced. A cut that finds the client between
    // connections (151 right after 150 may) is tried again at the next event, a reconnect
    // included, so every cut lands even when the last messages were already buffered.
    let mut cut_at = std::collections::VecDeque::from([40, 150, 151, 300]);
    let mut rounds = 0;
    while (seen.len() as u64) < TOTAL
        || !cut_at.is_empty()
        || disconnects < cuts
        || connects < disconnects + 1
    {
        rounds += 1;
        assert!(rounds < 10_000, "bounded");
        match next_event(&mut client).await {
            Event::Connected(info) => {
                connects += 1;
                if connects > 1 {
                    assert!(info.recovered, "{info:?}");
                }
            }
            Event::Disconnected(_) => disconnects += 1,
            Event::Message(m) => {
                assert!(m.seq() > last_seq, "seq {} after {last_seq}", m.seq());
                last_seq = m.seq();
                #[derive(serde::Deserialize)]
                struct Body {
                    i: u64,
                }
                let i = m.json::<Body>().expect("json").i;
                assert!(seen.insert(i), "message {i} surfaced twice");
            }
            other => panic!("{other:?}"),
        }
        if cut_at.front().is_some_and(|&n| seen.len() as u64 >= n) {
            let cut = proxy.cut();
            if cut > 0 {
                cuts += cut;
                cut_at.pop_front();
            }
        }
    }
    producer.await.expect("producer");
    assert_eq!(seen.len() as u64, TOTAL);
    assert_eq!((cuts, disconnects), (4, 4));
    assert_eq!(connects, disconnects + 1);
    client.close().await;
    wait_in_flight(&server, "dave", 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_dies_while_a_handler_runs_does_not_repeat_its_message() {
    let server = harness::server(&[]).await;
    let proxy = Proxy::start(server.local_addr()).await;
    let mut client = builder(proxy.addr, "hugo")
        .connect()
        .await
        .expect("connects");
    expect_connected(&mut client).await;
    let send = |text: &'static str| {
        let engine = server.engine().clone();
        async move {
            engine
                .send(&user("hugo"), Message::new(text))
                .await
                .expect("send")
        }
    };
    send("1").await;
    assert_eq!(expect_message(&mut client).await.data_str(), "1");
    // "1"'s handler is running (no recv yet) when the connection dies; the client
    // reconnects, and the server sends "1" again on the new connection, before "2".
    assert_eq!(proxy.cut(), 1);
    // The new connection is up before recv is called again, so it resumed from before "1".
    let connects = || server.engine().metrics().counters.connects;
    for _ in 0..1000 {
        if connects() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(connects(), 2, "reconnected");
    assert!(matches!(
        next_event(&mut client).await,
        Event::Disconnected(_)
    ));
    let info = expect_connected(&mut client).await;
    assert!(info.recovered);
    assert_eq!(info.redelivered, 1, "the server did send 1 again");
    send("2").await;
    assert_eq!(
        expect_message(&mut client).await.data_str(),
        "2",
        "the copy of 1 is dropped: 1 was processed when recv was called again"
    );
    client.close().await;
    wait_in_flight(&server, "hugo", 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_unauthorized_and_not_retried() {
    let server = harness::server(&[]).await;
    let err = Client::builder(url(server.local_addr()), "not-a-token")
        .connect()
        .await
        .expect_err("refused");
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
    assert!(err.is_permanent());
    let wrong_secret = issue_token(
        "another-secret-0123456789abcdef-xyz",
        &user("eve"),
        None,
        SystemTime::now(),
    )
    .expect("token");
    let err = Client::builder(url(server.local_addr()), wrong_secret)
        .connect()
        .await
        .expect_err("refused");
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
    wait_connections(&server, 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_server_ends_with_4001_stops_the_client() {
    let server = harness::server(&[]).await;
    // `exp` has whole seconds: 3 s from now is 2 to 3 s away, time enough to connect on a
    // loaded machine.
    let token = harness::token_signed(
        SECRET,
        "otto",
        Some(Duration::from_secs(3)),
        SystemTime::now(),
    );
    let mut client = Client::builder(url(server.local_addr()), token)
        .backoff(Backoff::new(Duration::from_millis(5), Duration::from_millis(50)).with_seed(1))
        .connect()
        .await
        .expect("connects while the token is valid");
    expect_connected(&mut client).await;
    // At exp the server ends the session with 4001; retrying with the same token is futile.
    match next_event(&mut client).await {
        Event::Disconnected(d) => assert_eq!(d.code, Some(4001), "{d:?}"),
        other => panic!("{other:?}"),
    }
    let err = next(&mut client).await.expect_err("the client stops");
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
    assert!(matches!(next(&mut client).await, Err(ClientError::Closed)));
    wait_connections(&server, 0).await;
    let stats = harness::http(&server, "GET", "/api/stats", None, "")
        .await
        .json();
    assert_eq!(
        stats["server"]["ws_connections_total"], 1,
        "no reconnect: {stats}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_of_the_same_user_replaces_without_a_fight() {
    let server = harness::server(&[]).await;
    let mut first = builder(server.local_addr(), "frank")
        .connect()
        .await
        .expect("connects");
    expect_connected(&mut first).await;
    let mut second = builder(server.local_addr(), "frank")
        .connect()
        .await
        .expect("connects");
    expect_connected(&mut second).await;
    match next_event(&mut first).await {
        Event::Disconnected(d) => assert_eq!(d.code, Some(4002)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut first).await, Err(ClientError::Replaced)));
    assert!(matches!(next(&mut first).await, Err(ClientError::Closed)));
    // The first does not come back: the second keeps the session.
    server
        .engine()
        .send(&user("frank"), Message::new("1"))
        .await
        .expect("send");
    assert_eq!(expect_message(&mut second).await.data_str(), "1");
    wait_connections(&server, 1).await;
    second.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_ping_and_refusals() {
    let server = harness::server(&["--allow-client-publish"]).await;
    let client = builder(server.local_addr(), "gina")
        .connect()
        .await
        .expect("connects");
    let outcome = client
        .publish(Publish::json("hank", &serde_json::json!({"hi": 1})).expect("json"))
        .await
        .expect("an outcome");
    assert_eq!(outcome, PublishOutcome::Queued { evicted: 0 });
    let dup = || Publish::raw("hank", "2").expect("json").id("same-id");
    assert!(client.publish(dup()).await.expect("outcome").is_accepted());
    assert_eq!(
        client.publish(dup()).await.expect("outcome"),
        PublishOutcome::Duplicate
    );
    let refused = client
        .publish(Publish::raw("", "1").expect("json"))
        .await
        .expect_err("invalid");
    assert!(
        matches!(&refused, RequestError::Refused { code, .. } if code == "invalid_field"),
        "{refused:?}"
    );
    client.ping().await.expect("pong");
    let handle = client.handle();
    let (a, b) = tokio::join!(handle.ping(), client.ping());
    a.expect("pong");
    b.expect("pong");
    client.close().await;
    assert_eq!(handle.ping().await, Err(RequestError::Closed));
    let stats = server.engine().mailbox_stats(&user("hank")).await;
    assert_eq!(stats.map(|s| s.queued()), Some(2));
    server.shutdown().await;

    let server = harness::server(&[]).await;
    let client = builder(server.local_addr(), "gina")
        .connect()
        .await
        .expect("connects");
    let outcome = client
        .publish(Publish::raw("hank", "1").expect("json"))
        .await
        .expect("an outcome");
    assert_eq!(
        outcome,
        PublishOutcome::Rejected {
            reason: "publish_not_allowed".into()
        }
    );
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_says_try_later() {
    let server = harness::server(&["--max-connections", "1"]).await;
    let mut first = builder(server.local_addr(), "ivan")
        .connect()
        .await
        .expect("connects");
    expect_connected(&mut first).await;
    let err = builder(server.local_addr(), "jane")
        .connect()
        .await
        .expect_err("full");
    match err {
        ClientError::TryLater { retry_after } => assert!(retry_after > Duration::ZERO),
        other => panic!("{other:?}"),
    }
    first.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_with_1001_and_reconnects_until_the_attempts_run_out() {
    let server = harness::server(&[]).await;
    let mut client = builder(server.local_addr(), "kate")
        .max_reconnect_attempts(3)
        .connect()
        .await
        .expect("connects");
    expect_connected(&mut client).await;
    server.shutdown().await;
    match next_event(&mut client).await {
        Event::Disconnected(d) => assert_eq!(d.code, Some(1001), "{d:?}"),
        other => panic!("{other:?}"),
    }
    match next(&mut client).await {
        Err(ClientError::GaveUp { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut client).await, Err(ClientError::Closed)));
    let handle = client.handle();
    assert!(handle.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_aborts_arrive_as_events_and_are_acknowledged() {
    let server = harness::server(&[]).await;
    let lena = user("lena");
    let part = Message::new(r#""The answer is""#).with_stream_part(StreamPart::new("s1", 0, false));
    server.engine().send(&lena, part).await.expect("send");
    let mut client = builder(server.local_addr(), "lena")
        .connect()
        .await
        .expect("connects");
    expect_connected(&mut client).await;
    let m = expect_message(&mut client).await;
    let stream = m.stream().expect("a stream part");
    assert_eq!(
        (stream.id.as_str(), stream.part, stream.last),
        ("s1", 0, false)
    );
    server
        .engine()
        .abort_stream(&lena, "s1", "model overloaded")
        .await
        .expect("abort");
    match next_event(&mut client).await {
        Event::StreamAborted(a) => {
            assert_eq!((a.seq, a.stream.as_str()), (2, "s1"));
            assert_eq!(
                (a.code.as_str(), a.reason.as_str()),
                ("producer", "model overloaded")
            );
        }
        other => panic!("{other:?}"),
    }
    client.close().await;
    wait_in_flight(&server, "lena", 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_a_server_and_stop_cleanly() {
    let server = Arc::new(harness::server(&[]).await);
    let mut tasks = Vec::new();
    for c in 0..8 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("many-{c}");
            let mut client = builder(server.local_addr(), &name)
                .connect()
                .await
                .expect("connects");
            expect_connected(&mut client).await;
            for n in 0..20 {
                let m = Message::new(format!("{n}"));
                server.engine().send(&user(&name), m).await.expect("send");
            }
            for n in 0..20 {
                assert_eq!(expect_message(&mut client).await.data_str(), n.to_string());
            }
            client.close().await;
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let server = Arc::into_inner(server).expect("sole owner");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_server_window_keeps_flowing() {
    // With a window far below the client's ack batch, the client must still ack as soon as
    // it has processed everything delivered, or delivery would stall on the window.
    let server = harness::server(&["--window", "2"]).await;
    let mona = user("mona");
    for n in 0..300 {
        let m = Message::new(format!("{n}"));
        server.engine().send(&mona, m).await.expect("send");
    }
    let mut client = builder(server.local_addr(), "mona")
        .connect()
        .await
        .expect("connects");
    expect_connected(&mut client).await;
    for n in 0..300 {
        assert_eq!(expect_message(&mut client).await.data_str(), n.to_string());
    }
    client.close().await;
    wait_in_flight(&server, "mona", 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_detected_and_replaced() {
    let server = harness::server(&[]).await;
    let proxy = Proxy::start(server.local_addr()).await;
    let mut client = builder(proxy.addr, "nina")
        // Margins wide enough for a loaded machine: a ping every 100 ms, dead after 800 ms.
        .keepalive(Duration::from_millis(100))
        .idle_timeout(Duration::from_millis(800))
        .connect()
        .await
        .expect("connects");
    let first = expect_connected(&mut client).await;
    // Keepalives keep a quiet but healthy connection up well past the idle timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server
        .engine()
        .send(&user("nina"), Message::new("1"))
        .await
        .expect("send");
    assert_eq!(expect_message(&mut client).await.data_str(), "1");
    // The path goes dead without a FIN: only the silence shows it.
    assert_eq!(proxy.freeze(), 1);
    match next_event(&mut client).await {
        Event::Disconnected(d) => {
            assert_eq!(d.code, None);
            assert!(d.reason.contains("no frame"), "{d:?}");
        }
        other => panic!("{other:?}"),
    }
    let info = expect_connected(&mut client).await;
    assert!(info.recovered);
    assert_eq!(info.epoch, first.epoch);
    server
        .engine()
        .send(&user("nina"), Message::new("2"))
        .await
        .expect("send");
    assert_eq!(expect_message(&mut client).await.data_str(), "2");
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_at_the_clients_limit_arrives_and_one_byte_more_ends_the_client() {
    let server = harness::server(&[]).await;
    let data = |len: usize| Message::new(format!("\"{}\"", "x".repeat(len - 2)));
    // The size of a `message` frame carrying 1,000 bytes of data at seq 1, as a raw client
    // receives it (message frames do not name the user, so it is the same for any user).
    server
        .engine()
        .send(&user("probe"), data(1000))
        .await
        .expect("send");
    let (mut raw, _) = harness::Raw::connect(&server, "probe", None).await;
    let limit = raw.next_message().await.text.len();
    raw.close().await;

    let olga = user("olga");
    server.engine().send(&olga, data(1000)).await.expect("send");
    server.engine().send(&olga, data(1001)).await.expect("send");
    let mut client = builder(server.local_addr(), "olga")
        .max_frame_bytes(limit)
        .connect()
        .await
        .expect("connects");
    expect_connected(&mut client).await;
    assert_eq!(
        expect_message(&mut client).await.seq(),
        1,
        "exactly at the limit"
    );
    match next_event(&mut client).await {
        Event::Disconnected(d) => assert!(d.reason.contains("exceeds the limit"), "{d:?}"),
        other => panic!("one byte over the limit: {other:?}"),
    }
    // Permanent: the server would send the same frame again on every reconnect.
    match next(&mut client).await {
        Err(ClientError::FrameTooBig { max }) => assert_eq!(max, limit),
        other => panic!("after the disconnect: {other:?}"),
    }
    server.shutdown().await;
}

#[test]
fn debug_output_never_shows_the_token() {
    let token = harness::token("grace");
    let builder = Client::builder("ws://127.0.0.1:1/ws", token.clone());
    let text = format!("{builder:?}");
    assert!(!text.contains(&token), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    let config = builder.build().expect("valid");
    let text = format!("{config:?} {config:#?}");
    assert!(!text.contains(&token), "{text}");
    // Not even a recognisable piece of it (a JWT's signature is its last segment).
    let signature = token.rsplit('.').next().expect("a JWT");
    assert!(!text.contains(signature), "{text}");
}
