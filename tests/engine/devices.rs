//! Every device of a user gets every message: one mailbox per device, fanned out to on accept,
//! each with its own seqs, window, acks, resume point, caps and missed manifest; the mailbox
//! that waits for a user's first device; the device limit; dedup once per user; streams on
//! several devices.

use tether::{
    Clock, CloseReason, ConfigError, ConnectError, DeviceId, EndReason, Engine, Fanout,
    InvalidInput, Message, OverflowPolicy, Priority, RejectReason, ResetReason, ResumePoint,
    SendOutcome, Session, StreamPart, UserId, UserLimits,
};

use crate::common::{advance, assert_nothing_more, recv, text, user};

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

async fn connect(engine: &Engine, u: &UserId, name: &str) -> Session {
    engine.connect_device(u, &device(name), None).await.unwrap()
}

/// Receives `n` deliveries as (seq, text).
async fn recv_n(s: &mut Session, n: usize) -> Vec<(u64, String)> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let d = recv(s).await;
        v.push((d.seq(), text(&d)));
    }
    v
}

async fn send(engine: &Engine, u: &UserId, payload: &str) -> SendOutcome {
    engine
        .send_confirmed(u, Message::new(payload.to_owned()))
        .await
        .unwrap()
}

fn fanout(outcome: SendOutcome) -> Fanout {
    match outcome {
        SendOutcome::Fanout(f) => f,
        other => panic!("expected a fan-out, got {other:?}"),
    }
}

fn seqs_and(texts: &[&str], first_seq: u64) -> Vec<(u64, String)> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| (first_seq + i as u64, (*t).to_owned()))
        .collect()
}

#[tokio::test]
async fn two_devices_receive_the_same_messages_in_the_same_order_with_their_own_seqs() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("two-devices");
    let mut phone = connect(&engine, &u, "phone").await;
    assert_eq!(send(&engine, &u, "a").await, SendOutcome::Delivered);
    assert_eq!(send(&engine, &u, "b").await, SendOutcome::Delivered);
    assert_eq!(recv_n(&mut phone, 2).await, seqs_and(&["a", "b"], 1));

    // The laptop starts empty and numbers its own deliveries from 1.
    let mut laptop = connect(&engine, &u, "laptop").await;
    assert!(!laptop.info().recovered);
    assert_eq!((laptop.info().redelivered, laptop.info().pending), (0, 0));
    assert_ne!(laptop.info().epoch, phone.info().epoch);
    let f = fanout(send(&engine, &u, "c").await);
    assert_eq!((f.delivered, f.queued, f.dropped, f.evicted), (2, 0, 0, 0));
    assert_eq!(recv_n(&mut phone, 1).await, seqs_and(&["c"], 3));
    assert_eq!(recv_n(&mut laptop, 1).await, seqs_and(&["c"], 1));

    // Both away: each mailbox keeps its copies and hands them over most urgent first.
    phone.ack(3).unwrap();
    laptop.ack(1).unwrap();
    phone.close(CloseReason::Normal);
    laptop.close(CloseReason::Normal);
    engine.barrier().await;
    for (payload, p) in [
        ("low", Priority::Low),
        ("normal", Priority::Normal),
        ("critical", Priority::Critical),
    ] {
        let m = Message::new(payload).with_priority(p);
        let f = fanout(engine.send_confirmed(&u, m).await.unwrap());
        assert_eq!((f.delivered, f.queued), (0, 2));
    }
    let order = ["critical", "normal", "low"];
    let mut phone = connect(&engine, &u, "phone").await;
    assert_eq!(recv_n(&mut phone, 3).await, seqs_and(&order, 4));
    let mut laptop = connect(&engine, &u, "laptop").await;
    assert_eq!(recv_n(&mut laptop, 3).await, seqs_and(&order, 2));
    assert_nothing_more(&engine, &mut phone).await;
    assert_nothing_more(&engine, &mut laptop).await;

    let m = engine.metrics();
    assert_eq!(m.gauges.users, 1);
    assert_eq!(m.gauges.mailboxes, 2);
    assert_eq!(m.gauges.sessions_active, 2);
    assert_eq!(m.counters.sent, 6, "a send counts once");
    assert_eq!(
        m.counters.delivered,
        2 + 2 + 6,
        "deliveries count per device"
    );
}

