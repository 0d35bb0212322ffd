//! Model-based fuzz targets (after tokio's `fuzz/`): each decodes bytes into a bounded sequence
//! of operations, runs them on the real thing and checks every outcome against a plain
//! reference model. `fuzz/fuzz_targets/*.rs` are one line each calling these; the seed corpora
//! in `fuzz/corpus/` and fixed-seed random inputs also run under `cargo test`.

mod engine;
#[cfg(all(any(feature = "server", feature = "client"), not(loom)))]
mod protocol;
mod wheel;

pub use engine::{describe, engine_ops};
#[cfg(all(any(feature = "server", feature = "client"), not(loom)))]
pub use protocol::client_frame;
pub use wheel::wheel_ops;
