"""Benchmark of the Python client: what it adds to a training loop, and its end-to-end rate.

    python clients/python/bench.py            # uses $ZOLOG_BIN or target/release/zolog

Prints Markdown rows for docs/benchmarks.md. Stores go under target/bench-serve/python/.
"""

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from zolog_client import ZologClient  # noqa: E402

ZOLOG = os.environ.get("ZOLOG_BIN") or str(ROOT / "target" / "release" / "zolog")
os.environ["ZOLOG_BIN"] = ZOLOG  # the client's fallback child
METRICS = {"train_loss": 0.2534, "val_loss": 0.3121, "val_acc": 0.9134, "grad_norm": 1.25}


def fresh(name):
    d = ROOT / "target" / "bench-serve" / "python" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    subprocess.run([ZOLOG, "init", "--project", "bench"], cwd=d, check=True, capture_output=True)
    return d


class Serve:
    def __init__(self, d):
        self.p = subprocess.Popen([ZOLOG, "serve", "--store", str(d)], stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().startswith("serving")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.communicate(timeout=60)


def call_cost(client, n=5000, rounds=7):
    """Mean time of one on_epoch_end call in the training thread (queue never full)."""
    per = []
    for r in range(rounds):
        t0 = time.perf_counter_ns()
        for e in range(n):
            client.on_epoch_end(e, n, METRICS, learning_rate=1e-3)
        per.append((time.perf_counter_ns() - t0) / n / 1000)
        client.flush(60)
    base = []
    for r in range(rounds):
        t0 = time.perf_counter_ns()
        for e in range(n):
            pass
        base.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(per) - statistics.median(base)


def call_p99(client, n=5000, rounds=5):
    """p50 and p99 of single on_epoch_end calls (each timed; includes ~0.1 µs of timer)."""
    times = []
    for r in range(rounds):
        for e in range(n):
            t0 = time.perf_counter_ns()
            client.on_epoch_end(e, n, METRICS, learning_rate=1e-3)
            times.append(time.perf_counter_ns() - t0)
        client.flush(60)
    times.sort()
    return times[len(times) // 2] / 1000, times[int(len(times) * 0.99)] / 1000


def throughput(d, n=100_000):
    """Events/s from the first call to the last event durable (close()), and the CPU the
    client's background thread spent per event (process CPU minus the training thread's)."""
    c = ZologClient("exp-001", store=d, block_timeout=60.0, max_queue=50_000)
    p0, t0m = time.process_time(), time.thread_time()
    t0 = time.perf_counter()
    for e in range(n):
        c.on_epoch_end(e, n, METRICS, learning_rate=1e-3)
    main_cpu = time.thread_time() - t0m
    c.close(timeout=300)
    dt = time.perf_counter() - t0
    bg_cpu = time.process_time() - p0 - main_cpu
    s = c.stats()
    assert s["appended"] == n and s["dropped"] == 0, s
    return n / dt, bg_cpu / n * 1e6


def main():
    print("Python %s, zolog %s, %d CPU(s)" % (sys.version.split()[0], ZOLOG, os.cpu_count()))
    print()
    print("| transport | on_epoch_end in the training thread: mean / p50 / p99 (µs) | background thread CPU per event (µs) | end-to-end durable events/s |")
    print("|---|---|---|---|")
    d = fresh("serve")
    srv = Serve(d)
    try:
        with ZologClient("exp-001", store=d) as c:
            cc = call_cost(c)
            p50, p99 = call_p99(c)
            assert c.stats()["transport"] == "serve"
        tp, bg = throughput(d)
    finally:
        srv.stop()
    print("| zolog serve (Unix socket) | %.2f / %.2f / %.2f | %.1f | %.0f |" % (cc, p50, p99, bg, tp))
    d = fresh("append")
    with ZologClient("exp-001", store=d) as c:
        cc = call_cost(c, rounds=3)
        p50, p99 = call_p99(c, rounds=3)
    tp, bg = throughput(d, n=50_000)
    print("| zolog append child | %.2f / %.2f / %.2f | %.1f | %.0f |" % (cc, p50, p99, bg, tp))


if __name__ == "__main__":
    main()