#[tokio::test]
async fn one_device_drops_and_resumes_while_the_other_keeps_receiving() {
    let engine = Engine::builder().shards(2).window(4).build().unwrap();
    let u = user("drop-and-resume");
    let mut phone = connect(&engine, &u, "phone").await;
    let mut laptop = connect(&engine, &u, "laptop").await;
    let all: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();

    for m in &all[..4] {
        send(&engine, &u, m).await;
    }
    assert_eq!(recv_n(&mut phone, 4).await, seqs_and(&all[..4], 1));
    phone.ack(2).unwrap();
    let resume = phone.resume_point();
    assert_eq!(resume.last_seq, 4);
    drop(phone); // the connection breaks: 3 and 4 are unacknowledged
    assert_eq!(recv_n(&mut laptop, 4).await, seqs_and(&all[..4], 1));
    laptop.ack(4).unwrap();

    // The laptop goes on receiving while the phone is away.
    for m in &all[4..8] {
        send(&engine, &u, m).await;
    }
    assert_eq!(recv_n(&mut laptop, 4).await, seqs_and(&all[4..8], 5));
    laptop.ack(8).unwrap();
    engine.barrier().await;

    // The phone resumes from what it received: nothing again, then its backlog.
    let mut phone = engine
        .connect_device(&u, &device("phone"), Some(resume))
        .await
        .unwrap();
    assert!(phone.info().recovered);
    assert_eq!((phone.info().redelivered, phone.info().pending), (0, 0));
    assert_eq!(recv_n(&mut phone, 4).await, seqs_and(&all[4..8], 5));
    for m in &all[8..] {
        let f = fanout(send(&engine, &u, m).await);
        assert_eq!(f.kept(), 2);
    }
    phone.ack(8).unwrap();
    assert_eq!(recv_n(&mut phone, 4).await, seqs_and(&all[8..], 9));
    assert_eq!(recv_n(&mut laptop, 4).await, seqs_and(&all[8..], 9));
    assert_nothing_more(&engine, &mut phone).await;
    assert_nothing_more(&engine, &mut laptop).await;

    // An ack settles its own device only.
    phone.ack(12).unwrap();
    engine.barrier().await;
    let devices = engine.devices(&u).await;
    let in_flight: Vec<_> = devices
        .iter()
        .map(|d| (d.device.clone().unwrap(), d.in_flight))
        .collect();
    assert_eq!(in_flight, [(device("phone"), 0), (device("laptop"), 4)]);
}

#[tokio::test]
async fn a_new_connect_replaces_its_own_device_only() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("replace");
    let mut phone = connect(&engine, &u, "phone").await;
    let mut laptop = connect(&engine, &u, "laptop").await;
    send(&engine, &u, "one").await;
    let mut phone2 = connect(&engine, &u, "phone").await;
    assert_eq!(
        recv_n(&mut phone, 1).await,
        seqs_and(&["one"], 1),
        "delivered before the replacement"
    );
    assert_eq!(phone.recv().await.map(|d| d.seq()), None);
    assert_eq!(phone.end_reason(), Some(EndReason::Replaced));
    assert_eq!(phone2.info().redelivered, 1, "unacknowledged: sent again");
    assert_eq!(recv_n(&mut phone2, 1).await, seqs_and(&["one"], 1));
    assert_eq!(recv_n(&mut laptop, 1).await, seqs_and(&["one"], 1));
    assert_eq!(laptop.end_reason(), None);
    engine.barrier().await; // counters are published after the replies
    assert_eq!(engine.metrics().counters.replaced, 1);
}

#[tokio::test]
async fn the_default_device_is_what_a_plain_connect_means() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("default");
    let plain = engine.connect(&u, None).await.unwrap();
    assert!(plain.device().is_default());
    let mut named = engine
        .connect_device(&u, &DeviceId::default(), None)
        .await
        .unwrap();
    assert_eq!(named.info().epoch, plain.info().epoch, "the same mailbox");
    engine.barrier().await;
    assert_eq!(plain.end_reason(), Some(EndReason::Replaced));
    // Beside a named device, `mailbox_stats` still means the default device.
    let _phone = connect(&engine, &u, "phone").await;
    assert!(send(&engine, &u, "x").await.is_kept());
    assert_eq!(recv_n(&mut named, 1).await, seqs_and(&["x"], 1));
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.device, Some(DeviceId::default()));
    assert_eq!(stats.epoch, named.info().epoch);
}

