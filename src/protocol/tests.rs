use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::*;
use crate::{
    ConnectInfo, Delivery, DeviceId, Message, MessageId, MissedManifest, Priority, RejectReason,
    SendOutcome, StreamPart, UserId,
};

fn decode(text: &str) -> ClientFrame {
    match decode_client_frame(text) {
        Ok(frame) => frame,
        Err(e) => panic!("{text}: {e}"),
    }
}

fn error(text: &str) -> FrameError {
    match decode_client_frame(text) {
        Ok(frame) => panic!("{text} decoded as {frame:?}"),
        Err(e) => e,
    }
}

fn publish(text: &str) -> PublishRequest {
    match decode(text) {
        ClientFrame::Publish(p) => p,
        other => panic!("{text} decoded as {other:?}"),
    }
}

fn json(frame: &str) -> Value {
    match serde_json::from_str(frame) {
        Ok(v) => v,
        Err(e) => panic!("not JSON ({e}): {frame}"),
    }
}

/// The raw text of the `data` field of an encoded frame, as a JSON parser sees it.
fn data_of(frame: &str) -> String {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let parsed: Frame<'_> = serde_json::from_str(frame).expect("a frame with data");
    parsed.data.get().to_owned()
}

fn delivery(seq: u64, message: Message) -> Delivery {
    Delivery::new(seq, message)
}

// --- decoding: every frame type ------------------------------------------------------

