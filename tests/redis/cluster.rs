//! The store on a Redis Cluster of three masters: each script stays in its user's slot
//! (device keys built inside the script included), users spread over the masters, batches
//! go to every node, and the checks read every master.

use tether::cluster::{Batch, BatchReply, Enqueued, RedisStore, StoreConfig};
use tether::{CloseReason, Message, Priority, ResumePoint};

use crate::common::*;
use crate::server::RedisCluster;

#[tokio::test]
async fn every_operation_runs_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let seeds: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster(&seeds, StoreConfig::default())
        .await
        .unwrap();
    let health = store.health().await.unwrap();
    assert_eq!(health.nodes.len(), 3);
    assert!(health.issues().is_empty(), "{:?}", health.issues());

    let users: Vec<_> = (0..24).map(|i| user(&format!("c{i}"))).collect();
    let mut phones = Vec::new();
    for u in &users {
        // Two devices: the laptop away, the phone attached.
        let laptop = store.attach(u, "laptop", "node-a", None, 0).await.unwrap();
        store
            .detach(&laptop.session, 0, CloseReason::Abnormal)
            .await
            .unwrap();
        phones.push(store.attach(u, "phone", "node-b", None, 0).await.unwrap());
        for (i, p) in [Priority::Low, Priority::Critical, Priority::Normal]
            .into_iter()
            .enumerate()
        {
            let m = Message::new(format!("{u}-{i}"))
                .with_priority(p)
                .with_id(format!("{u}-{i}"));
            let Enqueued::Accepted(all) = store.enqueue(u, &m).await.unwrap() else {
                panic!("duplicate");
            };
            assert_eq!(all.len(), 2);
            assert_eq!(store.enqueue(u, &m).await.unwrap(), Enqueued::Duplicate);
        }
    }
    for node in &cluster.nodes {
        let keys: i64 = node.cmd(&["DBSIZE"]);
        assert!(keys > 0, "users spread over every master");
    }

    let mut batch = Batch::new();
    for p in &phones {
        batch.fill(&p.session, 1, 0, 10);
    }
    let replies = store.run(&batch).await.unwrap();
    for (u, r) in users.iter().zip(&replies) {
        let Ok(BatchReply::Filled(f)) = r else {
            panic!("{r:?}");
        };
        assert_eq!(
            texts(&f.delivered),
            [format!("{u}-1"), format!("{u}-2"), format!("{u}-0")]
        );
    }
    batch.clear();
    for p in &phones {
        batch.ack(&p.session, 3);
    }
    for r in store.run(&batch).await.unwrap() {
        assert!(matches!(r, Ok(BatchReply::Acked(a)) if a.acknowledged == 3));
    }
    for u in &users {
        let laptop = store.inspect(u, Some("laptop")).await.unwrap().unwrap();
        let resume = ResumePoint {
            epoch: laptop.epoch,
            last_seq: 0,
        };
        let back = store
            .attach(u, "laptop", "node-c", Some(resume), 10)
            .await
            .unwrap();
        assert!(back.info.recovered);
        assert_eq!(seqs(&back.delivered), [1, 2, 3]);
    }
}
