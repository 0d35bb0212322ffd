//! The Redis mailbox store (`tether::cluster`) against a real redis-server: every semantic of
//! the store, one server per test (tests/redis/server.rs starts and kills it).

mod common;
mod server;

mod bad_input;
mod batch;
mod cluster;
mod dedup;
mod devices;
mod fencing;
mod health;
mod overflow;
mod queuing;
mod restart;
mod resume;
mod time;
