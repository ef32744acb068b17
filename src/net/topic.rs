//! Topics across hosts: a bridge carries a topic's samples between this
//! host's shared-memory topic and the network.
//!
//! One process per host and topic is the bridge (elected in the topic's
//! header; another process's bridge takes over when it dies): it
//! subscribes to the local topic (dropping its oldest sample if the
//! network falls behind, so local publishers never wait on it) and
//! publishes each sample that was published on this host to the key
//! `shmpool/topic/<name>`; samples from other hosts arrive there, are
//! checked (the type's fingerprint, then the archive, once copied into a
//! new sample of the local topic: 16-aligned) and published there marked
//! as from the network, so that no bridge sends them out again. Local subscribers
//! stay zero-copy; every frame is authenticated by the session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{CallbackSubscription, NetError, Session};
use crate::topic::{Overflow, Payload, Topic, TopicError};

/// How long a bridge waits on the local topic before it looks up.
const SLICE: Duration = Duration::from_millis(50);
/// How long a sample from the network may wait for room locally.
const LOCAL_WAIT: Duration = Duration::from_secs(1);

/// Counts of a bridge's work.
#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    /// From the network, refused: another type, or an invalid archive.
    refused: AtomicU64,
    /// From the network, not published locally (no room in time).
    lost: AtomicU64,
}

/// A topic's bridge to the network; stops when dropped.
pub struct TopicBridge {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    out: Option<JoinHandle<()>>,
    _in: CallbackSubscription,
}

impl std::fmt::Debug for TopicBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicBridge").field("stats", &self.stats).finish()
    }
}

impl TopicBridge {
    /// Samples this process sent to the network.
    pub fn sent(&self) -> u64 {
        self.stats.sent.load(Ordering::Relaxed)
    }

    /// Samples from the network published into the local topic.
    pub fn received(&self) -> u64 {
        self.stats.received.load(Ordering::Relaxed)
    }

    /// Samples from the network refused (another type, an invalid archive)
    /// or lost (no room in the local topic within a second).
    pub fn dropped(&self) -> u64 {
        self.stats.refused.load(Ordering::Relaxed) + self.stats.lost.load(Ordering::Relaxed)
    }
}

impl Drop for TopicBridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.out.take() {
            let _ = t.join();
        }
    }
}

/// Bridges `topic` to the network through `session`: samples published on
/// this host reach the same topic on every connected host, and theirs reach
/// this host's subscribers.
pub fn bridge<T: Payload>(topic: &Topic<T>, session: &Session) -> Result<TopicBridge, NetError> {
    let key = format!("shmpool/topic/{}", topic.name());
    let fingerprint = topic.type_fingerprint();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let active = Arc::new(AtomicBool::new(false));
    let publisher = topic.publisher().map_err(topic_err)?;
    let me = session.sender();
    let (inbound_stats, inbound_active) = (Arc::clone(&stats), Arc::clone(&active));
    // Only other sessions' frames: zenoh would hand this session's own
    // (each sample this bridge sends) back to it, to be checked and copied
    // before being dropped below.
    let inbound = session.subscribe_remote_with(&key, move |frame| {
        if frame.sender() == me || !inbound_active.load(Ordering::Acquire) {
            return;
        }
        let payload = frame.payload();
        let Some((fp, value)) = payload.split_first_chunk::<8>() else {
            inbound_stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if u64::from_le_bytes(*fp) != fingerprint {
            inbound_stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Network payloads arrive unaligned: copied into the sample (one
        // copy), validated there, published only if valid.
        match publisher.send_from_network(value, LOCAL_WAIT) {
            Ok(_) => inbound_stats.received.fetch_add(1, Ordering::Relaxed),
            Err(TopicError::Invalid(_)) => inbound_stats.refused.fetch_add(1, Ordering::Relaxed),
            Err(_) => inbound_stats.lost.fetch_add(1, Ordering::Relaxed),
        };
    })?;
    let sub = topic.subscriber_with(Overflow::DropOldest).map_err(topic_err)?;
    let out_publisher = session.publisher(&key)?;
    let (topic, stop2, stats2) = (topic.clone(), Arc::clone(&stop), Arc::clone(&stats));
    let out = std::thread::Builder::new()
        .name("shmpool-bridge".into())
        .spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                if !active.load(Ordering::Acquire) {
                    if topic.claim_bridge() {
                        active.store(true, Ordering::Release);
                    } else {
                        // Another process bridges this host; take over if it dies.
                        while sub.try_recv().is_ok() {}
                        std::thread::sleep(SLICE);
                        continue;
                    }
                }
                match sub.recv_timeout(SLICE) {
                    Ok(sample) if !sample.came_from_network() => {
                        // Sealed straight from the sample: one copy, into the frame.
                        let sent = out_publisher.publish_parts(&[&fingerprint.to_le_bytes(), sample.bytes()]);
                        drop(sample);
                        match sent {
                            Ok(()) => stats2.sent.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                log::warn!("shmpool: a topic sample could not go out to the network: {e}");
                                0
                            }
                        };
                    }
                    Ok(_) | Err(TopicError::Timeout) => {}
                    Err(e) => log::warn!("shmpool: the topic bridge could not receive: {e}"),
                }
            }
            topic.release_bridge();
        })
        .map_err(|e| NetError::Open(format!("starting the topic bridge: {e}")))?;
    Ok(TopicBridge { stop, stats, out: Some(out), _in: inbound })
}

fn topic_err(e: TopicError) -> NetError {
    NetError::Open(format!("the topic: {e}"))
}