#[test]
fn decodes_connect_with_and_without_resume() {
    assert_eq!(
        decode(r#"{"type":"connect","token":"jwt.a.b"}"#),
        ClientFrame::Connect {
            token: "jwt.a.b".into(),
            resume: None,
            device: None,
        }
    );
    assert_eq!(
        decode(r#"{"type":"connect","token":"t","resume":null}"#),
        ClientFrame::Connect {
            token: "t".into(),
            resume: None,
            device: None,
        }
    );
    let frame =
        decode(r#"{"resume":{"seq":41,"epoch":"00000000deadbeef"},"token":"t","type":"connect"}"#);
    let ClientFrame::Connect {
        resume: Some(resume),
        ..
    } = frame
    else {
        panic!("{frame:?}")
    };
    assert_eq!(resume.seq, 41);
    let point = resume.to_resume_point().expect("a valid epoch");
    assert_eq!(point.epoch.to_string(), "00000000deadbeef");
    assert_eq!(point.last_seq, 41);
}

#[test]
fn decodes_ack_and_ping() {
    assert_eq!(
        decode(r#"{"type":"ack","seq":18446744073709551615}"#),
        ClientFrame::Ack { seq: u64::MAX }
    );
    assert_eq!(decode(r#" {"type":"ping"} "#), ClientFrame::Ping);
    // Escaped spellings of keys and of the type mean the same.
    assert_eq!(
        decode(r#"{"\u0074ype":"\u0061ck","seq":3}"#),
        ClientFrame::Ack { seq: 3 }
    );
}

#[test]
fn decodes_a_full_publish() {
    let p = publish(
        r#"{"type":"publish","to":"bob","data":{"x":[1,2]},"priority":"critical","ttl_ms":1500,
           "id":"order-1","ref":"c-7","stream":{"id":"s1","part":4294967295,"last":true}}"#,
    );
    assert_eq!(p.to, "bob");
    assert_eq!(p.data.as_bytes(), br#"{"x":[1,2]}"#);
    assert_eq!(p.priority, Priority::Critical);
    assert_eq!(p.ttl_ms, Some(1500));
    assert_eq!(p.id.as_deref(), Some("order-1"));
    assert_eq!(p.reference.as_deref(), Some("c-7"));
    assert_eq!(
        p.stream,
        Some(WireStreamPart {
            id: "s1".into(),
            part: u32::MAX,
            last: true
        })
    );
    let (user, m) = p.into_message().expect("valid");
    assert_eq!(user.as_str(), "bob");
    assert_eq!(&m.payload()[..], br#"{"x":[1,2]}"#);
    assert_eq!(m.priority(), Priority::Critical);
    assert_eq!(m.ttl(), Some(Duration::from_millis(1500)));
    assert_eq!(m.id().map(MessageId::as_str), Some("order-1"));
    let part = m.stream_part().expect("a stream part");
    assert_eq!(
        (part.stream(), part.index(), part.is_last()),
        ("s1", u32::MAX, true)
    );
}

#[test]
fn decodes_a_minimal_publish_with_defaults() {
    let p = publish(r#"{"type":"publish","to":"bob","data":"hi","stream":{"id":"s","part":0}}"#);
    assert_eq!(p.priority, Priority::Normal);
    assert_eq!(
        (p.ttl_ms, p.id.as_deref(), p.reference.as_deref()),
        (None, None, None)
    );
    assert_eq!(p.stream.map(|s| s.last), Some(false));
    let p = publish(
        r#"{"type":"publish","to":"bob","data":1,"priority":null,"ttl_ms":null,"id":null,"ref":null,"stream":null}"#,
    );
    assert_eq!(p.priority, Priority::Normal);
    assert!(p.ttl_ms.is_none() && p.id.is_none() && p.reference.is_none() && p.stream.is_none());
}

#[test]
fn null_data_is_a_payload_not_an_absence() {
    let p = publish(r#"{"type":"publish","to":"bob","data":null}"#);
    assert_eq!(p.data.as_bytes(), b"null");
}

#[test]
fn unknown_fields_are_ignored() {
    assert_eq!(
        decode(r#"{"type":"ack","seq":5,"future":{"deep":[1,{"x":null}]},"v":2,"seq2":"x"}"#),
        ClientFrame::Ack { seq: 5 }
    );
    // Known names that this type does not use are ignored too, duplicates included.
    assert_eq!(
        decode(r#"{"type":"ping","to":1,"to":2,"data":3}"#),
        ClientFrame::Ping
    );
}

// --- data passthrough ------------------------------------------------------------------

const ODD: &str = r#"{"b":1,  "a":[1.0e3, "\u00e9", "\"", -0.0, 1E+2, {}], "c" : null}"#;

#[test]
fn data_survives_byte_for_byte() {
    let frame = format!(r#"{{"type":"publish","to":"u","data":  {ODD}  ,"id":"m1"}}"#);
    let p = publish(&frame);
    assert_eq!(p.data.as_bytes(), ODD.as_bytes());
    let (_, message) = p.into_message().expect("valid");
    assert_eq!(&message.payload()[..], ODD.as_bytes());

    let out = encode_delivery(&delivery(7, message));
    assert!(out.contains(ODD), "{out}");
    assert_eq!(data_of(&out), ODD);
    let v = json(&out);
    assert_eq!(v["type"], "message");
    assert_eq!(v["seq"], 7);
    assert_eq!(v["id"], "m1");
    assert_eq!(v["data"]["a"][1], "é");
}

#[test]
fn scalars_and_big_numbers_pass_through() {
    for data in [
        "0",
        "-12.5e-7",
        "true",
        r#""x\ny\u0000""#,
        "123456789012345678901234567890",
        "1e400",
        "[]",
    ] {
        let p = publish(&format!(r#"{{"type":"publish","to":"u","data":{data}}}"#));
        assert_eq!(p.data.as_bytes(), data.as_bytes());
        let (_, m) = p.into_message().expect("valid");
        assert_eq!(data_of(&encode_delivery(&delivery(1, m))), data);
    }
}

#[test]
fn shared_decode_slices_the_frame_when_data_dominates() {
    let frame = Bytes::from(format!(
        r#"{{"type":"publish","to":"u","data":"{}"}}"#,
        "x".repeat(200)
    ));
    let ClientFrame::Publish(p) = decode_client_frame_shared(&frame).expect("valid") else {
        panic!()
    };
    let data = p.data.into_bytes();
    let start = data.as_ptr() as usize - frame.as_ptr() as usize;
    assert!(start < frame.len(), "the payload is a slice of the frame");
    assert_eq!(&frame[start..start + data.len()], &data[..]);

    // A small `data` next to a large ignored field is copied, so it holds only itself.
    let frame = Bytes::from(format!(
        r#"{{"type":"publish","to":"u","data":1,"pad":"{}"}}"#,
        "x".repeat(200)
    ));
    let ClientFrame::Publish(p) = decode_client_frame_shared(&frame).expect("valid") else {
        panic!()
    };
    let data = p.data.into_bytes();
    let addr = data.as_ptr() as usize;
    let inside = (frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len()).contains(&addr);
    assert!(!inside, "copied");
    assert_eq!(&data[..], b"1");
}

#[test]
fn shared_and_copying_decoders_agree() {
    for text in [
        r#"{"type":"publish","to":"u","data":[1, 2 ]}"#,
        r#"{"type":"ack","seq":-1}"#,
        "[]",
        "{",
    ] {
        assert_eq!(
            decode_client_frame_shared(&Bytes::copy_from_slice(text.as_bytes())),
            decode_client_frame(text),
            "{text}"
        );
    }
}

// --- errors: every code, naming the field ---------------------------------------------

fn assert_error(text: &str, code: &str, field: Option<&str>) {
    let err = error(text);
    assert_eq!(err.code(), code, "{text}: {err}");
    assert_eq!(err.field(), field, "{text}: {err}");
    if let Some(field) = field {
        let shown = err.to_string();
        assert!(shown.contains(&format!("`{field}`")), "{text}: {shown}");
    }
    let violation = matches!(code, "invalid_json" | "not_an_object" | "invalid_utf8");
    assert_eq!(err.is_protocol_violation(), violation, "{text}");
    // Every error encodes as a valid `error` frame with its code.
    let frame = json(&encode_frame_error(&err));
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["code"], code);
}

#[test]
fn invalid_json_is_a_protocol_violation() {
    for text in [
        "",
        "ping",
        "{",
        r#"{"type":"ping"} x"#,
        r#"{"type":"ping",}"#,
        r#"{'type':'ping'}"#,
        "{\"type\":\"ping\",\"s\":\"\u{1}\"}",
    ] {
        assert_error(text, "invalid_json", None);
    }
}

#[test]
fn deep_nesting_in_data_and_ignored_fields_is_accepted_without_recursion() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let frame = format!(r#"{{"type":"publish","to":"u","x":{deep},"data":{deep}}}"#);
    assert_eq!(publish(&frame).data.as_bytes(), deep.as_bytes());
    let unclosed = format!(
        r#"{{"type":"publish","to":"u","data":{}"#,
        "[".repeat(100_000)
    );
    assert_error(&unclosed, "invalid_json", None);
}

#[test]
fn non_objects_are_a_protocol_violation() {
    for text in [
        "[]",
        "1",
        "null",
        r#""ping""#,
        "true",
        r#"[{"type":"ping"}]"#,
    ] {
        assert_error(text, "not_an_object", None);
    }
}

#[test]
fn invalid_utf8_is_a_protocol_violation() {
    let err = decode_client_frame_shared(&Bytes::from_static(b"{\"type\":\"ping\xff\"}"))
        .expect_err("not UTF-8");
    assert_eq!(err.code(), "invalid_utf8");
    assert!(err.is_protocol_violation());
}

#[test]
fn unknown_type_is_recoverable_and_echoed_short() {
    assert_error(r#"{"type":"subscribe"}"#, "unknown_type", None);
    let long = format!(r#"{{"type":"{}é"}}"#, "a".repeat(63));
    match error(&long).kind() {
        FrameErrorKind::UnknownType { name } => assert_eq!(name, &"a".repeat(63)),
        other => panic!("{other:?}"),
    }
}

/// A publish frame to `u` with `data` 1 and `extra` fields.
fn pub_with(extra: &str) -> String {
    format!(r#"{{"type":"publish","to":"u","data":1,{extra}}}"#)
}

/// A connect frame with `resume` set to `resume`.
fn resume_with(resume: &str) -> String {
    format!(r#"{{"type":"connect","token":"t","resume":{resume}}}"#)
}

#[test]
fn missing_fields_are_named() {
    let cases = [
        ("{}".to_owned(), "type"),
        (r#"{"type":null}"#.to_owned(), "type"),
        (r#"{"type":"connect"}"#.to_owned(), "token"),
        (resume_with(r#"{"seq":1}"#), "resume.epoch"),
        (resume_with(r#"{"epoch":"1","seq":null}"#), "resume.seq"),
        (r#"{"type":"ack"}"#.to_owned(), "seq"),
        (r#"{"type":"publish","data":1}"#.to_owned(), "to"),
        (r#"{"type":"publish","to":null,"data":1}"#.to_owned(), "to"),
        (r#"{"type":"publish","to":"u"}"#.to_owned(), "data"),
        (pub_with(r#""stream":{"part":0}"#), "stream.id"),
        (pub_with(r#""stream":{"id":"s"}"#), "stream.part"),
    ];
    for (text, field) in cases {
        assert_error(&text, "missing_field", Some(field));
    }
}

#[test]
fn invalid_fields_are_named() {
    let cases = [
        (r#"{"type":1}"#.to_owned(), "type"),
        (r#"{"type":"connect","token":5}"#.to_owned(), "token"),
        (resume_with("[]"), "resume"),
        (resume_with(r#"{"epoch":1,"seq":1}"#), "resume.epoch"),
        (resume_with(r#"{"epoch":"1","seq":-1}"#), "resume.seq"),
        (r#"{"type":"ack","seq":"1"}"#.to_owned(), "seq"),
        (r#"{"type":"ack","seq":1.0}"#.to_owned(), "seq"),
        (r#"{"type":"ack","seq":1e3}"#.to_owned(), "seq"),
        (
            r#"{"type":"ack","seq":18446744073709551616}"#.to_owned(),
            "seq",
        ),
        (r#"{"type":"publish","to":["u"],"data":1}"#.to_owned(), "to"),
        (pub_with(r#""priority":"urgent""#), "priority"),
        (pub_with(r#""priority":"High""#), "priority"),
        (pub_with(r#""priority":2"#), "priority"),
        (pub_with(r#""ttl_ms":-5"#), "ttl_ms"),
        (pub_with(r#""id":7"#), "id"),
        (pub_with(r#""ref":{}"#), "ref"),
        (pub_with(r#""stream":"s""#), "stream"),
        (pub_with(r#""stream":{"id":1,"part":0}"#), "stream.id"),
        (
            pub_with(r#""stream":{"id":"s","part":4294967296}"#),
            "stream.part",
        ),
        (
            pub_with(r#""stream":{"id":"s","part":0,"last":1}"#),
            "stream.last",
        ),
    ];
    for (text, field) in cases {
        assert_error(&text, "invalid_field", Some(field));
    }
}

#[test]
fn duplicate_fields_are_named() {
    let cases = [
        (r#"{"type":"ack","type":"ping"}"#.to_owned(), "type"),
        (r#"{"type":"ack","seq":1,"seq":2}"#.to_owned(), "seq"),
        (pub_with(r#""to":"b""#), "to"),
        (pub_with(r#""\u0064ata":2"#), "data"),
        (
            pub_with(r#""stream":{"id":"s","id":"t","part":0}"#),
            "stream.id",
        ),
        (
            resume_with(r#"{"epoch":"1","seq":1,"seq":2}"#),
            "resume.seq",
        ),
    ];
    for (text, field) in cases {
        assert_error(&text, "duplicate_field", Some(field));
    }
}

#[test]
fn into_message_checks_values_and_keeps_the_ref() {
    let cases = [
        (
            r#"{"type":"publish","to":"","data":1,"ref":"r"}"#.to_owned(),
            "to",
        ),
        (pub_with(r#""ttl_ms":0,"ref":"r""#), "ttl_ms"),
        (pub_with(r#""id":"","ref":"r""#), "id"),
        (
            pub_with(r#""stream":{"id":"","part":0},"ref":"r""#),
            "stream.id",
        ),
    ];
    for (text, field) in cases {
        let err = publish(&text).into_message().expect_err(&text);
        assert_eq!(
            (err.code(), err.field()),
            ("invalid_field", Some(field)),
            "{text}"
        );
        assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        assert_eq!(err.reference(), Some("r"));
        assert_eq!(json(&encode_frame_error(&err))["ref"], "r");
    }
}

#[test]
fn decode_errors_of_a_publish_keep_its_ref() {
    let err = error(r#"{"type":"publish","ref":"r2","to":"u"}"#);
    assert_eq!((err.field(), err.reference()), (Some("data"), Some("r2")));
    // A ref that is itself wrong cannot be carried.
    let err = error(r#"{"type":"publish","ref":3,"to":"u","data":1}"#);
    assert_eq!((err.field(), err.reference()), (Some("ref"), None));
    assert!(json(&encode_frame_error(&err)).get("ref").is_none());
}

#[test]
fn resume_with_a_malformed_epoch_fails_to_convert() {
    for epoch in ["", "xyz", "00000000000000000", "-1"] {
        let wire = WireResume {
            epoch: epoch.into(),
            seq: 1,
        };
        let err = wire.to_resume_point().expect_err(epoch);
        assert_eq!(
            (err.code(), err.field()),
            ("invalid_field", Some("resume.epoch"))
        );
    }
}

// --- HTTP bodies ------------------------------------------------------------------------

#[test]
fn http_bodies_decode_like_frames() {
    let p =
        decode_publish_request(r#"{"to":"u","data":{"k": [ ]},"priority":"low"}"#).expect("valid");
    assert_eq!(
        (p.data.as_bytes(), p.priority),
        (&br#"{"k": [ ]}"#[..], Priority::Low)
    );
    assert_eq!(
        decode_publish_request("[]").map_err(|e| e.code()),
        Err("not_an_object")
    );

    let batch = decode_publish_batch(
        r#"{"messages":[{"to":"a","data":1},7,{"to":"b","data":2,"ttl_ms":"x"}],"extra":0}"#,
    )
    .expect("a batch");
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[0].as_ref().map(|p| p.to.as_str()), Ok("a"));
    assert_eq!(
        batch[1].as_ref().map_err(|e| e.field()),
        Err(Some("messages"))
    );
    assert_eq!(
        batch[2].as_ref().map_err(|e| e.field()),
        Err(Some("ttl_ms"))
    );
    for body in [r#"{"messages":{}}"#, r#"{"messages":null}"#, r#"{}"#] {
        let err = decode_publish_batch(body).expect_err(body);
        assert_eq!(err.field(), Some("messages"), "{body}");
    }
    assert_eq!(
        decode_publish_batch(r#"{"messages":[]}"#).map(|b| b.len()),
        Ok(0)
    );
}

// --- encoding ---------------------------------------------------------------------------

#[test]
fn encodes_connected_with_the_whole_manifest() {
    let info = ConnectInfo {
        epoch: "00000000000000ff".parse().expect("an epoch"),
        recovered: true,
        redelivered: 3,
        pending: 12,
        missed: MissedManifest {
            evicted: 1,
            rejected: 2,
            shed: 3,
            expired: 4,
            deduplicated: 5,
            ids: vec![MessageId::from("a\"b"), MessageId::from("c")],
            reset: None,
        },
    };
    let user = UserId::new("al\\ice\n").expect("a user");
    let out = encode_connected(&user, &DeviceId::default(), &info);
    let v = json(&out);
    assert_eq!(v["type"], "connected");
    assert_eq!(v["user"], "al\\ice\n");
    assert_eq!(v["epoch"], "00000000000000ff");
    assert_eq!(v["recovered"], true);
    assert_eq!(
        (v["redelivered"].as_u64(), v["pending"].as_u64()),
        (Some(3), Some(12))
    );
    let m = &v["missed"];
    let counts: Vec<_> = ["evicted", "rejected", "shed", "expired", "deduplicated"]
        .iter()
        .map(|k| m[k].as_u64())
        .collect();
    assert_eq!(counts, [Some(1), Some(2), Some(3), Some(4), Some(5)]);
    assert_eq!(m["ids"], serde_json::json!(["a\"b", "c"]));

    let empty = ConnectInfo {
        missed: MissedManifest::default(),
        ..info
    };
    assert_eq!(
        json(&encode_connected(&user, &DeviceId::default(), &empty))["missed"]["ids"],
        serde_json::json!([])
    );
}

#[test]
fn encodes_deliveries_with_and_without_id_and_stream() {
    let plain = encode_delivery(&delivery(1, Message::new("{}")));
    assert_eq!(
        plain,
        r#"{"type":"message","seq":1,"priority":"normal","data":{}}"#
    );

    let m = Message::new(r#"[ "p" ]"#)
        .with_priority(Priority::High)
        .with_id("i\u{7}d")
        .with_stream_part(StreamPart::new("str\"eam", 2, true));
    let out = encode_delivery(&delivery(u64::MAX, m));
    let v = json(&out);
    assert_eq!(v["seq"].as_u64(), Some(u64::MAX));
    assert_eq!(v["priority"], "high");
    assert_eq!(v["id"], "i\u{7}d");
    assert_eq!(
        v["stream"],
        serde_json::json!({"id": "str\"eam", "part": 2, "last": true})
    );
    assert_eq!(data_of(&out), r#"[ "p" ]"#);
}

#[test]
fn a_payload_that_is_not_utf8_becomes_a_string() {
    let out = encode_delivery(&delivery(2, Message::new(&b"ok\xff"[..])));
    assert_eq!(json(&out)["data"], "ok\u{fffd}");
}

#[test]
fn encodes_abort_markers_as_stream_aborted() {
    use crate::AbortReason;
    let marker = Message::abort_marker(
        "s\"1".into(),
        3,
        Priority::Normal,
        AbortReason::Producer("model \"crashed\"".into()),
    );
    let v = json(&encode_delivery(&delivery(9, marker)));
    assert_eq!(
        v,
        serde_json::json!({"type": "stream_aborted", "seq": 9, "stream": "s\"1",
            "code": "producer", "reason": "model \"crashed\""})
    );
    let marker = Message::abort_marker("s".into(), 0, Priority::Low, AbortReason::Timeout);
    let v = json(&encode_delivery(&delivery(10, marker)));
    assert_eq!(
        (&v["code"], &v["reason"]),
        (&Value::from("timeout"), &Value::from("timeout"))
    );
}

#[test]
fn encodes_every_publish_outcome() {
    let cases = [
        (SendOutcome::Delivered, r#"{"outcome":"delivered"}"#),
        (
            SendOutcome::Queued { evicted: 0 },
            r#"{"outcome":"queued"}"#,
        ),
        (
            SendOutcome::Queued { evicted: 4 },
            r#"{"outcome":"queued","evicted":4}"#,
        ),
        (SendOutcome::Duplicate, r#"{"outcome":"duplicate"}"#),
        (
            SendOutcome::Rejected(RejectReason::TooManyUsers),
            r#"{"outcome":"rejected","reason":"too_many_users"}"#,
        ),
    ];
    for (outcome, body) in cases {
        assert_eq!(encode_publish_outcome(&outcome), body);
        let with_ref = json(&encode_publish_result(Some("r\"1"), &outcome));
        let mut expected = json(body);
        expected["type"] = "publish_result".into();
        expected["ref"] = "r\"1".into();
        assert_eq!(with_ref, expected);
        let without = json(&encode_publish_result(None, &outcome));
        assert!(without.get("ref").is_none());
    }
}

#[test]
fn encodes_pong_error_and_try_later() {
    assert_eq!(json(&encode_pong()), serde_json::json!({"type": "pong"}));
    let v = json(&encode_error("bad\u{0}", "line\nbreak \"quoted\" \u{2028}"));
    assert_eq!(v["code"], "bad\u{0}");
    assert_eq!(v["message"], "line\nbreak \"quoted\" \u{2028}");
    assert_eq!(
        json(&try_later_reason(Duration::MAX)),
        serde_json::json!({"retry_after_ms": u64::MAX})
    );
    assert_eq!(try_later_reason(Duration::ZERO), r#"{"retry_after_ms":0}"#);
}

#[test]
fn writes_every_digit_count() {
    let mut n = 1u64;
    for _ in 0..20 {
        for v in [n - 1, n, n.saturating_mul(7)] {
            let mut w = FrameWriter::with_capacity(20);
            w.uint(v);
            assert_eq!(w.finish(), v.to_string());
        }
        n = n.saturating_mul(10);
    }
}

#[test]
fn close_codes_are_the_documented_ones() {
    assert_eq!(
        [
            CLOSE_UNAUTHORIZED,
            CLOSE_REPLACED,
            CLOSE_PROTOCOL_VIOLATION,
            CLOSE_TRY_LATER,
            CLOSE_SHUTTING_DOWN,
            CLOSE_FRAME_TOO_BIG
        ],
        [4001, 4002, 4003, 4100, 1001, 1009]
    );
}

#[test]
fn fingerprint_is_short_and_stable() {
    assert_eq!(fingerprint("abc"), "ba7816bf");
    assert_eq!(fingerprint(""), "e3b0c442");
}