#[tokio::test]
async fn a_slow_devices_overflow_does_not_touch_the_other() {
    let limits = UserLimits {
        max_messages: 3,
        max_bytes: 1 << 20,
        overflow: OverflowPolicy::DropOldest,
    };
    let engine = Engine::builder()
        .shards(1)
        .window(2)
        .user_limits(limits)
        .build()
        .unwrap();
    let u = user("slow-phone");
    let mut phone = connect(&engine, &u, "phone").await;
    let mut laptop = connect(&engine, &u, "laptop").await;
    let mut outcomes = Vec::new();
    let mut laptop_got = Vec::new();
    for i in 0..10 {
        let m = Message::new(format!("m{i}")).with_id(format!("id{i}"));
        outcomes.push(engine.send_confirmed(&u, m).await.unwrap());
        // The laptop keeps up; the phone never acknowledges.
        let d = recv(&mut laptop).await;
        laptop.ack(d.seq()).unwrap();
        laptop_got.push((d.seq(), text(&d)));
        engine.barrier().await;
    }
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(laptop_got, seqs_and(&expected, 1));
    let f: Vec<_> = outcomes.into_iter().map(fanout).collect();
    // Two fill the phone's window, three wait, then each newcomer evicts the phone's oldest.
    assert!(f[..2].iter().all(|f| (f.delivered, f.queued) == (2, 0)));
    assert!(f[2..5]
        .iter()
        .all(|f| (f.delivered, f.queued, f.evicted) == (1, 1, 0)));
    assert!(f[5..]
        .iter()
        .all(|f| (f.delivered, f.queued, f.evicted) == (1, 1, 1)));

    let devices = engine.devices(&u).await;
    assert_eq!(
        (devices[0].in_flight, devices[0].queued(), devices[0].missed),
        (2, 3, 5)
    );
    assert_eq!(
        (devices[1].in_flight, devices[1].queued(), devices[1].missed),
        (0, 0, 0)
    );
    // The phone catches up: what it kept, and a manifest of what it lost.
    drop(phone);
    engine.barrier().await;
    phone = connect(&engine, &u, "phone").await;
    let missed = &phone.info().missed;
    assert_eq!((missed.evicted, missed.total()), (5, 5));
    let ids: Vec<_> = missed.ids.iter().map(|i| i.as_str()).collect();
    assert_eq!(ids, ["id2", "id3", "id4", "id5", "id6"]);
    assert_eq!(recv_n(&mut phone, 2).await, seqs_and(&["m0", "m1"], 1));
    phone.ack(2).unwrap();
    assert_eq!(recv_n(&mut phone, 2).await, seqs_and(&["m7", "m8"], 3));
    phone.ack(4).unwrap();
    assert_eq!(recv_n(&mut phone, 1).await, seqs_and(&["m9"], 5));
    engine.barrier().await;
    let m = engine.metrics();
    assert_eq!((m.counters.sent, m.counters.evicted), (10, 5));
}

#[tokio::test]
async fn a_message_no_device_keeps_is_refused_once_with_the_first_reason() {
    let limits = UserLimits {
        max_messages: 1,
        max_bytes: 1 << 20,
        overflow: OverflowPolicy::Reject,
    };
    let engine = Engine::builder()
        .shards(1)
        .user_limits(limits)
        .build()
        .unwrap();
    let u = user("full");
    drop(connect(&engine, &u, "phone").await);
    drop(connect(&engine, &u, "laptop").await);
    engine.barrier().await;
    assert_eq!(fanout(send(&engine, &u, "a").await).queued, 2);
    assert_eq!(
        send(&engine, &u, "b").await,
        SendOutcome::Rejected(RejectReason::MailboxFull)
    );
    // Different caps per device: the laptop makes room, the phone refuses.
    let mut laptop = connect(&engine, &u, "laptop").await;
    assert_eq!(recv_n(&mut laptop, 1).await, seqs_and(&["a"], 1));
    let f = fanout(send(&engine, &u, "c").await);
    assert_eq!((f.delivered, f.queued, f.dropped), (1, 0, 1));
}

