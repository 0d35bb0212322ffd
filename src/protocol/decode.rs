//! Decoding client frames and HTTP publish bodies: one pass over each JSON object, values kept
//! as raw text until a frame type asks for them (see the module docs of `protocol` for the
//! rules).

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::error::{
    invalid, missing, FrameError, FrameErrorKind, EXPECT_BOOL, EXPECT_OBJECT, EXPECT_PRIORITY,
    EXPECT_STRING, EXPECT_U32, EXPECT_U64,
};
use super::frames::{ClientFrame, PublishRequest, RawJson, WireResume, WireStreamPart};
use super::MAX_REF_BYTES;
use crate::Priority;

/// Decodes the text of a client frame.
///
/// `data` is copied once, into the message payload. See the module docs for the rules.
///
/// ```
/// use tether::protocol::{decode_client_frame, ClientFrame};
///
/// assert_eq!(decode_client_frame(r#"{"type":"ping","sent_at":17}"#), Ok(ClientFrame::Ping));
/// let err = decode_client_frame("ping").unwrap_err();
/// assert_eq!(err.code(), "invalid_json");
/// assert!(err.is_protocol_violation());
/// ```
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    decode_frame(text, Source::Copy)
}

/// Decodes a client frame held in `Bytes` (as tungstenite's `Utf8Bytes` converts to), sharing
/// the frame's buffer as the payload instead of copying `data` when `data` is at least half
/// the frame.
///
/// The half rule bounds what sharing costs: the engine counts a message's payload length
/// against the user's and its own memory limits, while a shared payload keeps the whole frame
/// alive; a frame with a small `data` and a large ignored field would otherwise hold much more
/// memory than it is charged for.
///
/// ```
/// use bytes::Bytes;
/// use tether::protocol::{decode_client_frame_shared, ClientFrame};
///
/// let frame = Bytes::from_static(br#"{"type":"publish","to":"a","data":"a long enough payload"}"#);
/// let ClientFrame::Publish(p) = decode_client_frame_shared(&frame).unwrap() else { panic!() };
/// assert_eq!(p.data.as_bytes(), br#""a long enough payload""#);
/// assert_eq!(decode_client_frame_shared(&Bytes::from_static(b"\xff")).unwrap_err().code(), "invalid_utf8");
/// ```
pub fn decode_client_frame_shared(frame: &Bytes) -> Result<ClientFrame, FrameError> {
    let text = std::str::from_utf8(frame).map_err(|_| FrameErrorKind::InvalidUtf8)?;
    decode_frame(text, Source::Shared(frame))
}

/// Decodes the body of `POST /api/publish`: the publish fields, with no `type`.
///
/// ```
/// use tether::protocol::decode_publish_request;
///
/// let request = decode_publish_request(r#"{"to":"alice","data":null}"#).unwrap();
/// assert_eq!(request.data.as_bytes(), b"null");
/// assert_eq!(decode_publish_request(r#"{"to":"alice"}"#).unwrap_err().field(), Some("data"));
/// ```
pub fn decode_publish_request(body: &str) -> Result<PublishRequest, FrameError> {
    let fields = parse_object(body)?;
    decode_publish(&fields, Source::Copy, Echo::No)
}

/// Decodes the body of `POST /api/publish_batch`: `{"messages":[<publish>, ...]}`.
///
/// The outer error is for a body that is not such an object; each message then decodes on its
/// own, so the server can accept the good ones and report the others by position.
///
/// ```
/// use tether::protocol::decode_publish_batch;
///
/// let batch = decode_publish_batch(r#"{"messages":[{"to":"a","data":1},{"to":"b"}]}"#).unwrap();
/// assert!(batch[0].is_ok());
/// assert_eq!(batch[1].as_ref().unwrap_err().field(), Some("data"));
/// assert_eq!(decode_publish_batch("{}").unwrap_err().field(), Some("messages"));
/// ```
pub fn decode_publish_batch(
    body: &str,
) -> Result<Vec<Result<PublishRequest, FrameError>>, FrameError> {
    let fields = parse_object(body)?;
    let raw = fields.required(Key::Messages, "messages")?;
    let items: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| invalid("messages", "expected an array of objects"))?;
    Ok(items
        .into_iter()
        .map(|item| {
            let fields = parse_nested(item, "messages", "expected an array of objects")?;
            decode_publish(&fields, Source::Copy, Echo::No)
        })
        .collect())
}

/// Where a payload's bytes come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Copy them out of the text.
    Copy,
    /// The text is this buffer: share it when that is worth it.
    Shared(&'a Bytes),
}

impl Source<'_> {
    fn payload(self, json: &str) -> Bytes {
        if let Source::Shared(frame) = self {
            if json.len() >= frame.len() / 2 {
                // `json` borrows from `frame` by construction; checking the address range
                // anyway keeps a mistake from ever being a panic or a wrong slice.
                let start = (json.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
                if start <= frame.len() && json.len() <= frame.len() - start {
                    return frame.slice(start..start + json.len());
                }
            }
        }
        Bytes::copy_from_slice(json.as_bytes())
    }
}

