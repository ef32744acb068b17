//! What `topic_pub` and `topic_sub` share: the types and the names. The two
//! are separately built programs (two crates, as far as Rust is concerned),
//! so they cannot agree on a type path: they name the types themselves
//! (`type_name`), and shmpool still checks the archived size and alignment.

#![allow(dead_code)]

/// A sensor reading, published on a topic.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct Reading {
    pub sensor: u32,
    pub celsius: f32,
    pub note: String,
}

/// A unit of work, pushed onto a queue.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct Job {
    pub id: u64,
    pub pixels: Vec<u8>,
}

/// The names both programs give the types.
pub const READING: &str = "shmpool-examples::Reading";
pub const JOB: &str = "shmpool-examples::Job";

/// Readings sent before the subscriber starts: it gets them as history.
pub const HISTORY: u32 = 4;
/// Readings sent after it subscribed.
pub const READINGS: u32 = 1000;
/// Jobs queued.
pub const JOBS: u64 = 100;

/// The `i`th reading.
pub fn reading(i: u32) -> Reading {
    Reading { sensor: i, celsius: 20.0 + (i % 10) as f32 / 2.0, note: format!("ok {i}") }
}

/// The job `id`.
pub fn job(id: u64) -> Job {
    Job { id, pixels: vec![id as u8; (id % 64) as usize] }
}
