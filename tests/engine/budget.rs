//! The engine-wide memory budget: Low is refused first and Critical last, losses show up as
//! `shed` in an existing mailbox's manifest, and the bytes held never exceed the budget.

use tether::{
    Engine, Message, MessageId, Priority, RejectReason, SendOutcome, ShedThresholds, UserId,
};

use crate::common::{recv, user};

const BUDGET: u64 = 10_000;
const SHED: SendOutcome = SendOutcome::Rejected(RejectReason::MemoryBudget);
const QUEUED: SendOutcome = SendOutcome::Queued { evicted: 0 };

/// One shard, so the budget is exact.
fn engine() -> Engine {
    Engine::builder()
        .shards(1)
        .memory_budget_bytes(BUDGET)
        .build()
        .unwrap()
}

async fn send(engine: &Engine, u: &UserId, id: &str, bytes: usize, p: Priority) -> SendOutcome {
    let outcome = engine
        .send_confirmed(
            u,
            Message::new(vec![b'x'; bytes]).with_id(id).with_priority(p),
        )
        .await
        .unwrap();
    engine.barrier().await;
    assert!(
        engine.memory_used() <= BUDGET,
        "memory_used {} exceeds the budget after {id}",
        engine.memory_used()
    );
    outcome
}

#[tokio::test]
async fn memory_budget_sheds_low_first_and_critical_last() {
    let engine = engine();
    assert_eq!(engine.memory_budget(), BUDGET);
    let u = user("holder");
    let (low, normal, high, critical) = (
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    );

    // Low: admitted while held + size <= 6000.
    for i in 0..6 {
        assert_eq!(
            send(&engine, &u, &format!("low{i}"), 1000, low).await,
            QUEUED
        );
    }
    assert_eq!(engine.memory_used(), 6000);
    assert_eq!(send(&engine, &u, "shed-low-1", 1000, low).await, SHED);
    assert_eq!(send(&engine, &u, "shed-low-2", 1, low).await, SHED);

    // Normal: up to 8000.
    for i in 0..2 {
        assert_eq!(
            send(&engine, &u, &format!("normal{i}"), 1000, normal).await,
            QUEUED
        );
    }
    assert_eq!(engine.memory_used(), 8000);
    assert_eq!(send(&engine, &u, "shed-normal", 1000, normal).await, SHED);
    assert_eq!(send(&engine, &u, "shed-normal-1", 1, normal).await, SHED);

    // High: up to 9500, the edge included.
    assert_eq!(send(&engine, &u, "high0", 1000, high).await, QUEUED);
    assert_eq!(send(&engine, &u, "shed-high", 1000, high).await, SHED);
    assert_eq!(send(&engine, &u, "high1", 500, high).await, QUEUED);
    assert_eq!(engine.memory_used(), 9500);
    assert_eq!(send(&engine, &u, "shed-high-1", 1, high).await, SHED);

    // Critical: up to the budget itself, the edge included.
    assert_eq!(
        send(&engine, &u, "shed-critical-big", 501, critical).await,
        SHED
    );
    assert_eq!(send(&engine, &u, "critical0", 500, critical).await, QUEUED);
    assert_eq!(engine.memory_used(), BUDGET);
    assert_eq!(
        send(&engine, &u, "shed-critical-1", 1, critical).await,
        SHED
    );

    // A shed send to a user without a mailbox does not create one.
    let nobody = user("nobody");
    assert_eq!(send(&engine, &nobody, "nobody", 1, critical).await, SHED);
    assert!(engine.mailbox_stats(&nobody).await.is_none());

    // The existing mailbox lists every shed message.
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.queued_bytes as u64, BUDGET);
    assert_eq!(stats.missed, 8);
    let mut s = engine.connect(&u, None).await.unwrap();
    let missed = s.info().missed.clone();
    assert_eq!(missed.shed, 8);
    assert_eq!((missed.evicted, missed.rejected), (0, 0));
    assert_eq!(
        missed.ids.iter().map(MessageId::as_str).collect::<Vec<_>>(),
        [
            "shed-low-1",
            "shed-low-2",
            "shed-normal",
            "shed-normal-1",
            "shed-high",
            "shed-high-1",
            "shed-critical-big",
            "shed-critical-1"
        ]
    );

    // In flight still counts against the budget; acknowledged bytes are given back.
    let mut order = Vec::new();
    for _ in 0..11 {
        let d = recv(&mut s).await;
        order.push(d.message().id().unwrap().as_str().to_string());
    }
    assert_eq!(
        order,
        [
            "critical0",
            "high0",
            "high1",
            "normal0",
            "normal1",
            "low0",
            "low1",
            "low2",
            "low3",
            "low4",
            "low5"
        ]
    );
    engine.barrier().await;
    assert_eq!(engine.memory_used(), BUDGET);
    assert_eq!(send(&engine, &u, "still-full", 1, critical).await, SHED);
    s.ack(6).unwrap(); // critical0, high0, high1, normal0, normal1, low0: 5000 bytes
    engine.barrier().await;
    assert_eq!(engine.memory_used(), 5000);
    // Now a Low fits again up to 6000: delivered straight into the window.
    assert_eq!(
        send(&engine, &u, "low-again", 1000, low).await,
        SendOutcome::Delivered
    );
    assert_eq!(send(&engine, &u, "low-again-1", 1, low).await, SHED);
}

