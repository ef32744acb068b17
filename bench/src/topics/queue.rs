//! The work-queue rows: one producer (this process) and two consumer
//! processes (this binary as `--peer topics-consumer`), trivial items
//! (`u64`s, counting up), each consumer taking and acknowledging items one
//! at a time: a shmpool `Queue<u64>` (pop, ack) against Redis Streams with
//! a consumer group (XADD, XREADGROUP, XACK), one by one and pipelined.
//!
//! The producer pushes for a time budget, then one [`END`] item per
//! consumer; a consumer stops at the first one it takes and reports its
//! count on the board. The clock runs from the first push until both
//! consumers have reported: every item was taken and acknowledged.

use std::time::{Duration, Instant};

use shmpool::topic::Queue;

use super::board::Board;
use super::resp::{Client, Reply};
use crate::affinity;
use crate::common::{self, BoxResult};
use crate::oneway::link::{self, Peer, TIMEOUT};

pub const ROLE: &str = "topics-consumer";
pub const CONSUMERS: usize = 2;

/// The item that tells a consumer to stop.
const END: u64 = u64::MAX;
/// Items per XREADGROUP and XADD pipeline of the batched Redis row.
pub const BATCH: usize = 64;
const STREAM: &[u8] = b"jobs";
const GROUP: &[u8] = b"workers";

/// The queue rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Shmpool,
    RedisOneByOne,
    RedisBatched,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Shmpool, Kind::RedisOneByOne, Kind::RedisBatched];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Shmpool => "shmpool Queue<u64>: push / pop + ack",
            Kind::RedisOneByOne => "Redis Streams, consumer group: XADD / XREADGROUP COUNT 1 + XACK",
            Kind::RedisBatched => "Redis Streams, consumer group, 64 per call: pipelined XADD / XREADGROUP + XACK",
        }
    }

    pub fn is_redis(self) -> bool {
        self != Kind::Shmpool
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn of(code: u8) -> BoxResult<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code).ok_or_else(|| format!("queue kind {code}").into())
    }
}

/// One run: items taken (by both consumers), in `elapsed`, CPU of every
/// process (Redis's server too) over it.
pub struct Run {
    pub items: u64,
    pub per_consumer: [u64; CONSUMERS],
    pub elapsed: Duration,
    pub cpu: Duration,
}

/// The producing end.
enum Producer {
    Shm(Queue<u64>),
    Redis { client: Client, key: Vec<u8>, batch: usize },
}

impl Producer {
    /// Queues `items` (one call, or one pipelined write for Redis).
    fn push(&mut self, items: &[u64]) -> BoxResult<()> {
        match self {
            Producer::Shm(queue) => items.iter().try_for_each(|v| {
                queue.push(v).map_err(|e| format!("push of item {v} ({} queued): {e}", queue.len()).into())
            }),
            Producer::Redis { client, key, .. } => {
                for v in items {
                    client.queue(&[b"XADD", key, b"*", b"v", v.to_string().as_bytes()]);
                }
                client.flush()?;
                items.iter().try_for_each(|_| client.read().map(drop))
            }
        }
    }

    fn batch(&self) -> usize {
        match self {
            Producer::Shm(_) => 1,
            Producer::Redis { batch, .. } => *batch,
        }
    }
}

/// One run of `kind` with `budget` of pushing (at most `max` items);
/// `port`: the Redis server's, `server`: its pid (for the CPU figure).
pub fn run(kind: Kind, budget: Duration, max: u64, row: usize, redis: Option<(u16, u32)>) -> BoxResult<Run> {
    let name = format!("{}-q{row}", common::unique_name("topics"));
    let board = Board::create(&name, CONSUMERS, 0)?;
    let (mut producer, port) = match (kind, redis) {
        (Kind::Shmpool, _) => (Producer::Shm(Queue::<u64>::builder(&name).capacity(1024).open_or_create()?), 0),
        (_, Some((port, _))) => {
            let mut client = Client::connect(port)?;
            let key = [STREAM, name.as_bytes()].concat();
            let _ = client.call(&[b"DEL", &key]);
            client.call(&[b"XGROUP", b"CREATE", &key, GROUP, b"$", b"MKSTREAM"])?;
            let batch = if kind == Kind::RedisBatched { BATCH } else { 1 };
            (Producer::Redis { client, key, batch }, port)
        }
        _ => return Err("a Redis row without a Redis server".into()),
    };
    let mut peers = Vec::new();
    for i in 0..CONSUMERS {
        let args = [kind.code().to_string(), i.to_string(), name.clone(), port.to_string()];
        let peer = Peer::spawn(ROLE, &args)?;
        affinity::pin_process(peer.pid(), affinity::worker_core(i, CONSUMERS))?;
        peers.push(peer);
    }
    let check = |peers: &mut Vec<Peer>| peers.iter_mut().try_for_each(Peer::check_alive);
    board.wait(CONSUMERS as u32, TIMEOUT, || check(&mut peers))?;
    let mut pids: Vec<u32> = [0].into_iter().chain(peers.iter().map(Peer::pid)).collect();
    pids.extend(redis.map(|(_, pid)| pid));
    let batch = producer.batch();
    let (timed, cpu) = common::measure_cpu(&pids, || -> BoxResult<(u64, Duration)> {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut items = Vec::with_capacity(batch);
        while sent < max && !(sent % 256 < batch as u64 && sent > 0 && start.elapsed() > budget) {
            items.clear();
            items.extend(sent..sent + batch as u64);
            producer.push(&items)?;
            sent += batch as u64;
        }
        producer.push(&[END; CONSUMERS])?;
        board.wait(2 * CONSUMERS as u32, TIMEOUT + budget, || check(&mut peers))?;
        Ok((sent, start.elapsed()))
    });
    let (items, elapsed) = timed?;
    let per_consumer = [board.count(0), board.count(1)];
    if per_consumer.iter().sum::<u64>() != items {
        return Err(format!("consumers took {per_consumer:?} of {items} items").into());
    }
    for peer in peers {
        peer.finish()?;
    }
    if let Producer::Redis { client, key, .. } = &mut producer {
        client.call(&[b"DEL", key])?;
    }
    Ok(Run { items, per_consumer, elapsed, cpu })
}

