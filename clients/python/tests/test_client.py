"""zolog_client against a real zolog: through `zolog serve`, through a `zolog append` child, the
reference files, the full-queue policy, a server that stops mid-run, and exit-time flushing.

Every wait is bounded; no assertion is about time."""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

from conftest import Server, read_log
from zolog_client import ZologClient, ZologWarning, ZOTrainingCallback, should_checkpoint


def epochs(events, kind="EpochEnded"):
    return [e["payload"]["epoch"] for e in events if e["payload"]["type"] == kind]


# ---------------------------------------------------------------------------------------------
# should_checkpoint: the reference table, exactly.

CHECKPOINT_TABLE = [
    ((9, 100), {}, True),
    ((19, 100), {}, True),
    ((99, 100), {}, True),
    ((6, 7), {}, True),
    ((0, 1), {}, True),
    ((8, 100), {}, False),
    ((5, 100), {}, False),
    ((-1, 100), {}, False),
    ((0, 0), {}, False),
    ((10, 10), {}, False),
    ((5, 10), {"every": 20}, False),
    ((3, 100), {"is_best": True}, True),
    ((0, 0), {"is_best": True}, True),
    ((10, 10), {"is_best": True}, True),
    ((0, 5), {"every": 0}, True),
    ((3, 5), {"every": 0}, True),
    ((2, 5), {"every": -3}, True),
    ((9, 10), {"every": 20}, True),
]


@pytest.mark.parametrize("args,kwargs,want", CHECKPOINT_TABLE)
def test_should_checkpoint_reference_table(args, kwargs, want):
    assert should_checkpoint(*args, **kwargs) is want
    assert ZologClient.should_checkpoint(*args, **kwargs) is want


def test_should_checkpoint_total_25_fires_at_9_19_24():
    assert [e for e in range(25) if should_checkpoint(e, 25)] == [9, 19, 24]


# ---------------------------------------------------------------------------------------------
# Through zolog serve.


def run_training(c, epochs_n=3):
    c.on_training_start(total_epochs=epochs_n, config={"lr": 3e-4, "batch": 128})
    for e in range(epochs_n):
        c.log(step=e * 10 + 5, train_loss=0.5 / (e + 1))
        c.on_epoch_end(
            epoch=e,
            total_epochs=epochs_n,
            metrics={"train_loss": 1.0 / (e + 1), "val_loss": float("nan") if e == 1 else 0.9 / (e + 1)},
            learning_rate=1e-3,
        )
        if should_checkpoint(e, epochs_n, every=2):
            c.on_checkpoint_saved(path="ckpt/e%d.pt" % e, epoch=e, metrics={"val_acc": 0.5})
    c.on_training_end(final_metrics={"val_acc": 0.75, "inf": float("inf"), "ninf": float("-inf")})


def test_every_method_through_the_server(zolog_bin, project, server):
    with ZologClient("exp-001", "resnet") as c:
        run_training(c)
        assert c.flush(timeout=20)
        assert c.stats()["transport"] == "serve"
    s = c.stats()
    assert (s["logged"], s["appended"], s["dropped"], s["rejected"], s["failed"]) == (10, 10, 0, 0, 0), s
    evs = read_log(zolog_bin, project, "--exp", "exp-001")
    kinds = [e["payload"]["type"] for e in evs]
    assert kinds == [
        "TrainingStarted",
        "EpochEnded", "EpochEnded",
        "EpochEnded", "EpochEnded", "CheckpointSaved",
        "EpochEnded", "EpochEnded", "CheckpointSaved",
        "TrainingEnded",
    ]
    start = evs[0]["payload"]
    assert start["total_epochs"] == 3 and start["config"] == {"lr": 3e-4, "batch": 128}
    assert start["pid"] == os.getpid() and evs[0]["source"]["pid"] == os.getpid()
    assert evs[0]["source"]["kind"] == "trainer"
    steps = [e["payload"] for e in evs if e["payload"]["type"] == "EpochEnded" and e["payload"]["step"]]
    assert [(p["epoch"], p["step"]) for p in steps] == [(0, 5), (1, 15), (2, 25)]
    # NaN and the infinities round-trip (zolog prints them as strings in strict JSON).
    epoch1 = [e["payload"] for e in evs if e["payload"]["type"] == "EpochEnded" and e["payload"]["step"] is None][1]
    assert epoch1["metrics"]["val_loss"] == "NaN"
    assert evs[-1]["payload"]["metrics"] == {"val_acc": 0.75, "inf": "Infinity", "ninf": "-Infinity"}
    assert evs[-1]["payload"]["epoch"] == 2
    server.stop()


def test_refused_events_are_counted_not_lost_silently(zolog_bin, project, server):
    c = ZologClient("exp-001")
    c.on_epoch_end(epoch=0, total_epochs=2, metrics={"loss": 1.0})
    c.on_epoch_end(epoch=-1, total_epochs=2, metrics={"loss": 1.0})  # epochs count from 0
    c.on_epoch_end(epoch=1, total_epochs=2, metrics={"loss": 0.5})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c.close()
    s = c.stats()
    assert (s["appended"], s["rejected"]) == (2, 1), s
    assert any("epoch" in e for e in s["errors"]), s["errors"]
    assert any(issubclass(x.category, ZologWarning) and "rejected 1" in str(x.message) for x in w)
    assert epochs(read_log(zolog_bin, project)) == [0, 1]


