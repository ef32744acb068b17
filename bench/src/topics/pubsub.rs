//! The pub-sub rows: one publisher (this process) and N subscribers, each a
//! child process (this binary as `--peer topics-sub`), over a shmpool
//! `Topic<Bytes>` or an iceoryx2 publish-subscribe service of `[u8]`.
//!
//! Every message is the one-way section's payload (`link::template`),
//! written into a loaned sample and stamped (head and tail) with the
//! publisher's CLOCK_MONOTONIC reading taken before the loan: a subscriber's
//! latency sample is its own clock reading once it has the sample and has
//! checked it, minus the stamp. Two phases:
//!
//! 1. Latency: one message at a time; the publisher sends the next one only
//!    when every subscriber has acknowledged the last on the control board
//!    (`board`), sleeping meanwhile. [`LATENCY_END`] ends the phase.
//! 2. Throughput (the last round only): the publisher sends back to back,
//!    blocked by full subscriber queues (shmpool `Overflow::Block`,
//!    iceoryx2 `RetryUntilDelivered`: nothing is dropped), until
//!    [`STREAM_END`]; each subscriber counts what it received.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher as IoxPublisher;
use iceoryx2::port::subscriber::Subscriber as IoxSubscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::event::PortFactory as EventService;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory as PubSubService;
use shmpool::sync::SpinPolicy;
use shmpool::topic::{Bytes, Overflow, Publisher, Subscriber, Topic};

use super::board::{mono_nanos, Board};
use crate::affinity;
use crate::common::{self, BoxResult};
use crate::oneway::iox::{file_prefix, node};
use crate::oneway::link::{self, Peer, TIMEOUT};

pub const ROLE: &str = "topics-sub";

/// The stamp that ends the latency phase, and the one that ends the stream.
const LATENCY_END: u64 = u64::MAX;
const STREAM_END: u64 = u64::MAX - 1;
/// How often a polling receive looks at its deadline (a clock read).
const POLLS_PER_LOOK: u32 = 4096;
/// How long a subscriber sleeps on its listener at most between looks.
const LISTEN: Duration = Duration::from_millis(50);

type Service = ipc::Service;

/// The transports of the pub-sub rows, in table order within a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    ShmBusyPoll,
    IoxPolling,
    ShmDefault,
    IoxEvent,
}

impl Transport {
    pub const ALL: [Transport; 4] =
        [Transport::ShmBusyPoll, Transport::IoxPolling, Transport::ShmDefault, Transport::IoxEvent];

    pub fn name(self) -> &'static str {
        match self {
            Transport::ShmBusyPoll => "shmpool topic, busy-poll subscribers",
            Transport::IoxPolling => "iceoryx2 pub-sub, polling subscribers",
            Transport::ShmDefault => "shmpool topic, default (spin, then sleep)",
            Transport::IoxEvent => "iceoryx2 pub-sub, event wait",
        }
    }

    /// Whether the subscribers never sleep (a core each, or they starve).
    pub fn busy(self) -> bool {
        matches!(self, Transport::ShmBusyPoll | Transport::IoxPolling)
    }

    pub fn is_shmpool(self) -> bool {
        matches!(self, Transport::ShmBusyPoll | Transport::ShmDefault)
    }

    /// The iceoryx2 row this one is paired with (like with like).
    pub fn peer(self) -> Option<Transport> {
        match self {
            Transport::ShmBusyPoll => Some(Transport::IoxPolling),
            Transport::ShmDefault => Some(Transport::IoxEvent),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn of(code: u8) -> BoxResult<Transport> {
        Transport::ALL.into_iter().find(|t| t.code() == code).ok_or_else(|| format!("transport code {code}").into())
    }
}

/// Counts and budgets of one row in one round.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub warm_up: usize,
    pub iterations: usize,
    /// The timed messages stop once they took this long.
    pub budget: Duration,
    /// The throughput phase's budget and most messages.
    pub stream_budget: Duration,
    pub stream_max: u64,
}

/// What one round of one row measured.
pub struct Measured {
    /// One-way latency samples of every subscriber together.
    pub samples: Histogram<u64>,
    /// CPU time of every process per message, over the timed messages.
    pub cpu_per_message: Duration,
    pub streamed: Option<Streamed>,
}

