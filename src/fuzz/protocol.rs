//! [`client_frame`]: the wire protocol's decoder against `serde_json::Value` as the reference
//! model, and its encoders against serde_json as the reference parser.
//!
//! Input: any bytes, taken as one client frame. The decoder must never panic; bytes that are
//! not UTF-8 are refused as `invalid_utf8` by the `Bytes` decoder and their lossy text is
//! decoded too. Then:
//!
//! - the copying and the buffer-sharing decoders agree exactly;
//! - where serde_json parses the text into a `Value`, the decoder agrees with it: not an
//!   object means `not_an_object`, an object is never `invalid_json`, and every field of a
//!   decoded frame equals the model's (`data` compared as parsed values);
//! - every error has its field in its message and encodes as a JSON `error` frame;
//! - a decoded publish decodes the same from an HTTP body, and once turned into a message and
//!   delivered, its `message` frame is JSON, contains the `data` text verbatim, and a JSON
//!   parser reads back the same `data` text, seq, priority, id and stream;
//! - `publish_result` and `connected` frames built from the decoded strings are JSON with those
//!   strings intact.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::protocol::{
    decode_client_frame, decode_client_frame_shared, decode_publish_request, encode_connected,
    encode_delivery, encode_frame_error, encode_publish_result, ClientFrame, FrameError,
    PublishRequest, MAX_REF_BYTES,
};
use crate::{ConnectInfo, Delivery, DeviceId, MessageId, MissedManifest, SendOutcome};

/// Runs `data` as one client frame through the decoder and the encoders, checking both.
pub fn client_frame(data: &[u8]) {
    let shared = decode_client_frame_shared(&Bytes::copy_from_slice(data));
    let text = match std::str::from_utf8(data) {
        Ok(text) => {
            assert_eq!(
                shared,
                decode_client_frame(text),
                "the two decoders disagree"
            );
            text.to_owned()
        }
        Err(_) => {
            let err = shared.expect_err("bytes that are not UTF-8 decode");
            assert_eq!(err.code(), "invalid_utf8");
            assert!(err.is_protocol_violation());
            String::from_utf8_lossy(data).into_owned()
        }
    };
    let decoded = decode_client_frame(&text);
    if let Ok(model) = serde_json::from_str::<Value>(&text) {
        check_against_model(&decoded, &model);
    }
    match decoded {
        Ok(ClientFrame::Publish(request)) => check_publish(&text, request),
        Ok(ClientFrame::Connect {
            resume: Some(resume),
            ..
        }) => {
            if let Ok(point) = resume.to_resume_point() {
                assert_eq!(point.last_seq, resume.seq);
                let epoch = u64::from_str_radix(&resume.epoch, 16).expect("a valid epoch is hex");
                assert_eq!(point.epoch.to_string(), format!("{epoch:016x}"));
            }
        }
        Ok(_) => {}
        Err(err) => check_error(&err),
    }
}

fn check_against_model(decoded: &Result<ClientFrame, FrameError>, model: &Value) {
    let Some(object) = model.as_object() else {
        let err = decoded
            .as_ref()
            .expect_err("a JSON value that is not an object decodes");
        assert_eq!(err.code(), "not_an_object");
        return;
    };
    let field = |name: &str| object.get(name).filter(|v| !v.is_null());
    let frame = match decoded {
        Ok(frame) => frame,
        Err(err) => {
            assert!(!err.is_protocol_violation(), "an object refused as {err}");
            return;
        }
    };
    match frame {
        ClientFrame::Ping => assert_eq!(model["type"], "ping"),
        ClientFrame::Ack { seq } => {
            assert_eq!(model["type"], "ack");
            assert_eq!(model["seq"].as_u64(), Some(*seq));
        }
        ClientFrame::Connect {
            token,
            resume,
            device,
        } => {
            assert_eq!(model["type"], "connect");
            assert_eq!(model["token"].as_str(), Some(token.as_str()));
            assert_eq!(field("device").and_then(Value::as_str), device.as_deref());
            match resume {
                None => assert!(field("resume").is_none()),
                Some(r) => {
                    assert_eq!(model["resume"]["epoch"].as_str(), Some(r.epoch.as_str()));
                    assert_eq!(model["resume"]["seq"].as_u64(), Some(r.seq));
                }
            }
        }
        ClientFrame::Publish(p) => {
            assert_eq!(model["type"], "publish");
            assert_eq!(model["to"].as_str(), Some(p.to.as_str()));
            let data: Value = serde_json::from_slice(p.data.as_bytes()).expect("data is JSON");
            assert_eq!(object.get("data"), Some(&data));
            let priority = field("priority").map_or(Some("normal"), Value::as_str);
            assert_eq!(priority, Some(p.priority.as_str()));
            assert_eq!(field("ttl_ms").and_then(Value::as_u64), p.ttl_ms);
            assert_eq!(field("id").and_then(Value::as_str), p.id.as_deref());
            assert_eq!(field("ref").and_then(Value::as_str), p.reference.as_deref());
            assert!(p
                .reference
                .as_ref()
                .is_none_or(|r| r.len() <= MAX_REF_BYTES));
            match &p.stream {
                None => assert!(field("stream").is_none()),
                Some(s) => {
                    let m = &model["stream"];
                    assert_eq!(m["id"].as_str(), Some(s.id.as_str()));
                    assert_eq!(m["part"].as_u64(), Some(u64::from(s.part)));
                    assert_eq!(m["last"].as_bool().unwrap_or(false), s.last);
                }
            }
        }
    }
}

