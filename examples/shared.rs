//! Shared state between processes: a named segment with a list, a map and an
//! object, each under a chosen lock, updated from pool workers at once; and a
//! large buffer handed to a worker without copying it.

use shmpool::{BufferHandle, LockKind, Pool, Segment};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Default)]
struct Config {
    name: String,
    retries: u32,
}

/// Runs in a worker: opens the segment by name and updates every container.
fn record(args: (String, u32)) -> u32 {
    let (segment, id) = args;
    let seg = Segment::open(&segment).expect("segment");
    let names = seg.list::<String>("names", LockKind::RwLock).unwrap();
    let counts = seg.map::<String, u64>("counts", LockKind::Mutex).unwrap();
    let cfg = seg.object::<Config>("cfg", LockKind::Spin, &Config::default()).unwrap();
    for i in 0..100 {
        names.push(&format!("worker-{id}-{i}")).unwrap();
        counts.update("total", |old| old.unwrap_or(0) + 1).unwrap();
    }
    cfg.update(|mut c| {
        c.retries += 1;
        c
    })
    .unwrap();
    id
}

/// Runs in a worker: reads a large buffer where it lies.
fn checksum(handle: BufferHandle) -> u64 {
    let seg = shmpool::pool_segment().expect("runs in a pool worker");
    let buf = handle.open(&seg).unwrap();
    buf.as_slice().iter().map(|&b| b as u64).sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shmpool::init();
    let name = format!("example-{}", std::process::id());
    let seg = Segment::create(&name, 64 << 20)?; // Segment::open(&name) elsewhere
    let cfg = seg.object::<Config>("cfg", LockKind::Spin, &Config { name: "demo".into(), retries: 0 })?;

    let pool = Pool::builder().workers(3).build()?;
    let done: Vec<_> = (0..3).map(|id| pool.submit(record, (name.clone(), id))).collect::<Result<_, _>>()?;
    for t in done {
        t.wait()?;
    }

    let names = seg.list::<String>("names", LockKind::RwLock)?;
    let counts = seg.map::<String, u64>("counts", LockKind::Mutex)?;
    let first = names.get(0)?; // a guard that derefs to the archived string: no copy
    println!("{} names, first {:?}", names.len(), first.as_str());
    drop(first);
    let total = counts.get("total")?.map(|v| v.to_native());
    assert_eq!(total, Some(300), "no update lost");
    assert_eq!(cfg.load()?.retries, 3);
    let snapshot = counts.to_bytes()?; // bytes any process or host can read back
    println!("total {total:?}, snapshot of {} bytes", snapshot.len());

    // 32 MiB to a worker: it receives a 40-byte handle and reads in place.
    let mut buf = pool.segment().buffer(32 << 20)?;
    buf.as_mut_slice().unwrap().fill(1);
    let sum = pool.submit(checksum, buf.share()?)?.wait()?;
    assert_eq!(sum, 32 << 20);
    println!("worker summed {sum} bytes it never copied");
    Ok(())
}
