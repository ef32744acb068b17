//! Hostile input, one module per API: values larger than anything the
//! segment holds, timeouts too long to add, peers of another build, peers
//! that vanish, handles used twice, garbage frames, floods of log records.
//! Every call ends in a value or a typed error, nothing hangs, and the thing
//! called stays usable.

#[path = "common/capture.rs"]
mod capture;
#[path = "common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "common/watchdog.rs"]
mod watchdog;

#[path = "hostile/buffer.rs"]
mod buffer;
#[path = "hostile/channel.rs"]
mod channel;
#[path = "hostile/logs.rs"]
mod logs;
#[path = "hostile/pool.rs"]
mod pool;
#[path = "hostile/service.rs"]
mod service;