/// The throughput phase: messages each subscriber received, in `elapsed`.
pub struct Streamed {
    pub messages: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
}

/// Subscriber queue depth (shmpool) and buffer size (iceoryx2): the one-way
/// section's window, 16 MiB in flight, 8 to 256 messages.
fn depth(size: usize) -> usize {
    link::window(size).0 as usize
}

/// The publishing end of a row.
trait Publish {
    /// Sends one payload stamped `stamp`.
    fn send(&mut self, stamp: u64) -> BoxResult<()>;
}

struct ShmSend {
    // Field order is drop order: the publisher before its topic.
    publisher: Publisher<Bytes>,
    _topic: Topic<Bytes>,
    template: Vec<u8>,
    subscribers: usize,
}

impl Publish for ShmSend {
    fn send(&mut self, stamp: u64) -> BoxResult<()> {
        let mut loan = self.publisher.loan(self.template.len())?;
        loan.copy_from_slice(&self.template);
        link::stamp(&mut loan, stamp);
        let reached = loan.send()?;
        if reached != self.subscribers {
            return Err(format!("a sample reached {reached} of {} subscribers", self.subscribers).into());
        }
        Ok(())
    }
}

struct IoxSend {
    // Ports, then services, then the node.
    publisher: IoxPublisher<Service, [u8], ()>,
    notifier: Option<Notifier<Service>>,
    _service: PubSubService<Service, [u8], ()>,
    _event: Option<EventService<Service>>,
    _node: Node<Service>,
    template: Vec<u8>,
}

impl Publish for IoxSend {
    fn send(&mut self, stamp: u64) -> BoxResult<()> {
        let sample = self.publisher.loan_slice_uninit(self.template.len())?;
        let mut sample = sample.write_from_slice(&self.template);
        link::stamp(sample.payload_mut(), stamp);
        sample.send()?;
        if let Some(notifier) = &self.notifier {
            notifier.notify()?;
        }
        Ok(())
    }
}

/// Names of a row's objects: the shmpool topic (and board), the iceoryx2
/// services.
fn names(row: usize) -> (String, String, String) {
    let base = common::unique_name("topics");
    (format!("{base}-{row}"), format!("{base}/{row}/data"), format!("{base}/{row}/event"))
}

fn open_send(transport: Transport, size: usize, subscribers: usize, row: usize) -> BoxResult<Box<dyn Publish>> {
    let (topic, data, event) = names(row);
    let template = link::template(size);
    if transport.is_shmpool() {
        let depth = depth(size);
        let topic = Topic::<Bytes>::builder(&topic)
            .max_subscribers(subscribers as u32)
            .depth(depth as u32)
            .overflow(Overflow::Block)
            // Every queued sample and a few held or loaned, twice over.
            .segment_size((2 * (depth + 8) * (size + 64)).max(16 << 20) as u64)
            .open_or_create()?;
        let publisher = topic.publisher()?;
        return Ok(Box::new(ShmSend { publisher, _topic: topic, template, subscribers }));
    }
    let node = node(&file_prefix())?;
    let service = node
        .service_builder(&ServiceName::new(&data)?)
        .publish_subscribe::<[u8]>()
        .max_publishers(1)
        .max_subscribers(subscribers)
        .max_nodes(subscribers + 1)
        .history_size(0)
        .subscriber_max_buffer_size(depth(size))
        .enable_safe_overflow(false)
        .create()?;
    let publisher = service
        .publisher_builder()
        .initial_max_slice_len(size)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()?;
    let (event, notifier) = if transport == Transport::IoxEvent {
        let event = node
            .service_builder(&ServiceName::new(&event)?)
            .event()
            .max_nodes(subscribers + 1)
            .max_listeners(subscribers)
            .max_notifiers(1)
            .create()?;
        let notifier = event.notifier_builder().create()?;
        (Some(event), Some(notifier))
    } else {
        (None, None)
    };
    Ok(Box::new(IoxSend { publisher, notifier, _service: service, _event: event, _node: node, template }))
}

