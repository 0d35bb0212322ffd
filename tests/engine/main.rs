//! The engine embedded in a program: every integration test that needs no network, in one
//! binary (one link of the crate instead of one per file).

mod common;

mod bad_input;
mod breaker;
mod budget;
mod concurrency;
mod dedup;
mod delivery;
mod devices;
mod durable_log;
mod layout;
mod metrics;
mod overflow;
mod queuing;
mod shutdown;
mod streams;
mod time;
