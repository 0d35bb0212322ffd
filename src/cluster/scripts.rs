//! The store's Lua scripts, compiled into the binary. Each is the shared prelude
//! (`lua/common.lua`) followed by one operation; redis-rs calls it by SHA and loads it when
//! Redis answers NOSCRIPT (after a restart, or on a node that never saw it).

use redis::Script;

const COMMON: &str = include_str!("lua/common.lua");

/// One script per operation that changes a mailbox, and one that reads it.
pub(super) struct Scripts {
    pub(super) enqueue: Script,
    pub(super) attach: Script,
    pub(super) fill: Script,
    pub(super) ack: Script,
    pub(super) detach: Script,
    pub(super) inspect: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_common = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        Self {
            enqueue: with_common(include_str!("lua/enqueue.lua")),
            attach: with_common(include_str!("lua/attach.lua")),
            fill: with_common(include_str!("lua/fill.lua")),
            ack: with_common(include_str!("lua/ack.lua")),
            detach: with_common(include_str!("lua/detach.lua")),
            inspect: with_common(include_str!("lua/inspect.lua")),
        }
    }

    pub(super) fn all(&self) -> [&Script; 6] {
        [
            &self.enqueue,
            &self.attach,
            &self.fill,
            &self.ack,
            &self.detach,
            &self.inspect,
        ]
    }
}