#[derive(Clone, Copy)]
enum FrameType {
    Connect,
    Ack,
    Publish,
    Ping,
}

fn decode_frame(text: &str, source: Source<'_>) -> Result<ClientFrame, FrameError> {
    let fields = parse_object(text)?;
    match frame_type(fields.required(Key::Type, "type")?)? {
        FrameType::Connect => {
            let token = read_string(fields.required(Key::Token, "token")?, "token")?;
            let resume = match fields.optional(Key::Resume, "resume")? {
                None => None,
                Some(raw) => {
                    let resume = parse_nested(raw, "resume", EXPECT_OBJECT)?;
                    let epoch = resume.required(Key::Epoch, "resume.epoch")?;
                    let seq = resume.required(Key::Seq, "resume.seq")?;
                    Some(WireResume {
                        epoch: read_string(epoch, "resume.epoch")?,
                        seq: read_u64(seq, "resume.seq")?,
                    })
                }
            };
            let device = match fields.optional(Key::Device, "device")? {
                None => None,
                Some(raw) => Some(read_string(raw, "device")?),
            };
            Ok(ClientFrame::Connect {
                token,
                resume,
                device,
            })
        }
        FrameType::Ack => Ok(ClientFrame::Ack {
            seq: read_u64(fields.required(Key::Seq, "seq")?, "seq")?,
        }),
        FrameType::Publish => decode_publish(&fields, source, Echo::Yes).map(ClientFrame::Publish),
        FrameType::Ping => Ok(ClientFrame::Ping),
    }
}

fn frame_type(raw: &RawValue) -> Result<FrameType, FrameError> {
    // The unescaped spellings first, so that the common frame allocates nothing here.
    let owned;
    let name = match raw.get() {
        "\"connect\"" => "connect",
        "\"ack\"" => "ack",
        "\"publish\"" => "publish",
        "\"ping\"" => "ping",
        _ => {
            owned = read_string(raw, "type")?;
            owned.as_str()
        }
    };
    match name {
        "connect" => Ok(FrameType::Connect),
        "ack" => Ok(FrameType::Ack),
        "publish" => Ok(FrameType::Publish),
        "ping" => Ok(FrameType::Ping),
        other => {
            // Cut what is echoed back, so a huge type cannot make a huge error frame.
            let mut end = other.len().min(64);
            while !other.is_char_boundary(end) {
                end -= 1;
            }
            Err(FrameErrorKind::UnknownType {
                name: other[..end].to_owned(),
            }
            .into())
        }
    }
}

/// Whether the publish's `ref` will be echoed back (in WebSocket replies; HTTP answers by
/// position and ignores it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Echo {
    Yes,
    No,
}

fn decode_publish(
    fields: &Fields<'_>,
    source: Source<'_>,
    echo: Echo,
) -> Result<PublishRequest, FrameError> {
    // `ref` first, so that every later error can carry it back to the client.
    let reference = match fields.optional(Key::Ref, "ref")? {
        Some(raw) => Some(read_string(raw, "ref")?),
        None => None,
    };
    if echo == Echo::Yes && reference.as_ref().is_some_and(|r| r.len() > MAX_REF_BYTES) {
        // Not echoed back: that is what the bound is for.
        return Err(invalid("ref", "longer than 256 bytes"));
    }
    match decode_publish_fields(fields, source) {
        Ok(mut request) => {
            request.reference = reference;
            Ok(request)
        }
        Err(err) => Err(err.with_reference(reference)),
    }
}

fn decode_publish_fields(
    fields: &Fields<'_>,
    source: Source<'_>,
) -> Result<PublishRequest, FrameError> {
    let to = read_string(fields.required(Key::To, "to")?, "to")?;
    // Not `required`: `null` is a payload like any other.
    let data = fields
        .get(Key::Data, "data")?
        .ok_or_else(|| missing("data"))?;
    let priority = match fields.optional(Key::Priority, "priority")? {
        None => Priority::Normal,
        Some(raw) => read_priority(raw)?,
    };
    let ttl_ms = match fields.optional(Key::TtlMs, "ttl_ms")? {
        None => None,
        Some(raw) => Some(read_u64(raw, "ttl_ms")?),
    };
    let id = match fields.optional(Key::Id, "id")? {
        None => None,
        Some(raw) => Some(read_string(raw, "id")?),
    };
    let stream = match fields.optional(Key::Stream, "stream")? {
        None => None,
        Some(raw) => {
            let stream = parse_nested(raw, "stream", EXPECT_OBJECT)?;
            let id = read_string(stream.required(Key::Id, "stream.id")?, "stream.id")?;
            let part = read_u32(stream.required(Key::Part, "stream.part")?, "stream.part")?;
            let last = match stream.optional(Key::Last, "stream.last")? {
                None => false,
                Some(raw) => read_bool(raw, "stream.last")?,
            };
            Some(WireStreamPart { id, part, last })
        }
    };
    Ok(PublishRequest {
        to,
        data: RawJson(source.payload(data.get())),
        priority,
        ttl_ms,
        id,
        stream,
        reference: None,
    })
}