fn check_error(err: &FrameError) {
    let shown = err.to_string();
    if let Some(field) = err.field() {
        assert!(shown.contains(&format!("`{field}`")), "{shown}");
    }
    let frame: Value =
        serde_json::from_str(&encode_frame_error(err)).expect("error frames are JSON");
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["code"], err.code());
    assert_eq!(frame["message"].as_str(), Some(shown.as_str()));
    assert_eq!(frame.get("ref").and_then(Value::as_str), err.reference());
}

/// A `message` frame as a client reads it.
#[derive(Deserialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: String,
    seq: u64,
    priority: String,
    id: Option<String>,
    stream: Option<StreamField>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize, PartialEq, Debug)]
struct StreamField {
    id: String,
    part: u32,
    last: bool,
}

fn check_publish(text: &str, request: PublishRequest) {
    // The HTTP body decoder reads the same fields (it ignores `type`).
    assert_eq!(decode_publish_request(text).as_ref(), Ok(&request));

    let reference = request.reference.clone();
    let data = request.data.as_bytes().to_vec();
    let result = encode_publish_result(reference.as_deref(), &SendOutcome::Queued { evicted: 1 });
    let result: Value = serde_json::from_str(&result).expect("publish_result is JSON");
    assert_eq!(
        result.get("ref").and_then(Value::as_str),
        reference.as_deref()
    );

    let (user, message) = match request.clone().into_message() {
        Ok(built) => built,
        Err(err) => {
            assert_eq!(err.reference(), reference.as_deref());
            check_error(&err);
            return;
        }
    };
    assert_eq!(user.as_str(), request.to);
    assert_eq!(&message.payload()[..], &data[..]);

    let seq = data.len() as u64 + 1;
    let frame = encode_delivery(&Delivery::new(seq, message));
    assert!(
        frame.as_bytes().windows(data.len()).any(|w| w == &data[..]),
        "the data bytes are not in {frame}"
    );
    let parsed: MessageFrame<'_> = serde_json::from_str(&frame).expect("message frames are JSON");
    assert_eq!(parsed.kind, "message");
    assert_eq!(parsed.seq, seq);
    assert_eq!(parsed.priority, request.priority.as_str());
    assert_eq!(parsed.data.get().as_bytes(), &data[..]);
    assert_eq!(parsed.id, request.id);
    let expected = request.stream.map(|s| StreamField {
        id: s.id,
        part: s.part,
        last: s.last,
    });
    assert_eq!(parsed.stream, expected);

    let info = ConnectInfo {
        epoch: crate::Epoch(seq),
        recovered: false,
        redelivered: 0,
        pending: data.len(),
        missed: MissedManifest {
            ids: request
                .id
                .iter()
                .map(|id| MessageId::from(id.as_str()))
                .collect(),
            ..MissedManifest::default()
        },
    };
    let connected: Value =
        serde_json::from_str(&encode_connected(&user, &DeviceId::default(), &info))
            .expect("connected is JSON");
    assert_eq!(connected["user"].as_str(), Some(user.as_str()));
    assert_eq!(
        connected["epoch"].as_str(),
        Some(format!("{seq:016x}").as_str())
    );
    assert_eq!(
        connected["missed"]["ids"][0].as_str(),
        request.id.as_deref()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> Vec<Vec<u8>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/client_frame");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("the seed corpus exists")
            .map(|e| e.expect("readable").path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|path| std::fs::read(path).expect("readable seed"))
            .collect()
    }

    /// Every seed in the corpus passes.
    #[test]
    fn client_frame_corpus_replays() {
        let seeds = seeds();
        for seed in &seeds {
            client_frame(seed);
        }
        assert!(seeds.len() >= 15, "only {} seeds", seeds.len());
    }

    /// Fixed-seed mutations of the seeds (byte flips, cuts, inserted JSON punctuation), so
    /// the error paths are checked under `cargo test` too.
    #[test]
    fn client_frame_mutated_seeds_hold() {
        let seeds = seeds();
        let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
        let mut next = move || rng.u64(..);
        const PUNCTUATION: &[u8] = b"{}[]\",:\\ 0-.enultr\x00\xff";
        for _ in 0..3000 {
            let mut data = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 3 {
                if data.is_empty() {
                    break;
                }
                let at = (next() % data.len() as u64) as usize;
                match next() % 4 {
                    0 => data[at] = next() as u8,
                    1 => data.truncate(at),
                    2 => data.insert(
                        at,
                        PUNCTUATION[(next() % PUNCTUATION.len() as u64) as usize],
                    ),
                    _ => {
                        data.remove(at);
                    }
                }
            }
            let run = std::panic::catch_unwind(|| client_frame(&data));
            if let Err(panic) = run {
                eprintln!("failing input {:?}", String::from_utf8_lossy(&data));
                std::panic::resume_unwind(panic);
            }
        }
    }
}
