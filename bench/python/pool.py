"""Python's multiprocessing.Pool, measured for shmpool-bench (src/peers/python.rs).

    python3 pool.py latency WARM_UP ITERATIONS BUDGET_NS
    python3 pool.py throughput PROCESSES TASKS CHUNKSIZE RUNS    (CHUNKSIZE 0: map's default)
    python3 pool.py handoff BYTES WARM_UP ITERATIONS BUDGET_NS

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


def latency(warm_up, iterations, budget_ns):
    with mp.Pool(1) as pool:
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


def handoff(size, warm_up, iterations, budget_ns):
    buf = bytes([FILL]) * size
    with mp.Pool(1) as pool:
        return timed_applies(pool, length_plus_last, lambda i: buf, lambda i: size + FILL,
                             warm_up, iterations, budget_ns)


def main(argv):
    commands = {'latency': latency, 'throughput': throughput, 'handoff': handoff}
    if len(argv) < 2 or argv[1] not in commands:
        fail('usage: pool.py latency|throughput|handoff ARGS...')
    result = commands[argv[1]](*[int(arg) for arg in argv[2:]])
    json.dump(result, sys.stdout)


if __name__ == '__main__':
    main(sys.argv)
