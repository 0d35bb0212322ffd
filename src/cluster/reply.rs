//! Reading script replies: flat arrays of integers and strings, read front to back. A reply
//! of an unexpected shape is a typed error, never a panic.

use bytes::Bytes;
use redis::Value;

use super::StoreError;
use crate::message::{Delivery, Message, Priority};

/// The fields of one script reply, in order.
pub(super) struct Reply {
    items: std::vec::IntoIter<Value>,
}

const SHAPE: &str = "a field is missing or of the wrong type";

impl Reply {
    pub(super) fn new(value: Value) -> Result<Self, StoreError> {
        match value {
            Value::Array(items) => Ok(Self {
                items: items.into_iter(),
            }),
            _ => Err(StoreError::Reply("not an array")),
        }
    }

    pub(super) fn int(&mut self) -> Result<i64, StoreError> {
        match self.items.next() {
            Some(Value::Int(n)) => Ok(n),
            _ => Err(StoreError::Reply(SHAPE)),
        }
    }

    pub(super) fn u64(&mut self) -> Result<u64, StoreError> {
        u64::try_from(self.int()?).map_err(|_| StoreError::Reply("a negative count"))
    }

    pub(super) fn flag(&mut self) -> Result<bool, StoreError> {
        Ok(self.int()? != 0)
    }

    pub(super) fn bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        match self.items.next() {
            Some(Value::BulkString(b)) => Ok(b),
            _ => Err(StoreError::Reply(SHAPE)),
        }
    }

    pub(super) fn string(&mut self) -> Result<String, StoreError> {
        String::from_utf8(self.bytes()?).map_err(|_| StoreError::Reply("a name is not UTF-8"))
    }

    /// A string where `''` means none.
    pub(super) fn name(&mut self) -> Result<Option<String>, StoreError> {
        Ok(Some(self.string()?).filter(|s| !s.is_empty()))
    }

    /// An enqueue target: a device name, or the integer 0 for the mailbox before any device.
    pub(super) fn target(&mut self) -> Result<Option<String>, StoreError> {
        match self.items.next() {
            Some(Value::Int(0)) => Ok(None),
            Some(Value::BulkString(b)) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| StoreError::Reply("a name is not UTF-8")),
            _ => Err(StoreError::Reply(SHAPE)),
        }
    }

    /// A count followed by that many deliveries (seq, record).
    pub(super) fn deliveries(&mut self) -> Result<Vec<Delivery>, StoreError> {
        let n = self.u64()?;
        // The count comes from the reply itself; cap the preallocation by what is there.
        let mut out = Vec::with_capacity((n as usize).min(self.items.len() / 2));
        for _ in 0..n {
            let seq = self.u64()?;
            out.push(Delivery::new(seq, record(self.bytes()?)?));
        }
        Ok(out)
    }
}

/// A stored record, `<priority>,<deadline>,<id length>;<id><payload>`, as the message it
/// was. The payload is a view of the reply's buffer, not a copy.
pub(super) fn record(raw: Vec<u8>) -> Result<Message, StoreError> {
    const BAD: StoreError = StoreError::Reply("a malformed record");
    let head_end = raw.iter().position(|&b| b == b';').ok_or(BAD)?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| BAD)?;
    let mut fields = head.split(',');
    let (Some(p), Some(_deadline), Some(id_len), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(BAD);
    };
    let priority = match p {
        "0" => Priority::Critical,
        "1" => Priority::High,
        "2" => Priority::Normal,
        "3" => Priority::Low,
        _ => return Err(BAD),
    };
    let id_len: usize = id_len.parse().map_err(|_| BAD)?;
    let id_end = head_end
        .checked_add(1 + id_len)
        .filter(|&e| e <= raw.len())
        .ok_or(BAD)?;
    let id = std::str::from_utf8(&raw[head_end + 1..id_end])
        .map_err(|_| BAD)?
        .to_owned();
    let payload = Bytes::from(raw).slice(id_end..);
    let message = Message::new(payload).with_priority(priority);
    Ok(if id.is_empty() {
        message
    } else {
        message.with_id(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_errors() {
        let m = record(b"1,1700000000000,2;idhello".to_vec()).unwrap();
        assert_eq!(m.priority(), Priority::High);
        assert_eq!(m.id().unwrap().as_str(), "id");
        assert_eq!(&m.payload()[..], b"hello");
        let bare = record(b"3,,0;".to_vec()).unwrap();
        assert!(bare.id().is_none() && bare.payload().is_empty());
        for bad in [&b"9,,0;x"[..], b"1,,5;ab", b"1,,0", b"1,0;x", b"1,,x;"] {
            assert!(record(bad.to_vec()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn short_or_mistyped_replies_are_errors() {
        let mut r = Reply::new(Value::Array(vec![Value::Int(1)])).unwrap();
        assert_eq!(r.int().unwrap(), 1);
        assert!(r.int().is_err());
        assert!(Reply::new(Value::Nil).is_err());
        let mut r = Reply::new(Value::Array(vec![Value::Int(-1)])).unwrap();
        assert!(r.u64().is_err());
        let mut r = Reply::new(Value::Array(vec![Value::Int(5), Value::Int(1)])).unwrap();
        assert!(r.deliveries().is_err(), "a count larger than what follows");
    }
}