/// One round of one row: `subscribers` children, the latency phase, and
/// the throughput phase when `stream`.
pub fn run(
    transport: Transport,
    size: usize,
    subscribers: usize,
    plan: &Plan,
    row: usize,
    stream: bool,
) -> BoxResult<Measured> {
    let (topic, data, event) = names(row);
    let board = Board::create(&topic, subscribers, plan.iterations)?;
    let mut sender = open_send(transport, size, subscribers, row)?;
    let mut peers = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let args = [
            transport.code().to_string(),
            size.to_string(),
            subscribers.to_string(),
            i.to_string(),
            plan.warm_up.to_string(),
            plan.iterations.to_string(),
            u8::from(stream).to_string(),
            topic.clone(),
            data.clone(),
            event.clone(),
            file_prefix(),
        ];
        let peer = Peer::spawn(ROLE, &args)?;
        affinity::pin_process(peer.pid(), affinity::worker_core(i, subscribers))?;
        peers.push(peer);
    }
    let pids: Vec<u32> = [0].into_iter().chain(peers.iter().map(Peer::pid)).collect();
    let n = subscribers as u32;
    let mut target = 0u32;
    let mut step = |board: &Board, peers: &mut Vec<Peer>| -> BoxResult<()> {
        target += n;
        board.wait(target, TIMEOUT, || peers.iter_mut().try_for_each(Peer::check_alive))
    };
    // Ready: every subscriber is attached.
    step(&board, &mut peers)?;
    for _ in 0..plan.warm_up {
        sender.send(mono_nanos())?;
        step(&board, &mut peers)?;
    }
    let (timed, cpu) = common::measure_cpu(&pids, || -> BoxResult<usize> {
        let start = Instant::now();
        let mut sent = 0;
        while sent < plan.iterations && !(sent >= 100 && start.elapsed() > plan.budget) {
            sender.send(mono_nanos())?;
            step(&board, &mut peers)?;
            sent += 1;
        }
        Ok(sent)
    });
    let timed = timed?;
    sender.send(LATENCY_END)?;
    step(&board, &mut peers)?;
    let mut samples = common::histogram();
    for i in 0..subscribers {
        let theirs = board.samples(i);
        if theirs.len() != timed {
            return Err(format!("subscriber {i} recorded {} of {timed} timed messages", theirs.len()).into());
        }
        for ns in theirs {
            samples.saturating_record(ns.max(1));
        }
    }
    let cpu_per_message = cpu / timed.max(1) as u32;
    let streamed = if stream {
        let (streamed, cpu) = common::measure_cpu(&pids, || -> BoxResult<(u64, Duration)> {
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < plan.stream_max && !(sent % 64 == 0 && sent > 0 && start.elapsed() > plan.stream_budget) {
                sender.send(mono_nanos())?;
                sent += 1;
            }
            sender.send(STREAM_END)?;
            step(&board, &mut peers)?;
            Ok((sent, start.elapsed()))
        });
        let (messages, elapsed) = streamed?;
        for i in 0..subscribers {
            if board.count(i) != messages {
                return Err(format!("subscriber {i} received {} of {messages} messages", board.count(i)).into());
            }
        }
        Some(Streamed { messages, elapsed, cpu })
    } else {
        None
    };
    for peer in peers {
        peer.finish()?;
    }
    drop(sender);
    Ok(Measured { samples, cpu_per_message, streamed })
}

// ---------------------------------------------------------------------------
// The subscriber's side

/// The receiving end of a row, in a child.
trait Receive {
    /// The next message's stamp, its payload checked.
    fn recv(&mut self, size: usize) -> BoxResult<u64>;
}

struct ShmReceive {
    subscriber: Subscriber<Bytes>,
    _topic: Topic<Bytes>,
}

impl Receive for ShmReceive {
    fn recv(&mut self, size: usize) -> BoxResult<u64> {
        let sample = self.subscriber.recv_timeout(TIMEOUT)?;
        link::check(&sample, size)
    }
}

struct IoxReceive {
    subscriber: IoxSubscriber<Service, [u8], ()>,
    listener: Option<Listener<Service>>,
    _service: PubSubService<Service, [u8], ()>,
    _event: Option<EventService<Service>>,
    _node: Node<Service>,
}