def test_tcp_with_a_token(zolog_bin, project, tmp_path):
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    token.chmod(0o600)
    srv = Server(zolog_bin, project, "--tcp", "127.0.0.1:0", "--token-file", str(token))
    try:
        port = int(srv.banner.split("tcp:127.0.0.1:")[1].split()[0])
        with ZologClient("exp-002", store=project, tcp=("127.0.0.1", port), token="tok-123") as c:
            c.on_epoch_end(epoch=0, total_epochs=1, metrics={"loss": 1.0})
        assert c.stats()["appended"] == 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with ZologClient("exp-002", tcp=("127.0.0.1", port), token="wrong", zolog_bin="/nonexistent") as bad:
                bad.on_epoch_end(epoch=1, total_epochs=1, metrics={})
        assert bad.stats()["failed"] == 1
    finally:
        srv.stop()
    assert epochs(read_log(zolog_bin, project)) == [0]


# ---------------------------------------------------------------------------------------------
# Through a `zolog append` child.


def test_without_a_server_a_zolog_append_child_does_it(zolog_bin, project):
    c = ZologClient("exp-003")
    for e in range(50):
        c.on_epoch_end(epoch=e, total_epochs=50, metrics={"loss": 1.0 / (e + 1)})
    assert c.flush(timeout=30)
    # Flushed: durable and readable while the client is still open.
    assert epochs(read_log(zolog_bin, project)) == list(range(50))
    c.on_training_end(final_metrics={"loss": 0.02})
    c.close()
    s = c.stats()
    assert (s["logged"], s["appended"], s["failed"]) == (51, 51, 0), s
    evs = read_log(zolog_bin, project)
    assert evs[-1]["payload"]["type"] == "TrainingEnded"
    assert evs[-1]["source"]["pid"] == os.getpid(), "the trainer's pid, not the child's"


def test_without_store_or_binary_events_are_counted_as_failed(project, tmp_path):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = ZologClient("exp-004", zolog_bin=str(tmp_path / "no-such-zolog"))
        c.on_epoch_end(epoch=0, total_epochs=1, metrics={})
        c.close()
    assert c.stats()["failed"] == 1
    assert any("failed 1" in str(x.message) for x in w)


# ---------------------------------------------------------------------------------------------
# The reference files.

REF_KEYS = [
    "timestamp", "event", "experiment_id", "experiment_name", "epoch", "total_epochs", "metrics",
    "learning_rate", "checkpoint_path", "wall_time_seconds", "gpu_memory_mb", "config",
]
STATUS_KEYS = [
    "experiment_id", "experiment_name", "epoch", "total_epochs", "metrics", "best_metrics",
    "learning_rate", "wall_time_seconds", "gpu_memory_mb", "is_training", "checkpoints",
    "metrics_history", "config",
]


def test_reference_metrics_jsonl_and_status_are_written(zolog_bin, project, tmp_path):
    logs = tmp_path / "logs" / "training"
    with ZOTrainingCallback(logs, "exp-005", "ResNet-18 / CIFAR-10") as cb:
        run_training(cb)
    lines = (logs / "metrics.jsonl").read_text().splitlines()
    entries = [json.loads(l) for l in lines]
    assert [list(e) for e in entries] == [REF_KEYS] * len(entries)
    assert [e["event"] for e in entries] == [
        "training_start", "epoch_end", "epoch_end", "checkpoint_saved", "epoch_end",
        "checkpoint_saved", "training_end",
    ]
    start, e0, e1, ck1 = entries[:4]
    assert start["total_epochs"] == 3 and start["config"] == {"lr": 3e-4, "batch": 128}
    assert start["epoch"] is None and start["metrics"] == {}
    assert e0["epoch"] == 0 and e0["total_epochs"] == 3 and e0["learning_rate"] == 1e-3
    assert isinstance(e0["wall_time_seconds"], float) and e0["gpu_memory_mb"] is None
    assert ck1["checkpoint_path"] == "ckpt/e1.pt" and ck1["total_epochs"] is None
    assert ck1["epoch"] == 1 and ck1["metrics"] == {"val_acc": 0.5}
    assert e0["experiment_name"] == "ResNet-18 / CIFAR-10"
    assert e0["timestamp"].endswith("+00:00")
    # Python's own json form: bare NaN in the file, as the platform writes it.
    assert '"val_loss": NaN' in lines[2]
    assert math.isnan(e1["metrics"]["val_loss"])
    end = entries[-1]
    assert end["metrics"]["inf"] == float("inf") and end["epoch"] is None
    status = json.loads((logs / "training_status.json").read_text())
    assert list(status) == STATUS_KEYS
    assert status["is_training"] is False and status["total_epochs"] == 0 and status["epoch"] == 2
    assert status["best_metrics"]["train_loss"] == pytest.approx(1.0 / 3)
    assert [h["epoch"] for h in status["metrics_history"]] == [0, 1, 2]
    assert [c["path"] for c in status["checkpoints"]] == ["ckpt/e1.pt", "ckpt/e2.pt"]
    # And zolog got the same run.
    assert len(read_log(zolog_bin, project, "--exp", "exp-005")) == 10


