//! Named segments in `/dev/shm`: listing them and removing stale ones.

use std::io;
use std::time::Duration;

use super::{Segment, SegmentError, NAME_PREFIX};
use crate::sys::{process, shm};

/// What is known of a named segment in `/dev/shm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSegment {
    /// Its name (without the `shmpool.` prefix).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The pid that created it, if its header is readable.
    pub creator: Option<u32>,
    /// Whether that creator is alive.
    pub creator_alive: bool,
    /// Processes that map it now.
    pub attached: Vec<u32>,
}

impl NamedSegment {
    /// Left behind: its creator is dead (or its header unreadable) and no
    /// process maps it.
    pub fn is_stale(&self) -> bool {
        self.attached.is_empty() && (!self.creator_alive || shared_by_name(&self.name))
    }
}

/// Topics and queues belong to all their members, not to their creator:
/// one that no process maps is left behind, whoever created it.
fn shared_by_name(name: &str) -> bool {
    name.starts_with("topic.") || name.starts_with("queue.")
}

/// Every shmpool segment in `/dev/shm`, with its creator and who maps it.
pub fn list_named() -> Result<Vec<NamedSegment>, SegmentError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/dev/shm")? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_prefix(NAME_PREFIX)) else { continue };
        if let Ok(info) = describe(name) {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn describe(name: &str) -> Result<NamedSegment, SegmentError> {
    let path = format!("{NAME_PREFIX}{name}");
    let file = shm::shm_open_existing(&path)?;
    let size = file.metadata()?.len();
    let creator = match Segment::from_file(file) {
        Ok(seg) => Some(seg.creator_pid()),
        Err(_) => None,
    };
    Ok(NamedSegment {
        name: name.to_owned(),
        size,
        creator,
        creator_alive: creator.is_some_and(process::is_alive),
        attached: process::pids_mapping(&format!("/dev/shm/{path}")),
    })
}

/// Removes every stale shmpool segment (creator dead, mapped by nobody)
/// from `/dev/shm`; returns their names.
pub fn cleanup_stale() -> Result<Vec<String>, SegmentError> {
    let mut removed = Vec::new();
    for seg in list_named()? {
        if seg.is_stale() && remove_if_stale(&seg.name)? {
            removed.push(seg.name);
        }
    }
    Ok(removed)
}

/// Removes `/dev/shm/shmpool.<name>` if it is stale: its creator is dead
/// and no process maps it (a segment still being created, whose header is
/// not readable yet, is left alone unless it is over ten seconds old).
/// Says whether the name is free now.
pub(super) fn remove_if_stale(name: &str) -> Result<bool, SegmentError> {
    let path = format!("{NAME_PREFIX}{name}");
    let file = match shm::shm_open_existing(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    let old = file
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(10)));
    let checked =
        file.metadata().map(|m| (std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)))?;
    let creator_dead = match Segment::from_file(file) {
        Ok(seg) => !process::is_alive(seg.creator_pid()),
        Err(SegmentError::NotReady) | Err(SegmentError::Truncated { .. }) => old,
        Err(_) => false,
    };
    let stale = (creator_dead || shared_by_name(name)) && process::pids_mapping(&format!("/dev/shm/{path}")).is_empty();
    // Unlink only the very file that was checked: another process may have
    // replaced the name meanwhile (a service restarting).
    let same = std::fs::metadata(format!("/dev/shm/{path}"))
        .is_ok_and(|m| (std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)) == checked);
    if stale && !same {
        return Ok(false);
    }
    if stale {
        match shm::shm_unlink(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(stale)
}
