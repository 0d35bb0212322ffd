//! The start-up checks read Redis's own settings.

use tether::cluster::HealthIssue;

use crate::common::*;

#[tokio::test]
async fn noeviction_and_aof_are_checked() {
    let (server, store) = store().await;
    let health = store.health().await.unwrap();
    assert_eq!(health.nodes.len(), 1);
    let node = &health.nodes[0];
    assert_eq!(node.maxmemory_policy.as_deref(), Some("noeviction"));
    assert_eq!(node.appendonly, Some(true));
    assert_eq!(node.appendfsync.as_deref(), Some("everysec"));
    assert!(health.issues().is_empty());

    let _: () = server.cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let _: () = server.cmd(&["CONFIG", "SET", "appendonly", "no"]);
    let issues = store.health().await.unwrap().issues();
    assert!(matches!(
        &issues[..],
        [HealthIssue::Evicting { policy, .. }, HealthIssue::NoAof { .. }] if policy == "allkeys-lru"
    ));
    assert!(issues[0].refuses() && !issues[1].refuses());
    assert!(issues[0].to_string().contains("noeviction"));
}

#[tokio::test]
async fn a_full_redis_refuses_writes_as_out_of_memory() {
    let (server, store) = store().await;
    let used = server.used_memory();
    let _: () = server.cmd(&[
        "CONFIG",
        "SET",
        "maxmemory",
        &(used + 64 * 1024).to_string(),
    ]);
    let u = user("alice");
    let big = tether::Message::new(vec![7u8; 16 * 1024]);
    let mut refused = None;
    for _ in 0..64 {
        match store.enqueue(&u, &big).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("a full Redis refuses");
    assert!(e.is_out_of_memory(), "{e}");
    assert!(!e.is_unavailable());
}