#[tokio::test]
async fn the_first_device_takes_over_what_waited_and_a_later_device_starts_empty() {
    let clock = Clock::manual();
    let engine = Engine::builder()
        .shards(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    let u = user("first-device");
    for m in ["a", "b", "c"] {
        assert_eq!(
            send(&engine, &u, m).await,
            SendOutcome::Queued { evicted: 0 },
            "one mailbox: today's outcomes"
        );
    }
    let waiting = engine.devices(&u).await;
    assert_eq!(waiting.len(), 1);
    assert_eq!((waiting[0].device.clone(), waiting[0].queued()), (None, 3));
    assert_eq!(engine.mailbox_stats(&u).await, Some(waiting[0].clone()));

    advance(&engine, &clock, 5).await;
    let mut phone = connect(&engine, &u, "phone").await;
    assert_eq!(phone.info().pending, 0);
    assert_eq!(phone.info().epoch, waiting[0].epoch, "the same mailbox");
    assert_eq!(recv_n(&mut phone, 3).await, seqs_and(&["a", "b", "c"], 1));

    advance(&engine, &clock, 5).await;
    let mut laptop = connect(&engine, &u, "laptop").await;
    assert_nothing_more(&engine, &mut laptop).await;
    let f = fanout(send(&engine, &u, "d").await);
    assert_eq!(f.delivered, 2);
    assert_eq!(recv_n(&mut phone, 1).await, seqs_and(&["d"], 4));
    assert_eq!(recv_n(&mut laptop, 1).await, seqs_and(&["d"], 1));

    let devices = engine.devices(&u).await;
    let shown: Vec<_> = devices
        .iter()
        .map(|d| (d.device.clone().unwrap(), d.connected, d.since_ms))
        .collect();
    assert_eq!(
        shown,
        [(device("phone"), true, 5), (device("laptop"), true, 10)]
    );
    assert_eq!(
        engine.mailbox_stats(&u).await,
        None,
        "two named devices and no default: ask `devices`"
    );
    advance(&engine, &clock, 7).await;
    laptop.close(CloseReason::Normal);
    engine.barrier().await;
    let laptop = &engine.devices(&u).await[1];
    assert_eq!((laptop.connected, laptop.since_ms), (false, 17));
}

#[tokio::test]
async fn a_device_past_the_limit_evicts_the_one_away_longest_or_is_refused() {
    let clock = Clock::manual();
    let engine = Engine::builder()
        .shards(1)
        .max_devices_per_user(2)
        .clock(clock.clone())
        .build()
        .unwrap();
    let u = user("limit");
    let phone = connect(&engine, &u, "phone").await;
    let laptop = connect(&engine, &u, "laptop").await;
    // At the limit with every device connected: refused, nothing changes.
    assert_eq!(
        engine
            .connect_device(&u, &device("tablet"), None)
            .await
            .unwrap_err(),
        ConnectError::TooManyDevices { max: 2 }
    );
    assert_eq!(engine.devices(&u).await.len(), 2);

    // The phone leaves first, the laptop later: the phone has been away longest.
    let phone_resume = phone.resume_point();
    drop(phone);
    advance(&engine, &clock, 10).await;
    laptop.close(CloseReason::Normal);
    advance(&engine, &clock, 10).await;
    send(&engine, &u, "for both").await;
    engine.barrier().await;
    let tablet = connect(&engine, &u, "tablet").await;
    assert!(tablet.info().missed.reset.is_none());
    let names: Vec<_> = engine
        .devices(&u)
        .await
        .into_iter()
        .map(|d| d.device.unwrap())
        .collect();
    assert_eq!(names, [device("laptop"), device("tablet")]);
    engine.barrier().await;
    assert_eq!(engine.memory_used(), 8, "the phone's copy went with it");

    // The phone comes back: its mailbox is gone, and the manifest says why. It evicts the
    // laptop (away), not the connected tablet.
    let mut phone = engine
        .connect_device(&u, &device("phone"), Some(phone_resume))
        .await
        .unwrap();
    assert!(!phone.info().recovered);
    assert_eq!(phone.info().missed.reset, Some(ResetReason::DeviceEvicted));
    assert_nothing_more(&engine, &mut phone).await;
    // Both now connected: a third is refused.
    assert!(matches!(
        engine.connect_device(&u, &device("laptop"), None).await,
        Err(ConnectError::TooManyDevices { max: 2 })
    ));
    engine.barrier().await;
    let m = engine.metrics();
    assert_eq!(
        (m.counters.devices_evicted, m.counters.devices_refused),
        (2, 2)
    );
    assert_eq!((m.gauges.users, m.gauges.mailboxes), (1, 2));
    assert!(m.to_prometheus().contains("tether_devices_evicted_total 2"));

    // The laptop, evicted while away, learns why once (then its reconnects are plain).
    drop(phone);
    engine.barrier().await;
    let laptop = connect(&engine, &u, "laptop").await;
    assert_eq!(laptop.info().missed.reset, Some(ResetReason::DeviceEvicted));
    let resume = laptop.resume_point();
    drop(laptop);
    engine.barrier().await;
    let laptop = engine
        .connect_device(&u, &device("laptop"), Some(resume))
        .await
        .unwrap();
    assert!(laptop.info().recovered);
    assert_eq!(laptop.info().missed.reset, None);
    drop(tablet);
}

#[tokio::test]
async fn device_settings_hold_at_their_edges() {
    let at = |n| Engine::builder().max_devices_per_user(n).build().map(drop);
    assert!(matches!(
        at(0),
        Err(ConfigError::OutOfRange {
            setting: "max_devices_per_user",
            ..
        })
    ));
    assert!(at(1).is_ok() && at(1024).is_ok());
    assert!(at(1025).is_err());
    assert!(Engine::builder().max_device_id_len(0).build().is_err());

    // One device allowed: a second one evicts the first while it is away.
    let engine = Engine::builder()
        .shards(1)
        .max_devices_per_user(1)
        .max_device_id_len(4)
        .build()
        .unwrap();
    let u = user("edges");
    assert!(
        Engine::builder()
            .build()
            .unwrap()
            .config()
            .max_devices_per_user()
            == 10
    );
    let four = connect(&engine, &u, "four").await;
    assert_eq!(
        engine
            .connect_device(&u, &device("fives"), None)
            .await
            .unwrap_err(),
        ConnectError::Invalid(InvalidInput::DeviceIdTooLong { len: 5, max: 4 })
    );
    assert!(matches!(
        engine.connect_device(&u, &device("two"), None).await,
        Err(ConnectError::TooManyDevices { max: 1 })
    ));
    drop(four);
    engine.barrier().await;
    let two = connect(&engine, &u, "two").await;
    assert_eq!(engine.devices(&u).await.len(), 1);
    drop(two);
    engine.barrier().await;
    let four = connect(&engine, &u, "four").await;
    assert_eq!(four.info().missed.reset, Some(ResetReason::DeviceEvicted));
    // The default device has the empty name, within any length limit.
    drop(four);
    engine.barrier().await;
    assert!(engine.connect(&u, None).await.is_ok());
    assert_eq!(DeviceId::new(""), Err(InvalidInput::EmptyDeviceId));
}

#[tokio::test]
async fn a_duplicate_is_refused_once_for_the_user() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("dedup");
    let mut phone = connect(&engine, &u, "phone").await;
    let laptop = connect(&engine, &u, "laptop").await;
    let m = || Message::new("pay").with_id("order-1");
    assert_eq!(
        fanout(engine.send_confirmed(&u, m()).await.unwrap()).delivered,
        2
    );
    assert_eq!(
        engine.send_confirmed(&u, m()).await.unwrap(),
        SendOutcome::Duplicate
    );
    assert_eq!(recv_n(&mut phone, 1).await, seqs_and(&["pay"], 1));
    assert_nothing_more(&engine, &mut phone).await;
    let c = engine.metrics().counters;
    assert_eq!((c.sent, c.duplicates, c.delivered), (2, 1, 2));
    // A device that connects later is not a way around the filter.
    drop(laptop);
    let _tablet = connect(&engine, &u, "tablet").await;
    assert_eq!(
        engine.send_confirmed(&u, m()).await.unwrap(),
        SendOutcome::Duplicate
    );
    // Each device's manifest notes the refused copies.
    drop(phone);
    engine.barrier().await;
    let phone = connect(&engine, &u, "phone").await;
    assert_eq!(phone.info().missed.deduplicated, 2);
}

