//! Devices on the wire: a connect frame names its device, every device of a user gets every
//! message with its own seqs, publishes report the fan-out, and operators list a user's
//! devices.

use serde_json::{json, Value};
use tether::client::{Client, Event, PublishOutcome};

use crate::harness::{self, http, publish_ok, server, Raw, API_KEY, GUARD};

async fn connect_device(
    server: &tether::server::Server,
    user: &str,
    device: &str,
    resume: Option<(&str, u64)>,
) -> (Raw, Value) {
    Raw::connect_device(server, user, Some(device), resume).await
}

fn text(n: u32) -> Value {
    json!({"to": "dana", "data": {"n": n}})
}

#[tokio::test]
async fn each_device_gets_every_message_with_its_own_seqs() {
    let server = server(&[]).await;
    let (mut phone, connected) = connect_device(&server, "dana", "phone", None).await;
    assert_eq!(connected["device"], "phone");
    let (mut laptop, _) = connect_device(&server, "dana", "laptop", None).await;
    // A plain connect is the default device: a third device, and its frame names none.
    let (mut plain, connected) = Raw::connect(&server, "dana", None).await;
    assert!(connected.get("device").is_none(), "{connected}");

    let outcome = publish_ok(&server, text(1)).await;
    assert_eq!(
        outcome,
        json!({"outcome": "fanout", "delivered": 3, "queued": 0, "dropped": 0})
    );
    for raw in [&mut phone, &mut laptop, &mut plain] {
        let m = raw.next_message().await;
        assert_eq!((m.seq, m.value["data"]["n"].as_u64()), (1, Some(1)));
    }

    // The laptop leaves; the phone goes on. Each keeps its own seqs.
    let laptop_epoch = {
        laptop.ack(1).await;
        drop(laptop);
        let devices = list(&server, "dana").await;
        devices
            .iter()
            .find(|d| d["device"] == "laptop")
            .map(|d| d["epoch"].as_str().unwrap().to_owned())
            .expect("the laptop is listed")
    };
    harness::eventually("the laptop is away", || async {
        list(&server, "dana")
            .await
            .iter()
            .any(|d| d["device"] == "laptop" && d["connected"] == false)
    })
    .await;
    let outcome = publish_ok(&server, text(2)).await;
    assert_eq!(
        outcome,
        json!({"outcome": "fanout", "delivered": 2, "queued": 1, "dropped": 0})
    );
    assert_eq!(phone.next_message().await.seq, 2);
    assert_eq!(plain.next_message().await.seq, 2);
    let (mut laptop, connected) =
        connect_device(&server, "dana", "laptop", Some((&laptop_epoch, 1))).await;
    assert_eq!(connected["recovered"], true, "{connected}");
    let m = laptop.next_message().await;
    assert_eq!((m.seq, m.value["data"]["n"].as_u64()), (2, Some(2)));
}

/// The devices route's list for `user`.
async fn list(server: &tether::server::Server, user: &str) -> Vec<Value> {
    let r = http(
        server,
        "GET",
        &format!("/api/devices?user={user}"),
        Some(&format!("Bearer {API_KEY}")),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["user"], user);
    body["devices"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn operators_list_a_users_devices_with_the_api_key() {
    let server = server(&[]).await;
    let (_phone, _) = connect_device(&server, "eve", "phone", None).await;
    publish_ok(&server, json!({"to": "eve", "data": 1, "priority": "high"})).await;
    let (laptop, _) = connect_device(&server, "eve", "laptop", None).await;
    drop(laptop);
    harness::eventually("the laptop is away", || async {
        list(&server, "eve")
            .await
            .iter()
            .any(|d| d["device"] == "laptop" && d["connected"] == false)
    })
    .await;
    publish_ok(&server, json!({"to": "eve", "data": 2, "priority": "low"})).await;
    let devices = list(&server, "eve").await;
    assert_eq!(devices.len(), 2, "{devices:?}");
    let laptop = devices.iter().find(|d| d["device"] == "laptop").unwrap();
    assert_eq!(laptop["queued"], json!([0, 0, 0, 1]));
    assert!(laptop["since_unix_ms"].as_u64().unwrap() > 0);
    let phone = devices.iter().find(|d| d["device"] == "phone").unwrap();
    assert_eq!(phone["connected"], true);
    assert_eq!(phone["in_flight"], 2, "{phone}");

    let r = http(&server, "GET", "/api/devices?user=eve", None, "").await;
    assert_eq!(r.status, 401);
    let r = http(
        &server,
        "GET",
        "/api/devices",
        Some(&format!("Bearer {API_KEY}")),
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // A user without mailboxes has no devices.
    assert!(list(&server, "nobody").await.is_empty());
}

#[tokio::test]
async fn bad_device_names_and_the_device_limit() {
    let server = server(&["--max-devices-per-user", "2", "--max-device-id-len", "8"]).await;
    for bad in [json!(""), json!("x".repeat(9)), json!(7)] {
        let mut raw = Raw::open(&server).await;
        raw.send(json!({"type": "connect", "token": harness::token("fay"), "device": bad}))
            .await;
        assert_eq!(raw.close_code().await, Some(4003), "device {bad}");
    }
    // At the edge: 8 bytes is fine.
    let (_a, _) = connect_device(&server, "fay", &"x".repeat(8), None).await;
    let (_b, _) = connect_device(&server, "fay", "b", None).await;
    // A third device while both are connected: try later.
    let mut raw = Raw::open(&server).await;
    raw.send(json!({"type": "connect", "token": harness::token("fay"), "device": "c"}))
        .await;
    assert_eq!(raw.close_code().await, Some(4100));
}

#[tokio::test]
async fn the_rust_client_names_its_device() {
    let server = server(&["--allow-client-publish"]).await;
    let url = format!("ws://{}/ws", server.local_addr());
    let mut phone = Client::builder(&url, harness::token("gus"))
        .device("phone")
        .connect()
        .await
        .expect("connects");
    let mut tablet = Client::builder(&url, harness::token("gus"))
        .device("tablet")
        .connect()
        .await
        .expect("connects");
    for client in [&mut phone, &mut tablet] {
        match tokio::time::timeout(GUARD, client.recv()).await {
            Ok(Ok(Event::Connected(info))) => assert!(info.device.is_some()),
            other => panic!("{other:?}"),
        }
    }
    let outcome = phone
        .handle()
        .publish(tether::client::Publish::json("gus", "hi").expect("JSON"))
        .await
        .expect("an answer");
    assert_eq!(
        outcome,
        PublishOutcome::Fanout {
            delivered: 2,
            queued: 0,
            dropped: 0,
            evicted: 0
        }
    );
    for client in [&mut phone, &mut tablet] {
        let event = tokio::time::timeout(GUARD, client.recv()).await;
        match event {
            Ok(Ok(Event::Message(m))) => assert_eq!(m.seq(), 1),
            other => panic!("{other:?}"),
        }
    }
    assert!(Client::builder(&url, "t").device("").build().is_err());
}
