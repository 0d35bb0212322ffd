//! tether in one minute: a user receives live messages, loses the connection mid-stream,
//! misses more while away, and reconnects without losing or repeating anything.
//!
//! Run it with `cargo run --release --example quickstart`.

use std::error::Error;

use tether::{CloseReason, Delivery, Engine, Message, Priority, ResumePoint, UserId, UserLimits};

fn show(d: &Delivery) -> String {
    format!(
        "seq {:>2}  {:<8}  {}",
        d.seq(),
        d.priority().as_str(),
        String::from_utf8_lossy(d.payload())
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let engine = Engine::builder().build()?;
    println!(
        "engine: {} shards, window {} in flight per user, {} MiB memory budget\n",
        engine.config().shards(),
        engine.config().window(),
        engine.memory_budget() >> 20
    );
    let alice = UserId::new("alice")?;

    println!("1. alice connects; three messages arrive live");
    let mut session = engine.connect(&alice, None).await?;
    for text in ["hello", "how are you?", "lunch at noon?"] {
        let outcome = engine.send_confirmed(&alice, Message::new(text)).await?;
        println!("   send {text:?} -> {outcome:?}");
    }
    for _ in 0..3 {
        let d = session.recv().await.ok_or("session ended")?;
        println!("   alice got  {}", show(&d));
    }
    session.ack(2)?;
    println!("   alice acknowledges up to seq 2; her app crashes while handling seq 3");
    // A client resumes from what it has *processed*: seq 3 was received but not handled.
    let resume = ResumePoint {
        last_seq: 2,
        ..session.resume_point()
    };
    drop(session);

    println!("\n2. while she is away, four more are sent");
    let away = [
        ("weekly digest", Priority::Low),
        ("new comment on your post", Priority::Normal),
        ("login from a new device", Priority::Critical),
        ("your order shipped", Priority::High),
    ];
    for (text, priority) in away {
        let outcome = engine
            .send_confirmed(&alice, Message::new(text).with_priority(priority))
            .await?;
        println!("   send {text:?} ({}) -> {outcome:?}", priority.as_str());
    }
    engine.barrier().await;
    if let Some(stats) = engine.mailbox_stats(&alice).await {
        println!(
            "   mailbox: {} queued per band (critical, high, normal, low) = {:?}, {} in flight unacknowledged",
            stats.queued(),
            stats.queued_per_band,
            stats.in_flight
        );
    }

    println!(
        "\n3. alice reconnects with her resume point (epoch {}, last seq {})",
        resume.epoch, resume.last_seq
    );
    let mut session = engine.connect(&alice, Some(resume)).await?;
    let info = session.info().clone();
    println!(
        "   recovered: {}, re-delivered: {}, missed while away: {}",
        info.recovered,
        info.redelivered,
        info.missed.total()
    );
    let mut batch = Vec::new();
    engine.barrier().await;
    session.drain(&mut batch, 100);
    for d in &batch {
        println!("   alice got  {}", show(d));
    }
    if let Some(last) = batch.last() {
        session.ack(last.seq())?;
    }
    session.close(CloseReason::Normal);
    engine.barrier().await;
    println!(
        "\n   seq 3 came again with its original seq (it was never acknowledged); then the backlog,\n   most urgent first. Everything is acknowledged: the engine now holds {} bytes.",
        engine.memory_used()
    );

    println!("\n4. bob's mailbox holds at most 2 messages; 4 arrive while he is away");
    let bob = UserId::new("bob")?;
    let small = UserLimits {
        max_messages: 2,
        ..engine.config().user_limits()
    };
    engine.set_user_limits(&bob, Some(small)).await?;
    for i in 1..=4 {
        let message = Message::new(format!("price update {i}"))
            .with_priority(Priority::Low)
            .with_id(format!("price-{i}"));
        let outcome = engine.send_confirmed(&bob, message).await?;
        println!("   send \"price update {i}\" -> {outcome:?}");
    }
    let mut session = engine.connect(&bob, None).await?;
    let missed = &session.info().missed;
    let ids: Vec<&str> = missed.ids.iter().map(|id| id.as_str()).collect();
    println!(
        "   bob connects: missed {} (evicted by overflow: {}), ids {:?}",
        missed.total(),
        missed.evicted,
        ids
    );
    for _ in 0..2 {
        let d = session.recv().await.ok_or("session ended")?;
        println!("   bob got    {}", show(&d));
    }
    Ok(())
}