#[tokio::test]
async fn custom_shed_thresholds_move_the_edges() {
    let engine = Engine::builder()
        .shards(1)
        .memory_budget_bytes(1000)
        .shed_thresholds(ShedThresholds {
            low: 0.25,
            normal: 0.5,
            high: 0.5,
        })
        .build()
        .unwrap();
    let u = user("custom");
    let send = |bytes: usize, p: Priority| {
        let engine = engine.clone();
        let u = u.clone();
        async move {
            engine
                .send_confirmed(&u, Message::new(vec![0u8; bytes]).with_priority(p))
                .await
                .unwrap()
        }
    };
    assert_eq!(send(250, Priority::Low).await, QUEUED);
    assert_eq!(send(1, Priority::Low).await, SHED);
    assert_eq!(send(250, Priority::Normal).await, QUEUED);
    assert_eq!(send(1, Priority::High).await, SHED);
    assert_eq!(send(500, Priority::Critical).await, QUEUED);
    assert_eq!(send(1, Priority::Critical).await, SHED);
    engine.barrier().await;
    assert_eq!(engine.memory_used(), 1000);
}

#[tokio::test]
async fn memory_used_never_exceeds_the_budget_under_mixed_load() {
    const BUDGET: u64 = 50_000;
    let engine = Engine::builder()
        .shards(1)
        .memory_budget_bytes(BUDGET)
        .build()
        .unwrap();
    let users: Vec<UserId> = (0..10).map(|i| user(&format!("load{i}"))).collect();
    let mut counts = [0usize; 4];
    let mut shed = [0usize; 4];
    for i in 0..2000usize {
        let p = Priority::ALL[(i * 7 + i / 3) % 4];
        let outcome = engine
            .send_confirmed(
                &users[i % 10],
                Message::new(vec![1u8; 100]).with_priority(p),
            )
            .await
            .unwrap();
        counts[p.index()] += 1;
        match outcome {
            SendOutcome::Queued { evicted: 0 } => {}
            SHED => shed[p.index()] += 1,
            other => panic!("unexpected {other:?}"),
        }
        if i % 50 == 0 {
            assert!(engine.memory_used() <= BUDGET);
        }
    }
    engine.barrier().await;
    // 100-byte messages, exact thresholds: the budget fills to exactly 50_000 with Critical.
    assert_eq!(engine.memory_used(), BUDGET);
    let mut held = 0;
    for u in &users {
        let stats = engine.mailbox_stats(u).await.unwrap();
        held += stats.queued_bytes + stats.in_flight_bytes;
    }
    assert_eq!(held as u64, BUDGET);
    // Low stopped at 60%: more Low than Critical was refused.
    let low_kept = counts[3] - shed[3];
    let critical_kept = counts[0] - shed[0];
    assert!(low_kept * 100 <= 30_000, "Low kept {low_kept}");
    assert!(critical_kept > 0);
    assert!(
        shed[3] * counts[0] > shed[0] * counts[3],
        "{shed:?} of {counts:?}"
    );
}
