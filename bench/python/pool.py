"""Python's multiprocessing.Pool, measured for shmpool-bench (src/peers/python.rs).

    python3 pool.py latency WARM_UP ITERATIONS BUDGET_NS [PARENT_CORE CHILD_CORE]
    python3 pool.py throughput PROCESSES TASKS CHUNKSIZE RUNS    (CHUNKSIZE 0: map's default)
    python3 pool.py handoff BYTES WARM_UP ITERATIONS BUDGET_NS [PARENT_CORE CHILD_CORE]
    python3 pool.py shm_handoff PARENT_CORE CHILD_CORE WARM_UP ITERATIONS BUDGET_NS BYTES...
    python3 pool.py pipeline PROCESSES BUFFERS SIZE PASSES PARENT_CORE CHILD_CORE

Prints one JSON object on stdout: the timed samples in nanoseconds and the CPU
time of this process and its pool workers over them, or the elapsed time of
each throughput run. Every reply is checked; a wrong one exits non-zero with a
message on stderr.
"""

import json
import multiprocessing as mp
import os
import sys
import time

MASK = (1 << 64) - 1
FILL = 0xA5


def square(x):
    return (x * x) & MASK


def length_plus_last(buf):
    return len(buf) + buf[-1]


def fail(message):
    sys.exit('pool.py: ' + message)