def test_log_dir_only(tmp_path):
    with ZologClient("exp-006", store=False, log_dir=tmp_path / "l") as c:
        c.on_epoch_end(epoch=0, total_epochs=1, metrics={"loss": 1.0})
    assert c.stats()["failed"] == 0
    assert len((tmp_path / "l" / "metrics.jsonl").read_text().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# A full queue: counted, never silent.


class StalledServer:
    """A fake server at .zo/serve.sock that greets and then never reads.

    ``close`` must leave no connection open, including one accepted while it runs: a connection
    left open would stall the client for its full 60 s answer timeout (the accept thread needs
    the GIL after `accept` returns, and a busy training loop can hold it past `close`)."""

    def __init__(self, project: Path):
        self.path = project / ".zo" / "serve.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(8)
        self.conns = []
        self.lock = threading.Lock()
        self.closed = False
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                if self.closed:
                    c.close()
                    return
                self.conns.append(c)
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                c.sendall(b'{"zolog":"0.1.0","protocol":1,"max_line":1048576,"pid":1}\n')
            except OSError:
                pass

    def close(self):
        with self.lock:
            self.closed = True
            conns, self.conns = self.conns, []
        # shutdown, unlike close, stops listening at once and wakes a thread blocked in accept.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.t.join(timeout=10)
        assert not self.t.is_alive(), "the stalled server's accept thread did not stop"
        for c in conns:
            c.close()
        self.path.unlink()


@pytest.mark.parametrize("policy,calls", [("drop", 3000), ("block", 600)])
def test_a_full_queue_drops_with_a_count(zolog_bin, project, policy, calls):
    stalled = StalledServer(project)
    try:
        c = ZologClient("exp-007", max_queue=100, on_full=policy, block_timeout=0.005, flush_interval=0.001)
        big = {"m%d" % i: float(i) for i in range(200)}
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            for e in range(calls):
                c.on_epoch_end(epoch=e, total_epochs=calls, metrics=big)
        s = c.stats()
        assert s["dropped"] > 0, s
        assert s["logged"] + s["dropped"] == calls
        assert any(issubclass(x.category, ZologWarning) and "dropping" in str(x.message) for x in w)
    finally:
        # The stalled server goes away: the client falls back to a `zolog append` child.
        stalled.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.close(timeout=60)
    s = c.stats()
    assert s["logged"] + s["dropped"] == calls
    # Everything that was not dropped is in the log (a vanished server's unconfirmed lines are
    # resent: at least once).
    logged = set(epochs(read_log(zolog_bin, project)))
    assert len(logged) == s["logged"], s
    assert s["appended"] >= s["logged"], s


# ---------------------------------------------------------------------------------------------
# The server stops mid-run; exit-time flush.


def test_a_server_that_stops_mid_run_loses_and_duplicates_nothing(zolog_bin, project):
    srv = Server(zolog_bin, project)
    # A tight loop outruns the switch to a `zolog append` child: block (bounded) rather than drop.
    c = ZologClient("exp-008", flush_interval=0.001, block_timeout=30.0)
    stopper = threading.Thread(target=srv.stop)
    e = 0
    # Stream while the server stops gracefully (bounded: at most 200,000 events), then some more.
    for e in range(200):
        c.on_epoch_end(epoch=e, total_epochs=0, metrics={"loss": 1.0})
    assert c.flush(timeout=20)
    assert c.stats()["transport"] == "serve"
    stopper.start()
    while stopper.is_alive() and e < 200_000:
        e += 1
        c.on_epoch_end(epoch=e, total_epochs=0, metrics={"loss": 1.0})
    stopper.join(timeout=60)
    for _ in range(500):
        e += 1
        c.on_epoch_end(epoch=e, total_epochs=0, metrics={"loss": 1.0})
    c.close(timeout=60)
    s = c.stats()
    total = e + 1
    assert any("shutting down" in m for m in s["errors"]), s["errors"]
    assert (s["appended"], s["dropped"], s["failed"], s["resent"]) == (total, 0, 0, 0), s
    got = epochs(read_log(zolog_bin, project))
    assert sorted(got) == list(range(total)), "each epoch exactly once"


def test_events_are_flushed_at_interpreter_exit(zolog_bin, project):
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, %r)
        from zolog_client import ZologClient
        c = ZologClient("exp-009")
        for e in range(20):
            c.on_epoch_end(epoch=e, total_epochs=20, metrics={"loss": 1.0})
        # no close(): atexit does it
        """
        % str(Path(__file__).resolve().parents[1])
    )
    subprocess.run([sys.executable, "-c", script], cwd=project, check=True, timeout=60)
    assert epochs(read_log(zolog_bin, project)) == list(range(20))
