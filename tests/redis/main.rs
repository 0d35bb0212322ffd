//! The Redis mailbox store (`tether::cluster`) against a real redis-server: every semantic of
//! the store, one server per test.

mod common;
mod server;

mod smoke;
