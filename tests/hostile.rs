//! Hostile conditions, one module per API: peers of another build, peers
//! that vanish, values larger than anything the segment holds.

#[path = "common/mod.rs"]
#[allow(dead_code)]
mod common;

#[path = "hostile/channel.rs"]
mod channel;
#[path = "hostile/logs.rs"]
mod logs;