// ---------------------------------------------------------------------------
// The consumer's side

/// The child: `KIND INDEX NAME PORT`.
pub fn run_child(args: &[String]) -> BoxResult<()> {
    let kind = Kind::of(link::arg(args, 0, "kind")?)?;
    let index: usize = link::arg(args, 1, "index")?;
    let name: String = link::arg(args, 2, "name")?;
    let port: u16 = link::arg(args, 3, "port")?;
    let board = Board::open(&name, CONSUMERS, 0)?;
    let mut last = None;
    let mut take = |v: u64| -> BoxResult<()> {
        if last.is_some_and(|l| v <= l) {
            return Err(format!("item {v} after item {}: reordered or repeated", last.unwrap_or(0)).into());
        }
        last = Some(v);
        Ok(())
    };
    let mut count = 0u64;
    if kind == Kind::Shmpool {
        let queue = Queue::<u64>::open(&name)?;
        board.ack(CONSUMERS);
        loop {
            let item = queue.pop_timeout(TIMEOUT)?;
            let v = u64::from(*item);
            item.ack();
            if v == END {
                break;
            }
            take(v)?;
            count += 1;
        }
    } else {
        let key = [STREAM, name.as_bytes()].concat();
        let consumer = format!("c{index}");
        let count_arg = if kind == Kind::RedisBatched { BATCH } else { 1 }.to_string();
        let mut client = Client::connect(port)?;
        board.ack(CONSUMERS);
        let deadline = Instant::now() + TIMEOUT;
        'read: loop {
            let reply = client.call(&[
                b"XREADGROUP",
                b"GROUP",
                GROUP,
                consumer.as_bytes(),
                b"COUNT",
                count_arg.as_bytes(),
                b"BLOCK",
                b"1000",
                b"STREAMS",
                &key,
                b">",
            ])?;
            let entries = entries(&reply)?;
            if entries.is_empty() {
                if Instant::now() > deadline {
                    return Err("redis: no item for 10 s".into());
                }
                continue;
            }
            let mut ack: Vec<&[u8]> = vec![b"XACK", &key, GROUP];
            ack.extend(entries.iter().map(|(id, _)| *id));
            client.call(&ack)?;
            let mut ended = false;
            for &(_, v) in &entries {
                if v == END {
                    if ended {
                        // The other consumer's END came in our batch: put
                        // it back for them.
                        client.call(&[b"XADD", &key, b"*", b"v", END.to_string().as_bytes()])?;
                    }
                    ended = true;
                    continue;
                }
                take(v)?;
                count += 1;
            }
            if ended {
                break 'read;
            }
        }
    }
    board.set_count(index, count);
    board.ack(CONSUMERS);
    Ok(())
}

/// The (id, value) pairs of an XREADGROUP reply (none when it timed out).
fn entries(reply: &Reply) -> BoxResult<Vec<(&[u8], u64)>> {
    let Some(streams) = reply.array() else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for stream in streams {
        let parts = stream.array().ok_or("redis: a stream entry is not an array")?;
        for entry in parts.get(1).and_then(Reply::array).ok_or("redis: no entries")? {
            let pair = entry.array().ok_or("redis: an entry is not an array")?;
            let id = pair.first().and_then(Reply::bulk).ok_or("redis: an entry without an id")?;
            let fields = pair.get(1).and_then(Reply::array).ok_or("redis: an entry without fields")?;
            let value = fields.get(1).and_then(Reply::bulk).ok_or("redis: an entry without a value")?;
            let value = std::str::from_utf8(value)?.parse::<u64>()?;
            out.push((id, value));
        }
    }
    Ok(out)
}
