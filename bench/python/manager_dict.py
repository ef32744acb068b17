"""The Python baseline of the shared-map rows: a multiprocessing.Process child
reads and updates a Manager().dict(); prints "reads/s updates/s".

Usage: python3 manager_dict.py READS UPDATES
"""
import multiprocessing as mp
import sys
import time


def child(d, lock, reads, updates, out):
    for _ in range(min(reads, 1000)):
        d['k']
    start = time.perf_counter()
    for _ in range(reads):
        d['k']
    read_time = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(updates):
        with lock:
            d['k'] += 1
    out.put((read_time, time.perf_counter() - start))


if __name__ == '__main__':
    reads, updates = int(sys.argv[1]), int(sys.argv[2])
    with mp.Manager() as manager:
        d = manager.dict()
        d['k'] = 0
        lock = mp.Lock()
        out = mp.Queue()
        p = mp.Process(target=child, args=(d, lock, reads, updates, out))
        p.start()
        read_time, update_time = out.get()
        p.join()
        if p.exitcode != 0 or d['k'] != updates:
            sys.exit('child failed, or d["k"] is %r after %d updates' % (d['k'], updates))
        print(reads / read_time, updates / update_time)