#[tokio::test]
async fn a_stream_reaches_each_device_in_order_and_resumes_per_device() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("streams");
    let mut phone = connect(&engine, &u, "phone").await;
    let mut laptop = connect(&engine, &u, "laptop").await;
    let part = |i, last| {
        Message::new(format!("p{i}")).with_stream_part(StreamPart::new("answer", i, last))
    };
    // Out of order: part 1 is held on both devices until part 0 arrives.
    assert_eq!(
        fanout(engine.send_confirmed(&u, part(1, false)).await.unwrap()).queued,
        2
    );
    assert_eq!(
        fanout(engine.send_confirmed(&u, part(0, false)).await.unwrap()).delivered,
        2
    );
    assert_eq!(
        engine.send_confirmed(&u, part(0, false)).await.unwrap(),
        SendOutcome::Duplicate,
        "a repeated index is a duplicate on every device: refused once"
    );
    for s in [&mut phone, &mut laptop] {
        assert_eq!(recv_n(s, 2).await, seqs_and(&["p0", "p1"], 1));
    }
    // The phone drops after acknowledging part 0; the laptop finishes the stream.
    phone.ack(1).unwrap();
    let resume = phone.resume_point();
    drop(phone);
    engine.barrier().await;
    let f = fanout(engine.send_confirmed(&u, part(2, true)).await.unwrap());
    assert_eq!((f.delivered, f.queued), (1, 1));
    assert_eq!(recv_n(&mut laptop, 1).await, seqs_and(&["p2"], 3));
    laptop.ack(3).unwrap();
    engine.barrier().await;
    let mut phone = engine
        .connect_device(
            &u,
            &device("phone"),
            Some(ResumePoint {
                last_seq: 1,
                ..resume
            }),
        )
        .await
        .unwrap();
    assert_eq!(recv_n(&mut phone, 2).await, seqs_and(&["p1", "p2"], 2));
    assert_eq!(
        engine.metrics().counters.streams_completed,
        1,
        "the laptop's"
    );
    phone.ack(3).unwrap();
    engine.barrier().await;
    assert_eq!(engine.metrics().counters.streams_completed, 2);

    // A producer's abort reaches every device after what each received.
    let next = |i, last| {
        Message::new(format!("q{i}")).with_stream_part(StreamPart::new("second", i, last))
    };
    engine.send_confirmed(&u, next(0, false)).await.unwrap();
    assert!(engine.abort_stream(&u, "second", "stop").await.unwrap());
    for s in [&mut phone, &mut laptop] {
        assert_eq!(text(&recv(s).await), "q0");
        let marker = recv(s).await;
        assert!(marker.stream_part().unwrap().abort_reason().is_some());
    }
}

