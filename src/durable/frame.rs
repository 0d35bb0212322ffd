//! The bytes on disk: file headers and record frames.
//!
//! A record frame is `checksum: u64 | len: u32 | payload`, little-endian. The checksum is
//! xxh3-64 over `len | payload`, seeded with the record's log position: a frame copied to
//! another place, or stale bytes left from an earlier file, do not check out where they lie,
//! and a run of zeros never does. xxh3 rather than crc32c: the crate already depends on it, it
//! hashes faster than a software crc32c, and 64 bits make a false match while scanning a
//! damaged tail for valid frames negligible (crc32c's 32 bits would match about once per 4
//! billion offsets scanned).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Bytes before a record's payload.
pub const FRAME_OVERHEAD: usize = 12;
/// Bytes of every file header.
pub const HEADER_LEN: usize = 64;
/// The on-disk format version this code writes and reads.
pub const VERSION: u16 = 1;

/// What a file holds, by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A log segment.
    Segment,
    /// A snapshot of the caller's live state.
    Snapshot,
}

impl FileKind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            FileKind::Segment => b"TETHLOG\0",
            FileKind::Snapshot => b"TETHSNP\0",
        }
    }
}

/// Header flag: the segment before this one was synced before this one was created, so a
/// damaged tail in it is corruption rather than a torn write.
pub const FLAG_PREVIOUS_SYNCED: u16 = 1;

/// A file header: who wrote the file and where its records start in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Segment or snapshot.
    pub kind: FileKind,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// The shard whose log this is.
    pub shard: u32,
    /// The log position of the first record (segment), or the position the snapshot covers
    /// up to (snapshot).
    pub first: u64,
    /// The boot id of the machine that wrote the file; zeros where unknown.
    pub boot_id: [u8; 16],
    /// The writer's fsync mode (`Fsync::code`).
    pub fsync: u8,
}

impl Header {
    /// The header's 64 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(self.kind.magic());
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&self.flags.to_le_bytes());
        h[12..16].copy_from_slice(&self.shard.to_le_bytes());
        h[16..24].copy_from_slice(&self.first.to_le_bytes());
        h[24..40].copy_from_slice(&self.boot_id);
        h[40] = self.fsync;
        let sum = xxh3_64(&h[..56]);
        h[56..64].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Reads a header; `Err` says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Header, &'static str> {
        let h = bytes
            .get(..HEADER_LEN)
            .ok_or("file shorter than its header")?;
        if u64::from_le_bytes(le8(&h[56..64])) != xxh3_64(&h[..56]) {
            return Err("header checksum mismatch");
        }
        let kind = if &h[0..8] == FileKind::Segment.magic() {
            FileKind::Segment
        } else if &h[0..8] == FileKind::Snapshot.magic() {
            FileKind::Snapshot
        } else {
            return Err("not a tether log file (bad magic)");
        };
        if u16::from_le_bytes([h[8], h[9]]) != VERSION {
            return Err("unsupported format version");
        }
        Ok(Header {
            kind,
            flags: u16::from_le_bytes([h[10], h[11]]),
            shard: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
            first: u64::from_le_bytes(le8(&h[16..24])),
            boot_id: h[24..40].try_into().unwrap_or([0; 16]),
            fsync: h[40],
        })
    }
}

fn le8(b: &[u8]) -> [u8; 8] {
    b.try_into().unwrap_or([0; 8])
}

/// Appends one framed record for log position `pos` to `out`. The caller has checked that
/// `payload` fits in a `u32`.
pub fn encode_record(out: &mut Vec<u8>, pos: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = xxh3_64_with_seed(&out[start + 8..], pos);
    out[start..start + 8].copy_from_slice(&sum.to_le_bytes());
}

/// Why a frame did not check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    /// Fewer bytes left than a frame header.
    Short,
    /// The length is over the maximum or runs past the end of the file.
    Length,
    /// The checksum does not match.
    Checksum,
}

impl BadFrame {
    /// In words, for errors and reports.
    pub fn describe(self) -> &'static str {
        match self {
            BadFrame::Short => "record cut short",
            BadFrame::Length => "record length out of range",
            BadFrame::Checksum => "record checksum mismatch",
        }
    }
}

/// Reads the frame at the start of `bytes`, which lies at log position `pos`: its payload, or
/// why it is not a valid record.
pub fn decode_record(bytes: &[u8], pos: u64, max_len: u32) -> Result<&[u8], BadFrame> {
    if bytes.len() < FRAME_OVERHEAD {
        return Err(BadFrame::Short);
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let end = FRAME_OVERHEAD + len as usize;
    if len > max_len || end > bytes.len() {
        return Err(BadFrame::Length);
    }
    let sum = u64::from_le_bytes(le8(&bytes[..8]));
    if sum != xxh3_64_with_seed(&bytes[8..end], pos) {
        return Err(BadFrame::Checksum);
    }
    Ok(&bytes[FRAME_OVERHEAD..end])
}

/// Whether any valid frame starts after offset `bad` of `body` (whose offset 0 lies at log
/// position `base`): the difference between a torn tail (nothing valid after the damage) and
/// corruption (valid records after it). Tries every offset; only runs on damaged files.
pub fn valid_frame_after(body: &[u8], bad: usize, base: u64, max_len: u32) -> bool {
    (bad + 1..body.len().saturating_sub(FRAME_OVERHEAD - 1))
        .any(|off| decode_record(&body[off..], base.wrapping_add(off as u64), max_len).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_every_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 77, b"hello");
        assert_eq!(buf.len(), FRAME_OVERHEAD + 5);
        assert_eq!(decode_record(&buf, 77, 100), Ok(&b"hello"[..]));
        assert_eq!(decode_record(&buf, 78, 100), Err(BadFrame::Checksum));
        assert_eq!(decode_record(&buf, 77, 4), Err(BadFrame::Length));
        assert_eq!(decode_record(&buf[..11], 77, 100), Err(BadFrame::Short));
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&b, 77, 100).is_err(),
                "bit {bit} flipped unnoticed"
            );
        }
    }

    #[test]
    fn zeros_are_never_a_record() {
        assert!(decode_record(&[0u8; 64], 0, 100).is_err());
        assert!(!valid_frame_after(&[0u8; 64], 0, 0, 100));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = Header {
            kind: FileKind::Segment,
            flags: FLAG_PREVIOUS_SYNCED,
            shard: 3,
            first: 1 << 40,
            boot_id: [7; 16],
            fsync: 1,
        };
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes), Ok(h));
        assert!(Header::decode(&bytes[..63]).is_err());
        for i in 0..HEADER_LEN {
            let mut b = bytes;
            b[i] ^= 0x10;
            assert!(Header::decode(&b).is_err(), "byte {i} flipped unnoticed");
        }
    }
}
