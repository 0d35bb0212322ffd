use tether::Priority;

use crate::common::*;

#[tokio::test]
async fn enqueue_attach_fill_ack() {
    let (_server, store) = store().await;
    let u = user("alice");
    put(&store, &u, msg("low", Priority::Low)).await;
    put(&store, &u, msg("crit", Priority::Critical)).await;
    let a = attach(&store, &u).await;
    println!("{a:?}");
    let got = fill_all(&store, &a.session, a.next_seq).await;
    assert_eq!(texts(&got), ["crit", "low"]);
    assert_eq!(seqs(&got), [1, 2]);
    let acked = store.ack(&a.session, 2).await.unwrap();
    assert_eq!(acked.acknowledged, 2);
}
