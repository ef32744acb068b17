//! Hostile use: values too big for the segment, timeouts too long to add,
//! and the like. Every call ends in a value or a typed error, and the thing
//! called stays usable.

#[path = "hostile/pool.rs"]
mod pool;