#[tokio::test]
async fn the_memory_budget_counts_one_copy_per_device_mailbox() {
    let engine = Engine::builder()
        .shards(1)
        .memory_budget_bytes(100)
        .build()
        .unwrap();
    let u = user("budget");
    let m = || Message::new(vec![7u8; 60]).with_priority(Priority::Critical);
    let mut phone = connect(&engine, &u, "phone").await;
    assert_eq!(
        engine.send_confirmed(&u, m()).await.unwrap(),
        SendOutcome::Delivered
    );
    let d = recv(&mut phone).await;
    phone.ack(d.seq()).unwrap();
    drop(phone);
    engine.barrier().await;
    assert_eq!(engine.memory_used(), 0);
    // 60 bytes fit one mailbox; with a second device 2 x 60 > 100: refused once, and
    // recorded on both.
    let _laptop = connect(&engine, &u, "laptop").await;
    assert_eq!(
        engine.send_confirmed(&u, m()).await.unwrap(),
        SendOutcome::Rejected(RejectReason::MemoryBudget)
    );
    let shed: Vec<_> = engine
        .devices(&u)
        .await
        .iter()
        .map(|d| d.counters.shed)
        .collect();
    assert_eq!(shed, [1, 1]);
    engine.barrier().await;
    assert_eq!(engine.metrics().counters.shed, 2, "losses count per device");
}
