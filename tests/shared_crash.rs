//! Kill tests for the containers: a writer stopped at a publish point and
//! killed with SIGKILL leaves every container readable, holding the old value
//! or the new one, never an error or a wrong value.
//!
//! The writer runs in a pool worker with the test-only pause hook installed
//! (`shmpool::shared::set_pause_hook`): at the chosen point it tells the
//! parent through a flag in the segment and sleeps until it is killed.

#[path = "common/watchdog.rs"]
mod watchdog;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use watchdog::watchdog;

use shmpool::{LockKind, OnWorkerDeath, Pool, Segment, SharedList, SharedMap, SharedObject, TaskError};

const KINDS: [LockKind; 4] = [LockKind::Mutex, LockKind::RwLock, LockKind::Spin, LockKind::Auth];
/// Keys in the map before the insert that makes it grow (16 buckets, 70% load).
const BEFORE_GROWTH: usize = 11;

fn old_value() -> String {
    "old".to_string()
}

/// Longer than the old value's block, so that a length and an offset from
/// different writes never agree.
fn new_value() -> String {
    "new-".repeat(700)
}

/// Where the writer stops: the publish point and the segment flag to raise.
struct Pause {
    point: String,
    seg: Segment,
    flag: u64,
}

static PAUSE: Mutex<Option<Pause>> = Mutex::new(None);