fn read_string(raw: &RawValue, field: &'static str) -> Result<String, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, EXPECT_STRING))
}

fn read_u64(raw: &RawValue, field: &'static str) -> Result<u64, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, EXPECT_U64))
}

fn read_u32(raw: &RawValue, field: &'static str) -> Result<u32, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, EXPECT_U32))
}

fn read_bool(raw: &RawValue, field: &'static str) -> Result<bool, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, EXPECT_BOOL))
}

fn read_priority(raw: &RawValue) -> Result<Priority, FrameError> {
    let name = read_string(raw, "priority")?;
    Priority::ALL
        .into_iter()
        .find(|p| p.as_str() == name)
        .ok_or_else(|| invalid("priority", EXPECT_PRIORITY))
}

/// Parses a whole frame or body into its top-level fields.
fn parse_object(text: &str) -> Result<Fields<'_>, FrameError> {
    serde_json::from_str(text).map_err(|e| {
        // Values are captured raw and keys are always strings, so the only data error left
        // is the top level not being an object.
        match e.classify() {
            Category::Data => FrameErrorKind::NotAnObject.into(),
            _ => FrameErrorKind::InvalidJson {
                detail: e.to_string(),
            }
            .into(),
        }
    })
}

/// Parses a field's value, already known to be valid JSON, as an object.
fn parse_nested<'a>(
    raw: &'a RawValue,
    field: &'static str,
    reason: &'static str,
) -> Result<Fields<'a>, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, reason))
}

/// Every field name any frame or nested object of the protocol uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Key {
    Type,
    Token,
    Resume,
    Device,
    Epoch,
    Seq,
    To,
    Data,
    Priority,
    TtlMs,
    Id,
    Ref,
    Stream,
    Part,
    Last,
    Messages,
}

const KEY_COUNT: usize = Key::Messages as usize + 1;

impl Key {
    fn from_name(name: &str) -> Option<Key> {
        Some(match name {
            "type" => Key::Type,
            "token" => Key::Token,
            "resume" => Key::Resume,
            "device" => Key::Device,
            "epoch" => Key::Epoch,
            "seq" => Key::Seq,
            "to" => Key::To,
            "data" => Key::Data,
            "priority" => Key::Priority,
            "ttl_ms" => Key::TtlMs,
            "id" => Key::Id,
            "ref" => Key::Ref,
            "stream" => Key::Stream,
            "part" => Key::Part,
            "last" => Key::Last,
            "messages" => Key::Messages,
            _ => return None,
        })
    }
}

/// The known fields of one JSON object, each as its raw JSON text borrowed from the input.
///
/// One pass over the object, no allocation: values stay unparsed until a frame type asks
/// for them, so `data` is never parsed into a tree, and unknown fields are skipped.
/// Duplicates are only noted: they are an error only for a field the frame type reads.
struct Fields<'a> {
    values: [Option<&'a RawValue>; KEY_COUNT],
    duplicates: u32,
}

impl<'a> Fields<'a> {
    /// The field's raw value (`null` included), or `None` if absent.
    fn get(&self, key: Key, field: &'static str) -> Result<Option<&'a RawValue>, FrameError> {
        if self.duplicates & (1 << key as u32) != 0 {
            return Err(FrameErrorKind::DuplicateField { field }.into());
        }
        Ok(self.values[key as usize])
    }

    /// The field's raw value, or `None` if absent or `null`.
    fn optional(&self, key: Key, field: &'static str) -> Result<Option<&'a RawValue>, FrameError> {
        Ok(self.get(key, field)?.filter(|raw| raw.get() != "null"))
    }

    /// The field's raw value; `missing_field` if absent or `null`.
    fn required(&self, key: Key, field: &'static str) -> Result<&'a RawValue, FrameError> {
        self.optional(key, field)?.ok_or_else(|| missing(field))
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields {
            values: [None; KEY_COUNT],
            duplicates: 0,
        };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Some(key) => {
                    let value: &'de RawValue = map.next_value()?;
                    let slot = &mut fields.values[key as usize];
                    if slot.is_some() {
                        fields.duplicates |= 1 << key as u32;
                    } else {
                        *slot = Some(value);
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// Reads a map key as a [`Key`] (`None` for a field this version does not know) without
/// allocating, escaped keys included.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<Key>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Option<Key>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Key::from_name(name))
    }
}
