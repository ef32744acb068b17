//! The iceoryx2 rows: publish-subscribe of `[u8]` slices over two services
//! ("ping" to the child, "pong" back), each sample loaned from the
//! publisher's shared memory, written there and read in place. The
//! subscriber is polled; in the blocking rows every sample is followed by a
//! notification on an event service, and the receiver sleeps on its listener
//! whenever the subscriber has nothing.

use std::time::{Duration, Instant};

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::event::PortFactory as EventService;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory as PubSubService;

use super::link::{self, Echoed, Link, Peer, Plan, Streamed, READY, TIMEOUT};
use crate::common::BoxResult;

pub const ROLE: &str = "oneway-iceoryx2";

/// How often a receive that has not got its sample yet looks at its
/// deadline and at the child (a `waitpid`): on this timer, not per wake-up.
const LIVENESS: Duration = Duration::from_millis(50);

type Service = ipc::Service;
/// A publish-subscribe service of byte slices.
type Bytes = PubSubService<Service, [u8], ()>;

/// One end: a publisher on the outgoing service, a subscriber on the
/// incoming one, and (blocking) a notifier and a listener beside them.
/// Fields drop in order: ports, then services, then the node.
struct IoxLink {
    publisher: Publisher<Service, [u8], ()>,
    subscriber: Subscriber<Service, [u8], ()>,
    wake: Option<(Notifier<Service>, Listener<Service>)>,
    _services: (Bytes, Bytes),
    _events: Option<(EventService<Service>, EventService<Service>)>,
    _node: Node<Service>,
    size: usize,
    template: Vec<u8>,
    /// The parent's end watches its child while it polls.
    peer: Option<Peer>,
}

/// Names of the services of one row: unique to this run and row.
fn names(base: &str) -> BoxResult<[ServiceName; 4]> {
    let name = |suffix: &str| ServiceName::new(&format!("{base}/{suffix}"));
    Ok([name("ping")?, name("pong")?, name("ping-event")?, name("pong-event")?])
}

/// The prefix of every file iceoryx2 creates for this run (in /dev/shm and
/// under /tmp/iceoryx2), so that what is left behind can be found.
pub fn file_prefix() -> String {
    format!("shmpool_bench_{}_", std::process::id())
}

fn config(prefix: &str) -> BoxResult<Config> {
    let mut config = Config::default();
    config.global.prefix = FileName::new(prefix.as_bytes())?;
    Ok(config)
}

pub(crate) fn node(prefix: &str) -> BoxResult<Node<Service>> {
    set_log_level(LogLevel::Error);
    Ok(NodeBuilder::new()
        .config(&config(prefix)?)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<Service>()?)
}

/// Removes what iceoryx2 leaves of this run: the resources of children that
/// died (after a failure), then the one file it keeps after its last node is
/// gone (the domain's node counter). Call once every row of this run has
/// ended and its child was reaped.
pub fn remove_domain() -> BoxResult<()> {
    let cleaner = node(&file_prefix())?;
    let state = cleaner.blocking_cleanup_dead_nodes(Duration::from_secs(1));
    drop(cleaner);
    if state.failed_cleanups > 0 {
        return Err(format!("iceoryx2 could not clean up {} dead nodes", state.failed_cleanups).into());
    }
    // SAFETY: the function's contract is that no other process uses the
    // domain; ours is private to this run (its prefix holds our pid), every
    // child of it has exited and been reaped (rows end with `Peer::finish`,
    // or `Peer`'s drop kills and reaps), and this process's nodes and ports
    // were dropped with their rows.
    unsafe { iceoryx2::testing::remove_global_mgmt_segment::<Service>(&config(&file_prefix())?) }?;
    Ok(())
}

impl IoxLink {
    /// The parent's end: creates the services (sized for `size` and its
    /// window), then its ports.
    fn create(base: &str, size: usize, blocking: bool) -> BoxResult<IoxLink> {
        let node = node(&file_prefix())?;
        let [ping, pong, ping_event, pong_event] = names(base)?;
        let (window, _) = link::window(size);
        let pub_sub = |name: &ServiceName| -> BoxResult<Bytes> {
            Ok(node
                .service_builder(name)
                .publish_subscribe::<[u8]>()
                .max_publishers(1)
                .max_subscribers(1)
                .max_nodes(2)
                .history_size(0)
                .subscriber_max_buffer_size(window as usize + 4)
                .enable_safe_overflow(false)
                .create()?)
        };
        let (ping, pong) = (pub_sub(&ping)?, pub_sub(&pong)?);
        let events = if blocking {
            let event = |name: &ServiceName| -> BoxResult<EventService<Service>> {
                Ok(node.service_builder(name).event().max_nodes(2).create()?)
            };
            Some((event(&ping_event)?, event(&pong_event)?))
        } else {
            None
        };
        IoxLink::ports(node, (ping, pong), events, size)
    }

    /// The child's end: opens the services the parent created.
    fn open(base: &str, prefix: &str, size: usize, blocking: bool) -> BoxResult<IoxLink> {
        let node = node(prefix)?;
        let [ping, pong, ping_event, pong_event] = names(base)?;
        let pub_sub = |name: &ServiceName| -> BoxResult<Bytes> {
            Ok(node.service_builder(name).publish_subscribe::<[u8]>().open()?)
        };
        // Ours is the other way round: we publish on pong.
        let (ping, pong) = (pub_sub(&ping)?, pub_sub(&pong)?);
        let events = if blocking {
            let event = |name: &ServiceName| -> BoxResult<EventService<Service>> {
                Ok(node.service_builder(name).event().open()?)
            };
            Some((event(&pong_event)?, event(&ping_event)?))
        } else {
            None
        };
        IoxLink::ports(node, (pong, ping), events, size)
    }

