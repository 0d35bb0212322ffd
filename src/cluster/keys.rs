//! Key names and fingerprints: the only things the Rust side computes about Redis's layout
//! (the scripts build every other key from the user's hash tag).

use crate::config::DedupMode;
use crate::message::{Message, UserId};

/// The key that routes every script of `user`: its device set. Every key of the user starts
/// with the hash tag `{u:<len>:<user>}`, so all of them hash to one Cluster slot. The length
/// prefix keeps names unambiguous whatever the id holds: an id with `}` in it ends the tag
/// early (still one slot per user), and an id with `}:` in it cannot pass for another
/// user's key.
pub(super) fn route_key(user: &UserId) -> String {
    let name = user.as_str();
    format!("{{u:{}:{name}}}:devs", name.len())
}

/// The key of `user`'s limit override.
pub(super) fn limits_key(user: &UserId) -> String {
    let name = user.as_str();
    format!("{{u:{}:{name}}}:lim", name.len())
}

// Seeds that keep an id from ever matching a payload. Fixed, unlike the embedded engine's
// per-process seed: every node must compute the same fingerprint.
const ID_DOMAIN: u64 = 0x6964_5f64_6f6d_6169;
const CONTENT_DOMAIN: u64 = 0x636f_6e74_656e_7421;

/// The message's fingerprint for the user's dedup set (8 bytes), or `None` when the mode
/// ignores it. Per user by construction: each user has its own set.
pub(super) fn fingerprint(mode: DedupMode, message: &Message) -> Option<[u8; 8]> {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    let fp = match (mode, message.id()) {
        (DedupMode::Off, _) | (DedupMode::Ids, None) => return None,
        (_, Some(id)) => xxh3_64_with_seed(id.as_str().as_bytes(), ID_DOMAIN),
        (DedupMode::IdsAndContent, None) => xxh3_64_with_seed(message.payload(), CONTENT_DOMAIN),
    };
    Some(fp.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tag_per_user_and_no_two_users_share_a_key() {
        let a = UserId::new("a}:devs").unwrap();
        let b = UserId::new("a").unwrap();
        assert_eq!(route_key(&b), "{u:1:a}:devs");
        assert_ne!(route_key(&a), route_key(&b));
        assert!(route_key(&a).starts_with("{u:7:a}"));
    }

    #[test]
    fn fingerprints_by_mode() {
        let with_id = Message::new("x").with_id("1");
        let bare = Message::new("1");
        assert_eq!(fingerprint(DedupMode::Off, &with_id), None);
        assert_eq!(fingerprint(DedupMode::Ids, &bare), None);
        assert_eq!(
            fingerprint(DedupMode::Ids, &with_id),
            fingerprint(DedupMode::IdsAndContent, &Message::new("y").with_id("1"))
        );
        assert!(fingerprint(DedupMode::IdsAndContent, &bare).is_some());
        assert_ne!(
            fingerprint(DedupMode::IdsAndContent, &bare),
            fingerprint(DedupMode::Ids, &with_id),
            "an id never matches a payload"
        );
    }
}
