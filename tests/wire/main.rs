//! The network front end and its clients, tested over real sockets on 127.0.0.1: every test
//! that needs a server, in one binary (one link of hyper and tungstenite instead of one per
//! file). `harness` starts servers and speaks the protocol frame by frame.
#![cfg(feature = "server")]

mod harness;

mod auth;
mod binary;
mod breaker;
mod client;
mod dashboard_browser;
mod devices;
mod front;
mod limits;
mod load;
mod metrics;
mod queuing;
mod resume;
mod shutdown;
mod tls;