    /// Ports publishing on `services.0` and subscribing to `services.1`.
    fn ports(
        node: Node<Service>,
        services: (Bytes, Bytes),
        events: Option<(EventService<Service>, EventService<Service>)>,
        size: usize,
    ) -> BoxResult<IoxLink> {
        let publisher = services
            .0
            .publisher_builder()
            .initial_max_slice_len(size)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()?;
        let subscriber = services.1.subscriber_builder().create()?;
        let wake = match &events {
            Some((out, inc)) => Some((out.notifier_builder().create()?, inc.listener_builder().create()?)),
            None => None,
        };
        Ok(IoxLink {
            publisher,
            subscriber,
            wake,
            _services: services,
            _events: events,
            _node: node,
            size,
            template: link::template(size),
            peer: None,
        })
    }

    fn publish(&self, bytes: &[u8], seq: Option<u64>) -> BoxResult<()> {
        let sample = self.publisher.loan_slice_uninit(bytes.len())?;
        let mut sample = sample.write_from_slice(bytes);
        if let Some(seq) = seq {
            link::stamp(sample.payload_mut(), seq);
        }
        sample.send()?;
        if let Some((notifier, _)) = &self.wake {
            notifier.notify()?;
        }
        Ok(())
    }

    /// The next sample's bytes handed to `read`: polled without pause, or
    /// between sleeps on the listener. The deadline and the child's
    /// liveness are looked at on a timer (every [`LIVENESS`]), never after a
    /// wake-up: a wake-up goes straight back to the subscriber.
    fn receive<T>(&mut self, read: impl FnOnce(&[u8]) -> BoxResult<T>) -> BoxResult<T> {
        let start = Instant::now();
        let deadline = start + TIMEOUT;
        let mut next_look = start + LIVENESS;
        let mut polls = 0u32;
        loop {
            if let Some(sample) = self.subscriber.receive()? {
                return read(sample.payload());
            }
            // Straight back to the subscriber after a wake-up, and between
            // two clock reads of the polling rows.
            let again = match &self.wake {
                // Returns on notifications (taking them all) or after
                // LIVENESS at most.
                Some((_, listener)) => listener.timed_wait(|_| {}, LIVENESS)? > 0,
                // The clock is read once in 4096 polls (~a few µs).
                None => {
                    polls = polls.wrapping_add(1);
                    std::hint::spin_loop();
                    polls % 4096 != 0
                }
            };
            if again {
                continue;
            }
            let now = Instant::now();
            if now < next_look {
                continue;
            }
            next_look = now + LIVENESS;
            if now > deadline {
                return Err("iceoryx2: nothing received for 10 s".into());
            }
            if let Some(peer) = &mut self.peer {
                peer.check_alive()?;
            }
        }
    }
}

impl Link for IoxLink {
    fn send(&mut self, seq: u64) -> BoxResult<()> {
        self.publish(&self.template, Some(seq))
    }

    fn recv(&mut self) -> BoxResult<u64> {
        let size = self.size;
        self.receive(|bytes| link::check(bytes, size))
    }

    fn send_ack(&mut self, n: u64) -> BoxResult<()> {
        self.publish(&n.to_le_bytes(), None)
    }

    fn recv_ack(&mut self) -> BoxResult<u64> {
        self.receive(link::ack_of)
    }
}

/// One round with a child process (this binary as `--peer
/// oneway-iceoryx2`; see [`link::phases`]). `row` makes the services'
/// names unique to the row and round.
pub fn rows(
    size: usize,
    blocking: bool,
    plan: &Plan,
    row: usize,
    stream: bool,
) -> BoxResult<(Echoed, Option<Streamed>)> {
    let base = format!("{}/{row}", crate::common::unique_name("oneway"));
    let mut link = IoxLink::create(&base, size, blocking)?;
    let peer = Peer::spawn(ROLE, &[size.to_string(), u8::from(blocking).to_string(), base, file_prefix()])?;
    let child = peer.pid();
    link.peer = Some(peer);
    let ready = link.recv_ack()?;
    if ready != READY {
        return Err(format!("iceoryx2 child said {ready} where it was due to say it is ready").into());
    }
    let measured = link::phases(&mut link, plan, size, child, stream)?;
    link.peer.take().ok_or("iceoryx2 child lost")?.finish()?;
    Ok(measured)
}

/// The child: `SIZE BLOCKING SERVICE_NAME FILE_PREFIX`.
pub fn run_child(args: &[String]) -> BoxResult<()> {
    let size: usize = link::arg(args, 0, "size")?;
    let blocking = link::arg::<u8>(args, 1, "blocking")? != 0;
    let base: String = link::arg(args, 2, "service name")?;
    let prefix: String = link::arg(args, 3, "file prefix")?;
    let mut link = IoxLink::open(&base, &prefix, size, blocking)?;
    link.send_ack(READY)?;
    link::serve(&mut link, link::window(size).1)
}
