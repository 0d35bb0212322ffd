use tether::{Engine, Message, Priority, UserId};

#[tokio::test]
async fn smoke() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = UserId::new("u").unwrap();
    for i in 0..5 {
        engine
            .send(
                &u,
                Message::new(format!("m{i}")).with_priority(if i % 2 == 0 {
                    Priority::Low
                } else {
                    Priority::High
                }),
            )
            .await
            .unwrap();
    }
    let mut s = engine.connect(&u, None).await.unwrap();
    let mut got = vec![];
    for _ in 0..5 {
        let d = s.recv().await.unwrap();
        got.push((d.seq(), String::from_utf8(d.payload().to_vec()).unwrap()));
    }
    assert_eq!(
        got,
        vec![
            (1, "m1".into()),
            (2, "m3".into()),
            (3, "m0".into()),
            (4, "m2".into()),
            (5, "m4".into())
        ]
    );
    s.ack(3).unwrap();
    let rp = s.resume_point();
    drop(s);
    let mut s2 = engine
        .connect(
            &u,
            Some(tether::ResumePoint {
                epoch: rp.epoch,
                last_seq: 3,
            }),
        )
        .await
        .unwrap();
    assert!(s2.info().recovered);
    assert_eq!(s2.info().redelivered, 2);
    assert_eq!(s2.recv().await.unwrap().seq(), 4);
    assert_eq!(s2.recv().await.unwrap().seq(), 5);
    // live
    assert_eq!(
        engine.send_confirmed(&u, Message::new("x")).await.unwrap(),
        tether::SendOutcome::Delivered
    );
    assert_eq!(s2.recv().await.unwrap().seq(), 6);
    let s3 = engine.connect(&u, None).await.unwrap();
    assert_eq!(s2.recv().await.map(|d| d.seq()), None);
    assert_eq!(s2.end_reason(), Some(tether::EndReason::Replaced));
    assert_eq!(s3.info().redelivered, 3);
}