def cpu_ns(pids):
    """CPU time of every thread of these processes, from /proc/PID/task/*/schedstat."""
    total = 0
    for pid in pids:
        tasks = '/proc/%s/task' % pid
        try:
            threads = os.listdir(tasks)
        except OSError:
            continue
        for tid in threads:
            try:
                with open('%s/%s/schedstat' % (tasks, tid)) as stat:
                    total += int(stat.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def timed_applies(pool, func, argument, expected, warm_up, iterations, budget_ns):
    """pool.apply(func, (argument(i),)) warm_up times, then up to iterations
    times timed, stopping once budget_ns is spent (after 3 at least)."""
    for i in range(warm_up):
        if pool.apply(func, (argument(i),)) != expected(i):
            fail('wrong reply during the warm-up')
    pids = ['self'] + [child.pid for child in mp.active_children()]
    samples = []
    spent = 0
    cpu_before = cpu_ns(pids)
    for i in range(iterations):
        if i >= 3 and spent > budget_ns:
            break
        arg = argument(i)
        start = time.perf_counter_ns()
        reply = pool.apply(func, (arg,))
        took = time.perf_counter_ns() - start
        if reply != expected(i):
            fail('reply %r to request %d is wrong' % (reply, i))
        samples.append(took)
        spent += took
    return {'samples': samples, 'cpu_ns': cpu_ns(pids) - cpu_before}


def pinned_or_plain_pool(cores):
    """Pool(1), its parent and worker pinned to the pair of cores when given."""
    if not cores:
        return mp.Pool(1)
    parent_core, child_core = cores
    pin(0, parent_core)
    return pinned_pool(1, parent_core, child_core)


def latency(warm_up, iterations, budget_ns, *cores):
    with pinned_or_plain_pool(cores) as pool:
        return timed_applies(pool, square, lambda i: i, square, warm_up, iterations, budget_ns)


def throughput(processes, tasks, chunksize, runs):
    chunksize = chunksize or None
    expected = [square(x) for x in range(tasks)]
    elapsed = []
    with mp.Pool(processes) as pool:
        pool.map(square, range(min(tasks, 10000)), chunksize)
        for _ in range(runs):
            start = time.perf_counter_ns()
            replies = pool.map(square, range(tasks), chunksize)
            elapsed.append(time.perf_counter_ns() - start)
            if replies != expected:
                fail('pool.map(square, range(%d)) returned wrong squares' % tasks)
    return {'elapsed_ns': elapsed}


def handoff(size, warm_up, iterations, budget_ns, *cores):
    buf = bytes([FILL]) * size
    with pinned_or_plain_pool(cores) as pool:
        return timed_applies(pool, length_plus_last, lambda i: buf, lambda i: size + FILL,
                             warm_up, iterations, budget_ns)


# ---------------------------------------------------------------------------
# multiprocessing.shared_memory: blocks passed by name, attached once per
# worker and kept (as shmpool's workers keep their segment mapped).

_attached = {}


def _worker_init():
    # A worker that attaches a block must not register it with the resource
    # tracker (Python < 3.13 has no track=False): the parent owns and unlinks
    # every block, and a second registration makes the tracker warn of leaks.
    from multiprocessing import resource_tracker
    resource_tracker.register = lambda *args, **kwargs: None


def _attach(name):
    from multiprocessing import shared_memory
    block = _attached.get(name)
    if block is None:
        block = shared_memory.SharedMemory(name=name)
        _attached[name] = block
    return block


def shm_length_plus_first(name):
    """The hand-off task: len + first byte of the block, read in place."""
    block = _attach(name)
    return block.size + block.buf[0]


def shm_digest(name):
    import zlib
    return zlib.crc32(_attach(name).buf)


def pin(pid, core):
    try:
        os.sched_setaffinity(pid, {core})
    except OSError:
        pass


def worker_core(index, n, parent_core, child_core):
    """As bench/src/affinity.rs: a lone worker on the child's core, two alternate."""
    return child_core if n == 1 or index % 2 == 1 else parent_core


def pinned_pool(processes, parent_core, child_core):
    pool = mp.Pool(processes, initializer=_worker_init)
    pids = sorted(p.pid for p in mp.active_children())
    for index, pid in enumerate(pids):
        pin(pid, worker_core(index, processes, parent_core, child_core))
    return pool


def shm_handoff(parent_core, child_core, warm_up, iterations, budget_ns, *sizes):
    from multiprocessing import shared_memory
    pin(0, parent_core)
    results = {}
    with pinned_pool(1, parent_core, child_core) as pool:
        for size in sizes:
            block = shared_memory.SharedMemory(create=True, size=size)
            try:
                block.buf[:size] = bytes([FILL]) * size
                out = timed_applies(pool, shm_length_plus_first, lambda i: block.name, lambda i: size + FILL,
                                    warm_up, iterations, budget_ns)
            finally:
                block.close()
                block.unlink()
            results[str(size)] = out
    return results


def pipeline(processes, buffers, size, passes, parent_core, child_core):
    from concurrent.futures import ThreadPoolExecutor
    from multiprocessing import shared_memory
    import itertools
    import threading
    import zlib
    pin(0, parent_core)
    blocks = []
    try:
        expected = []
        for i in range(buffers):
            block = shared_memory.SharedMemory(create=True, size=size)
            blocks.append(block)
            pattern = bytes(((j * 131 + i * 7919) >> 3) & 0xFF for j in range(4096))
            block.buf[:size] = pattern * (size // 4096)
            expected.append(zlib.crc32(block.buf))
        names = [block.name for block in blocks]
        counter = itertools.count()
        lock = threading.Lock()

        def pin_thread():
            with lock:
                index = next(counter)
            pin(0, worker_core(index, processes, parent_core, child_core))

        def pool_pass(pool):
            start = time.perf_counter_ns()
            got = pool.map(shm_digest, names, chunksize=1)
            took = time.perf_counter_ns() - start
            if got != expected:
                fail('pipeline: a worker digested a block wrongly')
            return took

        def threads_pass(executor):
            start = time.perf_counter_ns()
            got = list(executor.map(lambda block: zlib.crc32(block.buf), blocks))
            took = time.perf_counter_ns() - start
            if got != expected:
                fail('pipeline: a thread digested a block wrongly')
            return took

        with pinned_pool(processes, parent_core, child_core) as pool, \
                ThreadPoolExecutor(processes, initializer=pin_thread) as executor:
            first = pool_pass(pool)
            threads_first = threads_pass(executor)
            steady, threads = [], []
            for round in range(passes):
                if round % 2 == 0:
                    threads.append(threads_pass(executor))
                    steady.append(pool_pass(pool))
                else:
                    steady.append(pool_pass(pool))
                    threads.append(threads_pass(executor))
        return {'first_ns': first, 'steady_ns': steady, 'threads_first_ns': threads_first, 'threads_ns': threads}
    finally:
        for block in blocks:
            block.close()
            block.unlink()


def main(argv):
    commands = {'latency': latency, 'throughput': throughput, 'handoff': handoff,
                'shm_handoff': shm_handoff, 'pipeline': pipeline}
    if len(argv) < 2 or argv[1] not in commands:
        fail('usage: pool.py latency|throughput|handoff ARGS...')
    result = commands[argv[1]](*[int(arg) for arg in argv[2:]])
    json.dump(result, sys.stdout)


if __name__ == '__main__':
    main(sys.argv)