/// The pause hook of the writer processes: at the chosen point, raise the
/// flag with our pid and sleep until killed.
fn pause_hook(point: &'static str) {
    let guard = PAUSE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref().filter(|p| p.point == point) {
        p.seg.get::<AtomicU64>(p.flag).unwrap().store(std::process::id() as u64, Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn flag(seg: &Segment) -> u64 {
    seg.named("crash-flag", 99, 0, 8, |_| Ok(())).unwrap().0.offset
}

fn names(kind: LockKind) -> (String, String, String, String) {
    let k = KINDS.iter().position(|&x| x == kind).unwrap();
    (format!("obj{k}"), format!("list{k}"), format!("map{k}"), format!("grow{k}"))
}

/// Runs in a worker: the write that is stopped at `point` and killed.
fn crash_writer(args: (String, String, u8)) -> u32 {
    let (segment, point, k) = args;
    let kind = KINDS[k as usize];
    let seg = Segment::open(&segment).unwrap();
    shmpool::shared::set_pause_hook(pause_hook);
    *PAUSE.lock().unwrap() = Some(Pause { point: point.clone(), seg: seg.clone(), flag: flag(&seg) });
    let (obj, list, map, grow) = names(kind);
    match point.as_str() {
        "object" => seg.object::<String>(&obj, kind, &String::new()).unwrap().set(&new_value()).unwrap(),
        "list" => seg.list::<String>(&list, kind).unwrap().set(0, &new_value()).unwrap(),
        "map" => {
            seg.map::<String, String>(&map, kind).unwrap().insert(&"k0".to_string(), &new_value()).unwrap();
        }
        "map-insert" => {
            seg.map::<String, String>(&map, kind).unwrap().insert(&"k1".to_string(), &new_value()).unwrap();
        }
        "list-remove" => {
            seg.list::<String>(&list, kind).unwrap().remove(1).unwrap();
        }
        "map-grow" => {
            seg.map::<String, String>(&grow, kind).unwrap().insert(&"grown".to_string(), &new_value()).unwrap();
        }
        other => panic!("no publish point {other}"),
    }
    // Not stopped: the point was never reached.
    *PAUSE.lock().unwrap() = None;
    0
}

/// Starts the writer, waits until it stops at `point`, and kills it.
fn kill_at(pool: &Pool, seg: &Segment, name: &str, point: &str, kind: LockKind) {
    let raised = seg.get::<AtomicU64>(flag(seg)).unwrap();
    raised.store(0, Ordering::SeqCst);
    let k = KINDS.iter().position(|&x| x == kind).unwrap() as u8;
    let task = pool.submit(crash_writer, (name.to_string(), point.to_string(), k)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = loop {
        let pid = raised.load(Ordering::SeqCst);
        if pid != 0 {
            break pid as i32;
        }
        assert!(Instant::now() < deadline, "{kind:?}: the writer never reached {point}");
        std::thread::sleep(Duration::from_millis(2));
    };
    // SAFETY: killing the worker process that raised the flag.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    match task.wait() {
        Err(TaskError::WorkerDied { .. }) => {}
        other => panic!("{kind:?} at {point}: expected the writer to die, got {other:?}"),
    }
}

/// Old or new, nothing else.
fn assert_old_or_new(what: &str, got: Result<String, shmpool::SharedError>) {
    match got {
        Ok(v) if v == old_value() || v == new_value() => {}
        Ok(v) => panic!("{what}: wrong value after the writer was killed: {:?}", &v[..v.len().min(40)]),
        Err(e) => panic!("{what}: error after the writer was killed: {e}"),
    }
}

/// Lets process `pid` use an `Auth` container.
trait Authorise {
    fn authorise(&self, pid: u32);
}

impl Authorise for SharedObject<String> {
    fn authorise(&self, pid: u32) {
        self.add_operator(pid).unwrap();
    }
}

impl Authorise for SharedList<String> {
    fn authorise(&self, pid: u32) {
        self.add_operator(pid).unwrap();
    }
}

impl Authorise for SharedMap<String, String> {
    fn authorise(&self, pid: u32) {
        self.add_operator(pid).unwrap();
    }
}

/// For every lock kind: sets up a container with `setup`, kills a writer
/// stopped at `point` in it, then runs `check` on it.
fn for_every_kind<C: Authorise>(
    test: &'static str,
    point: &str,
    setup: impl Fn(&Segment, LockKind) -> C,
    check: impl Fn(&C, LockKind),
) {
    let _w = watchdog(test, Duration::from_secs(180));
    let pool = Pool::builder().workers(1).on_worker_death(OnWorkerDeath::Report).build().unwrap();
    let name = format!("sharedcrash-{test}-{}", std::process::id());
    let seg = Segment::create(&name, 16 << 20).unwrap();
    for kind in KINDS {
        let container = setup(&seg, kind);
        if kind == LockKind::Auth {
            for pid in pool.worker_pids() {
                container.authorise(pid);
            }
        }
        kill_at(&pool, &seg, &name, point, kind);
        check(&container, kind);
    }
}

#[test]
fn an_object_writer_killed_while_publishing_leaves_old_or_new() {
    for_every_kind(
        "object",
        "object",
        |seg, kind| seg.object::<String>(&names(kind).0, kind, &old_value()).unwrap(),
        |object, kind| {
            assert_old_or_new(&format!("{kind:?} object.load"), object.load());
            assert_old_or_new(&format!("{kind:?} object.get"), object.get().and_then(|r| r.to_owned()));
            object.set(&"after".to_string()).unwrap();
            assert_eq!(object.load().unwrap(), "after", "{kind:?}: takes writes after the crash");
        },
    );
}

#[test]
fn a_list_writer_killed_while_publishing_leaves_old_or_new() {
    for_every_kind(
        "list",
        "list",
        |seg, kind| {
            let list = seg.list::<String>(&names(kind).1, kind).unwrap();
            list.push(&old_value()).unwrap();
            list
        },
        |list, kind| {
            assert_eq!(list.len(), 1, "{kind:?}");
            assert_old_or_new(&format!("{kind:?} list.get"), list.get(0).and_then(|r| r.to_owned()));
            assert_old_or_new(&format!("{kind:?} list.to_vec"), list.to_vec().map(|mut v| v.remove(0)));
            list.set(0, &"after".to_string()).unwrap();
            list.push(&"more".to_string()).unwrap();
            assert_eq!(list.to_vec().unwrap(), ["after", "more"], "{kind:?}: takes writes after the crash");
        },
    );
}

#[test]
fn a_list_remove_killed_while_shifting_is_finished_by_the_next_writer() {
    for_every_kind(
        "remove",
        "list-remove",
        |seg, kind| {
            let list = seg.list::<String>(&names(kind).1, kind).unwrap();
            for i in 0..4 {
                list.push(&format!("e{i}")).unwrap();
            }
            list
        },
        |list, kind| {
            // Readers before the next writer may see one element twice, but
            // every read succeeds.
            for i in 0..list.len() {
                list.get(i).unwrap_or_else(|e| panic!("{kind:?}: element {i}: {e}"));
            }
            list.push(&"after".to_string()).unwrap();
            assert_eq!(list.to_vec().unwrap(), ["e0", "e2", "e3", "after"], "{kind:?}: the remove was finished");
        },
    );
}

#[test]
fn a_map_writer_killed_while_replacing_leaves_old_or_new() {
    for_every_kind(
        "map",
        "map",
        |seg, kind| {
            let map = seg.map::<String, String>(&names(kind).2, kind).unwrap();
            map.insert(&"k0".to_string(), &old_value()).unwrap();
            map
        },
        |map, kind| {
            let got = match map.get("k0") {
                Ok(Some(r)) => r.to_owned(),
                Ok(None) => panic!("{kind:?}: the map lost k0"),
                Err(e) => Err(e),
            };
            assert_old_or_new(&format!("{kind:?} map.get"), got);
            assert_old_or_new(&format!("{kind:?} map.entries"), map.entries().map(|mut e| e.remove(0).1));
            map.insert(&"k0".to_string(), &"after".to_string()).unwrap();
            assert_eq!(map.get("k0").unwrap().unwrap().as_str(), "after", "{kind:?}: takes writes after the crash");
        },
    );
}

#[test]
fn a_map_insert_killed_before_its_count_is_recounted_by_the_next_writer() {
    for_every_kind(
        "insert",
        "map-insert",
        |seg, kind| {
            let map = seg.map::<String, String>(&names(kind).2, kind).unwrap();
            map.insert(&"k0".to_string(), &old_value()).unwrap();
            map
        },
        |map, kind| {
            assert_eq!(map.get("k0").unwrap().unwrap().as_str(), old_value(), "{kind:?}");
            match map.get("k1") {
                Ok(None) => {}
                Ok(Some(v)) => assert_eq!(v.as_str(), new_value(), "{kind:?}"),
                Err(e) => panic!("{kind:?}: k1: {e}"),
            }
            map.insert(&"k2".to_string(), &"after".to_string()).unwrap();
            assert_eq!(map.len(), map.entries().unwrap().len(), "{kind:?}: the count was redone");
        },
    );
}

#[test]
fn a_map_killed_while_growing_keeps_every_entry() {
    for_every_kind(
        "grow",
        "map-grow",
        |seg, kind| {
            let map = seg.map::<String, String>(&names(kind).3, kind).unwrap();
            for i in 0..BEFORE_GROWTH {
                map.insert(&format!("key-{i}"), &format!("value-{i}")).unwrap();
            }
            map
        },
        |map, kind| {
            for i in 0..BEFORE_GROWTH {
                let got = map.get(format!("key-{i}").as_str()).map(|r| r.map(|v| v.to_string()));
                assert_eq!(got.ok(), Some(Some(format!("value-{i}"))), "{kind:?}: key-{i} after a growth was killed");
            }
            match map.get("grown") {
                Ok(None) => {}
                Ok(Some(v)) => assert_eq!(v.as_str(), new_value(), "{kind:?}"),
                Err(e) => panic!("{kind:?}: the grown key: {e}"),
            }
            assert_eq!(map.len(), map.entries().unwrap().len(), "{kind:?}: the map's count matches its entries");
            for i in 0..40 {
                map.insert(&format!("more-{i}"), &format!("m{i}")).unwrap();
            }
            for i in 0..BEFORE_GROWTH {
                assert_eq!(map.get(format!("key-{i}").as_str()).unwrap().unwrap().as_str(), format!("value-{i}"));
            }
            assert_eq!(map.len(), BEFORE_GROWTH + 40 + map.contains_key("grown").unwrap() as usize, "{kind:?}");
        },
    );
}
