#![doc = "tether"]
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(dead_code)]

mod loom;
mod park;
pub mod ring;
