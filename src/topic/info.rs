//! What `shmpool-admin list` shows of a topic or queue: its type and the
//! processes taking part, read from its header.

use std::sync::atomic::Ordering;

use super::layout::{self, Header, DIR_KIND, FREE, KIND_QUEUE, MAGIC};
use super::type_label;
use crate::segment::Segment;
use crate::sys::process;

/// A topic's or queue's type and participants, as its header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `"topic"` or `"queue"`.
    pub kind: &'static str,
    /// The type it carries (name, archived size and alignment).
    pub type_label: String,
    /// Live member processes.
    pub members: Vec<u32>,
    /// Pids of live publishers (producers).
    pub publishers: Vec<u32>,
    /// Pids of live subscribers (consumers), each with the samples queued
    /// for it (topics) and those it lost ([`Overflow::DropOldest`](super::Overflow)).
    pub subscribers: Vec<(u32, usize, u64)>,
    /// Queues: items queued.
    pub queued: u64,
}

/// The summary of the topic or queue in the segment `segment` (a name as
/// [`crate::list_named`] gives it: `topic.<name>` or `queue.<name>`);
/// `None` if it holds none.
pub fn describe(segment: &str) -> Option<Summary> {
    if !(segment.starts_with("topic.") || segment.starts_with("queue.")) {
        return None;
    }
    let seg = Segment::open(segment).ok()?;
    seg.keep_name();
    let (block, kind, _) = seg.lookup("topic").ok()??;
    if kind != DIR_KIND {
        return None;
    }
    let h = seg.get::<Header>(block.offset).ok()?;
    if h.magic.load(Ordering::Acquire) != MAGIC {
        return None;
    }
    let live = |pid: u32| pid != 0 && process::is_alive(pid);
    let queue = h.kind.load(Ordering::Relaxed) == KIND_QUEUE;
    let max = (h.max_subscribers.load(Ordering::Relaxed) as usize).min(layout::MAX_SUBSCRIBERS);
    let subscribers = h
        .subscribers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state.load(Ordering::Relaxed) != FREE && live(s.pid.load(Ordering::Relaxed)))
        .map(|(i, s)| {
            let pending = if queue || i >= max {
                0
            } else {
                crate::ring::Ring::open(&seg, s.ring.load(Ordering::Relaxed)).map_or(0, |r| r.len())
            };
            (s.pid.load(Ordering::Relaxed), pending, s.missed.load(Ordering::Relaxed))
        })
        .collect();
    Some(Summary {
        kind: if queue { "queue" } else { "topic" },
        type_label: type_label(
            &h.type_name(),
            h.type_size.load(Ordering::Relaxed),
            h.type_align.load(Ordering::Relaxed),
        ),
        members: h.members.iter().map(|m| m.load(Ordering::Relaxed)).filter(|&p| live(p)).collect(),
        publishers: h.publishers.iter().map(|p| p.pid.load(Ordering::Relaxed)).filter(|&p| live(p)).collect(),
        subscribers,
        queued: h.queued.load(Ordering::Relaxed),
    })
}