impl Receive for IoxReceive {
    /// Polled without pause, or between sleeps on the listener; the
    /// deadline is looked at on a timer, never right after a wake-up.
    fn recv(&mut self, size: usize) -> BoxResult<u64> {
        let deadline = Instant::now() + TIMEOUT;
        let mut polls = 0u32;
        loop {
            if let Some(sample) = self.subscriber.receive()? {
                return link::check(sample.payload(), size);
            }
            let again = match &self.listener {
                Some(listener) => listener.timed_wait(|_| {}, LISTEN)? > 0,
                None => {
                    polls = polls.wrapping_add(1);
                    std::hint::spin_loop();
                    polls % POLLS_PER_LOOK != 0
                }
            };
            if !again && Instant::now() > deadline {
                return Err("iceoryx2: nothing received for 10 s".into());
            }
        }
    }
}

fn open_receive(
    transport: Transport,
    topic: &str,
    data: &str,
    event: &str,
    prefix: &str,
) -> BoxResult<Box<dyn Receive>> {
    if transport.is_shmpool() {
        let topic = Topic::<Bytes>::open(topic)?;
        let mut subscriber = topic.subscriber()?;
        if transport == Transport::ShmBusyPoll {
            subscriber = subscriber.with_spin(SpinPolicy::BUSY_POLL);
        }
        return Ok(Box::new(ShmReceive { subscriber, _topic: topic }));
    }
    let node = node(prefix)?;
    let service = node.service_builder(&ServiceName::new(data)?).publish_subscribe::<[u8]>().open()?;
    let subscriber = service.subscriber_builder().create()?;
    let (event, listener) = if transport == Transport::IoxEvent {
        let event = node.service_builder(&ServiceName::new(event)?).event().open()?;
        let listener = event.listener_builder().create()?;
        (Some(event), Some(listener))
    } else {
        (None, None)
    };
    Ok(Box::new(IoxReceive { subscriber, listener, _service: service, _event: event, _node: node }))
}

/// The child: `TRANSPORT SIZE SUBSCRIBERS INDEX WARM_UP ITERATIONS STREAM
/// TOPIC DATA_SERVICE EVENT_SERVICE FILE_PREFIX`.
pub fn run_child(args: &[String]) -> BoxResult<()> {
    let transport = Transport::of(link::arg(args, 0, "transport")?)?;
    let size: usize = link::arg(args, 1, "size")?;
    let subscribers: usize = link::arg(args, 2, "subscribers")?;
    let index: usize = link::arg(args, 3, "index")?;
    let warm_up: usize = link::arg(args, 4, "warm-up")?;
    let iterations: usize = link::arg(args, 5, "iterations")?;
    let stream = link::arg::<u8>(args, 6, "stream")? != 0;
    let [topic, data, event, prefix] = [7, 8, 9, 10].map(|i| args.get(i).cloned().unwrap_or_default());
    let board = Board::open(&topic, subscribers, iterations)?;
    let mut receive = open_receive(transport, &topic, &data, &event, &prefix)?;
    board.ack(subscribers);
    let mut samples = Vec::with_capacity(iterations);
    let mut received = 0usize;
    let mut last = 0;
    loop {
        let stamp = receive.recv(size)?;
        let now = mono_nanos();
        if stamp == LATENCY_END {
            break;
        }
        if stamp < last {
            return Err(format!("message stamped {stamp} after one stamped {last}: reordered").into());
        }
        last = stamp;
        if received >= warm_up {
            samples.push(now.saturating_sub(stamp));
        }
        received += 1;
        board.ack(subscribers);
    }
    board.put_samples(index, &samples);
    board.ack(subscribers);
    if stream {
        let mut count = 0u64;
        loop {
            let stamp = receive.recv(size)?;
            if stamp == STREAM_END {
                break;
            }
            if stamp < last {
                return Err(format!("streamed message stamped {stamp} after one stamped {last}").into());
            }
            last = stamp;
            count += 1;
        }
        board.set_count(index, count);
        board.ack(subscribers);
    }
    Ok(())
}
