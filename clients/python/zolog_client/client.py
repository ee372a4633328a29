"""A training-loop client for zolog: the zo platform's ZOTrainingCallback methods, recorded as zolog
events without ever waiting on the disk in the training loop.

Every ``on_*`` / ``log`` call only timestamps its arguments and appends them to a bounded
in-memory queue (about a microsecond). A background thread turns them into JSON lines and sends
them to ``zolog serve`` over ``.zo/serve.sock`` (or a loopback TCP port with a token) when a
server runs, and otherwise to a ``zolog append`` child process on a pipe. ``flush()`` and
``close()`` (also run by the context manager and at interpreter exit) wait until what was logged
is durable.

When the queue is full (the transport is slower than the training loop), the call waits up to
``block_timeout`` seconds for room (``on_full="block"``, the default), then drops the event;
``on_full="drop"`` drops at once. Every drop is counted in ``stats()["dropped"]`` and warned
about; nothing is lost without being counted.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import selectors
import socket
import subprocess
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .cadence import should_checkpoint

__all__ = ["ZologClient", "ZOTrainingCallback", "find_store", "ZologWarning"]

PathLike = Union[str, "os.PathLike[str]"]

# Queue item kinds.
_START, _EPOCH, _CKPT, _END, _STEP, _FLUSH, _STOP = range(7)


class ZologWarning(UserWarning):
    """Events were dropped, refused or could not be delivered."""


def find_store(store: Optional[PathLike] = None) -> Optional[Path]:
    """The ``.zo`` directory: ``store`` (a ``.zo`` directory or a project holding one), else
    ``$ZO_STORE``, else found by walking up from the current directory as zolog does."""

    def is_store(p: Path) -> bool:
        return (p / "log").is_dir()

    if store is None:
        store = os.environ.get("ZO_STORE") or None
    if store is not None:
        p = Path(store)
        return p if is_store(p) or p.name == ".zo" else p / ".zo"
    cwd = Path.cwd()
    for d in (cwd, *cwd.parents):
        if is_store(d):
            return d
        if is_store(d / ".zo"):
            return d / ".zo"
    return None


_second_cache: List[Any] = [None, ""]


def _rfc3339(t_ns: int) -> str:
    s, ns = divmod(t_ns, 1_000_000_000)
    if _second_cache[0] != s:
        _second_cache[0] = s
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
    return "%s.%09dZ" % (_second_cache[1], ns)


_INF = float("inf")


def _num(x: Any) -> str:
    """A float as JSON the way Python's json writes it (bare NaN/Infinity), or null."""
    if x is None:
        return "null"
    f = float(x)
    if f != f:
        return "NaN"
    if f == _INF:
        return "Infinity"
    if f == -_INF:
        return "-Infinity"
    return repr(f)


_KEYS: Dict[Any, str] = {}


def _metrics_json(metrics: Dict[Any, Any]) -> str:
    """A metric map as JSON (bare NaN/Infinity), names escaped once and cached."""
    parts = []
    for k, v in metrics.items():
        kj = _KEYS.get(k)
        if kj is None:
            kj = json.dumps(str(k)) + ":"
            if len(_KEYS) < 10_000:
                _KEYS[k] = kj
        parts.append(kj + _num(v))
    return "{" + ",".join(parts) + "}"


def _int(x: Any) -> str:
    return str(x) if type(x) is int else json.dumps(x)


def _iso_micro(t_ns: int) -> str:
    """The reference's timestamp form: ``datetime.now(UTC).isoformat()``."""
    s, ns = divmod(t_ns, 1_000_000_000)
    return datetime.fromtimestamp(s, timezone.utc).replace(microsecond=ns // 1000).isoformat()


def _floats(metrics: Optional[Dict[str, Any]]) -> Dict[str, float]:
    return {str(k): float(v) for k, v in (metrics or {}).items()}


class _Lost(Exception):
    """The transport went away; ``unsent`` lines were certainly not appended, ``uncertain`` may
    or may not have been."""

    def __init__(self, why: str, unsent: List[int], uncertain: List[int]):
        super().__init__(why)
        self.unsent = unsent
        self.uncertain = uncertain


class _Server:
    """A connection to ``zolog serve`` in ``#acks flush`` mode: each send is event lines plus a
    ``#flush``, answered once all of them are durable."""

    def __init__(self, sock: socket.socket, endpoint: str, auth: bool):
        self.sock = sock
        self.endpoint = endpoint
        self.buf = b""
        self.lines = 1 if auth else 0  # lines sent so far
        greeting = self._read_line(deadline=time.monotonic() + 10.0)
        if greeting is None:
            raise OSError("zolog serve closed the connection without a greeting")
        g = json.loads(greeting)
        if "error" in g:
            raise OSError("zolog serve refused the connection: %s" % g["error"])
        self.max_line = int(g.get("max_line", 1 << 20))
        self.sock.sendall(b"#acks flush\n")
        self.lines += 1

    @classmethod
    def connect(
        cls,
        store: Optional[Path],
        tcp: Optional[Tuple[str, int]],
        token: Optional[str],
        timeout: float,
    ) -> Optional["_Server"]:
        try:
            if tcp is not None:
                s = socket.create_connection(tcp, timeout=timeout)
                s.sendall(("AUTH %s\n" % token).encode())
                return cls(s, "%s:%d" % tcp, auth=True)
            if store is None:
                return None
            path = store / "serve.sock"
            if not path.exists():
                return None
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(str(path))
            return cls(s, str(path), auth=False)
        except (OSError, ValueError):
            return None

    def _read_line(self, deadline: float) -> Optional[bytes]:
        while b"\n" not in self.buf:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def send(self, lines: List[str], on_error) -> None:
        """Send event lines and wait until all are durable. ``on_error(i, message)`` is called
        for each line the server refused. Raises ``_Lost`` if the server goes away first."""
        base = self.lines
        data = ("\n".join(lines) + "\n#flush\n").encode()
        self.lines += len(lines) + 1
        flush_line = self.lines
        self.sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        view = memoryview(data)
        refused = set()
        try:
            while True:
                for _key, ev in sel.select(timeout=60.0) or [(None, 0)]:
                    if ev == 0:
                        raise _Lost("no answer from zolog serve for 60 s", [], self._rest(lines, refused))
                    if ev & selectors.EVENT_WRITE and view:
                        try:
                            n = self.sock.send(view[:262144])
                        except (BlockingIOError, InterruptedError):
                            n = 0
                        except OSError:
                            # The server stopped reading; its responses say how far it got.
                            view = view[:0]
                            n = 0
                        view = view[n:]
                        if not view:
                            sel.modify(self.sock, selectors.EVENT_READ)
                    if ev & selectors.EVENT_READ:
                        try:
                            chunk = self.sock.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            chunk = b""
                        if not chunk:
                            raise _Lost(
                                "zolog serve closed the connection", [], self._rest(lines, refused)
                            )
                        self.buf += chunk
                        while b"\n" in self.buf:
                            raw, _, self.buf = self.buf.partition(b"\n")
                            r = json.loads(raw)
                            line = r.get("line")
                            if "bye" in r:
                                # Lines after `line` were never read: not appended.
                                last = int(line or 0)
                                unsent = [
                                    i
                                    for i in range(len(lines))
                                    if base + 1 + i > last and i not in refused
                                ]
                                raise _Lost("zolog serve is shutting down", unsent, [])
                            if "error" in r:
                                if r.get("fatal") or line is None:
                                    raise _Lost(r["error"], [], self._rest(lines, refused))
                                i = int(line) - base - 1
                                if 0 <= i < len(lines):
                                    refused.add(i)
                                    on_error(i, r["error"])
                            elif "flushed" in r and line == flush_line:
                                return
        finally:
            sel.close()
            try:
                self.sock.setblocking(True)
            except OSError:
                pass

    @staticmethod
    def _rest(lines: List[str], refused) -> List[int]:
        return [i for i in range(len(lines)) if i not in refused]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Child:
    """A ``zolog append`` child reading event lines on its stdin. What it appends is confirmed when
    it exits (``confirm``)."""

    def __init__(self, zolog_bin: str, store: Path):
        self.proc = subprocess.Popen(
            [zolog_bin, "append", "--store", str(store), "--source", "trainer", "--json", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.pending = 0
        self.err: List[str] = []
        self._err_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_reader.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            if len(self.err) < 100:
                self.err.append(raw.decode(errors="replace").rstrip())

    def send(self, lines: List[str]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(("\n".join(lines) + "\n").encode())
        self.proc.stdin.flush()
        self.pending += len(lines)

    def confirm(self, timeout: float = 60.0) -> Tuple[int, int, str]:
        """Close stdin and wait: (appended, rejected, error text)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            out = self.proc.stdout.read()
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return 0, 0, "zolog append did not finish in time"
        self._err_reader.join(timeout=5.0)
        try:
            summary = json.loads(out.decode() or "{}")
        except ValueError:
            summary = {}
        text = "; ".join(self.err[-5:])
        return int(summary.get("appended", 0)), int(summary.get("rejected", 0)), text

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5.0)
        except (OSError, subprocess.TimeoutExpired):
            pass


class ZologClient:
    """Record a training run as zolog events, with the methods of the zo platform's
    ``ZOTrainingCallback`` plus ``log(step, **metrics)`` and ``should_checkpoint``.

    Args:
        experiment_id: ``exp-NNN``.
        experiment_name: human-readable label (default: the id).
        store: the zolog store (``.zo`` directory or the project holding it); default
            ``$ZO_STORE`` or found from the current directory. ``False``: no zolog, only
            ``log_dir`` files.
        log_dir: also write the reference's ``metrics.jsonl`` and ``training_status.json`` here,
            exactly as ``ZOTrainingCallback`` does (written by the background thread).
        zolog_bin: the ``zolog`` executable for the fallback child (default ``$ZOLOG_BIN``, else
            ``zolog`` on ``PATH``).
        tcp, token: talk to ``zolog serve --tcp`` at ``(host, port)`` with this token instead of
            the Unix socket.
        max_queue: events held in memory at most.
        on_full: ``"block"`` (wait up to ``block_timeout`` seconds for room, then drop) or
            ``"drop"`` (drop at once). Drops are counted and warned about.
        flush_interval: seconds the background thread waits for more events before sending.
    """

    def __init__(
        self,
        experiment_id: str,
        experiment_name: str = "",
        *,
        store: Union[PathLike, None, bool] = None,
        log_dir: Optional[PathLike] = None,
        zolog_bin: Optional[str] = None,
        tcp: Optional[Tuple[str, int]] = None,
        token: Optional[str] = None,
        max_queue: int = 20000,
        on_full: str = "block",
        block_timeout: float = 0.1,
        flush_interval: float = 0.05,
        batch_max: int = 4096,
        connect_timeout: float = 5.0,
    ) -> None:
        if on_full not in ("block", "drop"):
            raise ValueError("on_full must be 'block' or 'drop'")
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name or experiment_id
        self._store = None if store is False else find_store(store)  # type: ignore[arg-type]
        self._use_zolog = store is not False and (self._store is not None or tcp is not None)
        self._tcp = tcp
        self._token = token
        self._zolog_bin = zolog_bin or os.environ.get("ZOLOG_BIN") or "zolog"
        self._connect_timeout = connect_timeout
        self._log_dir = Path(log_dir) if log_dir is not None else None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
        self._max = max(1, int(max_queue))
        self._wake_at = max(1, self._max // 4)
        self._block = on_full == "block"
        self._block_timeout = block_timeout
        self._interval = flush_interval
        self._batch_max = batch_max
        self._q: "collections.deque[tuple]" = collections.deque()
        self._wake = threading.Event()
        self._space = threading.Condition()
        self._waiting_for_space = 0
        self._start = 0.0
        self._next_epoch = 0
        self._last_epoch: Optional[int] = None
        self._closed = False
        self._lock = threading.Lock()
        self._stats = {
            "logged": 0,  # events accepted into the queue
            "appended": 0,  # confirmed durable in zolog
            "dropped": 0,  # queue full
            "rejected": 0,  # refused by zolog (invalid event)
            "failed": 0,  # could not be delivered at all
            "resent": 0,  # sent again after a server vanished mid-send (may be duplicated)
        }
        self._errors: "collections.deque[str]" = collections.deque(maxlen=20)
        self._warned = set()
        self._source = {"kind": "trainer", "pid": os.getpid(), "host": socket.gethostname()}
        # The constant parts of every envelope, serialized once.
        self._eid = json.dumps(experiment_id)
        self._head = '{"time":"%%s","source":%s,"payload":{"type":' % json.dumps(self._source).replace("%", "%%")
        self._transport: Union[_Server, _Child, None] = None
        # Reference-file state (background thread only).
        self._metrics_fh = None
        self._best: Dict[str, float] = {}
        self._history: List[Dict[str, float]] = []
        self._checkpoints: List[Dict[str, Any]] = []
        self._config: Dict[str, Any] = {}
        self._status: Optional[Dict[str, Any]] = None
        self._thread = threading.Thread(target=self._run, name="zolog-client", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # ----------------------------------------------------------------------------------------
    # The training loop's side: timestamp, enqueue, return.

    should_checkpoint = staticmethod(should_checkpoint)

    def _put(self, item: tuple) -> bool:
        q = self._q
        if len(q) < self._max:
            q.append(item)
            self._stats["logged"] += 1
            if len(q) == self._wake_at:
                self._wake.set()
            return True
        return self._put_full(item)

    def _put_full(self, item: tuple) -> bool:
        self._wake.set()
        if self._block and self._block_timeout > 0:
            deadline = time.monotonic() + self._block_timeout
            with self._space:
                self._waiting_for_space += 1
                try:
                    while len(self._q) >= self._max:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._space.wait(left):
                            break
                finally:
                    self._waiting_for_space -= 1
            if len(self._q) < self._max:
                self._q.append(item)
                self._stats["logged"] += 1
                return True
        self._stats["dropped"] += 1
        self._warn_once("dropped", "zolog client queue full: dropping events (see stats()['dropped'])")
        return False

    def on_training_start(self, total_epochs: int, config: Optional[Dict[str, Any]] = None) -> None:
        """Call before the training loop begins."""
        self._start = time.monotonic()
        self._put((_START, time.time_ns(), 0.0, total_epochs, dict(config or {})))

    def on_epoch_end(
        self,
        epoch: int,
        total_epochs: int,
        metrics: Dict[str, float],
        learning_rate: Optional[float] = None,
        gpu_memory_mb: Optional[float] = None,
    ) -> None:
        """Call after each epoch completes (epochs count from 0)."""
        wall = time.monotonic() - self._start if self._start else 0.0
        self._last_epoch = epoch
        self._next_epoch = epoch + 1
        self._put((_EPOCH, time.time_ns(), wall, epoch, total_epochs, dict(metrics), learning_rate, gpu_memory_mb))

    def on_checkpoint_saved(
        self,
        path: str,
        epoch: int,
        metrics: Optional[Dict[str, float]] = None,
        *,
        reason: Optional[str] = None,
        is_best: bool = False,
    ) -> None:
        """Call after a checkpoint is written. ``reason``: ``best``, ``last``, ``periodic``
        (default), ``fold``, ``manual`` or ``search_state``; ``is_best=True`` means ``best``."""
        reason = reason or ("best" if is_best else "periodic")
        self._put((_CKPT, time.time_ns(), 0.0, str(path), epoch, dict(metrics or {}), reason))

    def on_training_end(self, final_metrics: Optional[Dict[str, float]] = None) -> None:
        """Call after training completes; sends at once."""
        wall = time.monotonic() - self._start if self._start else 0.0
        self._put((_END, time.time_ns(), wall, dict(final_metrics or {}), self._last_epoch))
        self._wake.set()

    def log(self, step: int, **metrics: float) -> None:
        """Record metrics at a training step, as an EpochEnded event of the epoch in progress with
        ``step`` set (zolog only; the reference metrics.jsonl has no per-step form)."""
        self._put((_STEP, time.time_ns(), 0.0, self._next_epoch, step, metrics))

    # ----------------------------------------------------------------------------------------
    # Control.

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything logged so far is durable in zolog (or refused, dropped or
        failed, all counted). Returns False on timeout."""
        if self._closed:
            return True
        done = threading.Event()
        self._q.append((_FLUSH, done))
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush, stop the background thread and warn about anything not appended. Idempotent;
        also run at interpreter exit and by the context manager."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            atexit.unregister(self.close)
        except Exception:  # pragma: no cover - interpreter shutting down
            pass
        self._q.append((_STOP,))
        self._wake.set()
        self._thread.join(timeout)
        s = self._stats
        lost = s["dropped"] + s["rejected"] + s["failed"]
        if lost:
            warnings.warn(
                "zolog client for %s: %d event(s) not appended (dropped %d, rejected %d, failed %d); last errors: %s"
                % (self.experiment_id, lost, s["dropped"], s["rejected"], s["failed"], list(self._errors)[-3:]),
                ZologWarning,
                stacklevel=2,
            )

    def stats(self) -> Dict[str, Any]:
        """Counts of events logged, appended, dropped, rejected, failed and resent, and the
        transport in use (``serve``, ``append`` or ``none``)."""
        d: Dict[str, Any] = dict(self._stats)
        d["queued"] = sum(1 for it in list(self._q) if it[0] < _FLUSH)
        t = self._transport
        d["transport"] = "serve" if isinstance(t, _Server) else "append" if isinstance(t, _Child) else "none"
        d["errors"] = list(self._errors)
        return d

    def __enter__(self) -> "ZologClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------
    # The background thread.

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, ZologWarning, stacklevel=3)

    def _error(self, message: str) -> None:
        self._errors.append(message)

    def _run(self) -> None:
        stop = False
        while not stop:
            self._wake.wait(self._interval)
            self._wake.clear()
            while True:
                items = []
                while self._q and len(items) < self._batch_max:
                    items.append(self._q.popleft())
                if self._waiting_for_space:
                    with self._space:
                        self._space.notify_all()
                if not items:
                    break
                try:
                    stop = self._process(items) or stop
                except Exception as e:  # never let the thread die with events in hand
                    self._error("zolog client: %r" % (e,))
                    self._stats["failed"] += sum(1 for it in items if it[0] < _FLUSH)
                    for it in items:
                        if it[0] == _FLUSH:
                            it[1].set()
                        elif it[0] == _STOP:
                            stop = True
        self._finish_transport()
        if self._metrics_fh is not None:
            self._metrics_fh.close()

    def _process(self, items: List[tuple]) -> bool:
        """Handle one drained run of items; returns True on STOP."""
        lines: List[str] = []
        status_dirty = False
        stop = False
        for n, it in enumerate(items):
            if n % 64 == 63:
                time.sleep(0)  # let the training thread have the GIL between chunks
            kind = it[0]
            if kind in (_FLUSH, _STOP):
                self._deliver(lines)
                lines = []
                self._finish_transport()
                if kind == _FLUSH:
                    it[1].set()
                else:
                    stop = True
                continue
            try:
                line, ref = self._encode(it)
            except (TypeError, ValueError) as e:
                self._stats["rejected"] += 1
                self._error("event not encodable: %s" % e)
                continue
            if self._use_zolog:
                lines.append(line)
            if self._log_dir is not None and ref is not None:
                self._write_metrics_line(ref)
                status_dirty = status_dirty or kind in (_START, _EPOCH, _END)
        self._deliver(lines)
        if status_dirty:
            self._write_status()
        if self._metrics_fh is not None:
            self._metrics_fh.flush()
        return stop

    def _encode(self, it: tuple) -> Tuple[str, Optional[Dict[str, Any]]]:
        """One item as a zolog envelope line, and its metrics.jsonl entry (None without
        log_dir, or for per-step samples)."""
        kind, t_ns, wall = it[0], it[1], it[2]
        head = self._head % _rfc3339(t_ns)
        refs = self._log_dir is not None
        ref: Optional[Dict[str, Any]] = None
        if kind == _EPOCH:
            _, _, _, epoch, total, metrics, lr, gpu = it
            wall = round(wall, 1)
            line = '%s"EpochEnded","experiment_id":%s,"epoch":%s,"metrics":%s,"learning_rate":%s,"wall_time_seconds":%s,"gpu_memory_mb":%s}}' % (
                head, self._eid, _int(epoch), _metrics_json(metrics), _num(lr), _num(wall), _num(gpu))
            if refs:
                metrics = _floats(metrics)
                lr = None if lr is None else float(lr)
                gpu = None if gpu is None else float(gpu)
                ref = self._ref(t_ns, "epoch_end", epoch=epoch, total_epochs=total, metrics=metrics,
                                learning_rate=lr, wall_time_seconds=wall, gpu_memory_mb=gpu)
                self._status_epoch(epoch, total, metrics, lr, it[2], gpu)
            return line, ref
        if kind == _STEP:
            _, _, _, epoch, step, metrics = it
            line = '%s"EpochEnded","experiment_id":%s,"epoch":%s,"step":%s,"metrics":%s}}' % (
                head, self._eid, _int(epoch), _int(step), _metrics_json(metrics))
            return line, None
        if kind == _START:
            _, _, _, total, config = it
            payload: Dict[str, Any] = {
                "experiment_name": self.experiment_name,
                "pid": os.getpid(),
                "host": self._source["host"],
                "total_epochs": total,
                "config": config,
            }
            line = '%s"TrainingStarted","experiment_id":%s,%s}}' % (head, self._eid, json.dumps(payload)[1:-1])
            if refs:
                ref = self._ref(t_ns, "training_start", total_epochs=total, config=config)
                self._config = config
                self._status = dict(epoch=0, total_epochs=total, metrics={}, learning_rate=None,
                                    wall_time_seconds=0.0, gpu_memory_mb=None, is_training=True)
            return line, ref
        if kind == _CKPT:
            _, _, _, path, epoch, metrics, reason = it
            metrics = _floats(metrics)
            payload = {"epoch": epoch, "path": path, "reason": reason, "metrics": metrics}
            try:
                payload["size_bytes"] = os.path.getsize(path)
            except OSError:
                pass
            line = '%s"CheckpointSaved","experiment_id":%s,%s}}' % (head, self._eid, json.dumps(payload)[1:-1])
            if refs:
                ref = self._ref(t_ns, "checkpoint_saved", epoch=epoch, metrics=metrics, checkpoint_path=path)
                self._checkpoints.append({"epoch": epoch, "path": path, "metrics": metrics, "timestamp": ref["timestamp"]})
                self._checkpoints = self._checkpoints[-10:]
            return line, ref
        # _END
        _, _, _, final, last_epoch = it
        final = _floats(final)
        line = '%s"TrainingEnded","experiment_id":%s,"epoch":%s,"metrics":%s,"wall_time_seconds":%s}}' % (
            head, self._eid, _int(last_epoch), json.dumps(final), _num(round(wall, 1)))
        if refs:
            ref = self._ref(t_ns, "training_end", metrics=final, wall_time_seconds=round(wall, 1))
            self._status = dict(epoch=self._history[-1]["epoch"] if self._history else 0, total_epochs=0,
                                metrics=final, learning_rate=None, wall_time_seconds=wall,
                                gpu_memory_mb=None, is_training=False)
        return line, ref

    # --- Delivery --------------------------------------------------------------------------

    def _connect(self) -> Union[_Server, _Child, None]:
        if self._transport is not None:
            return self._transport
        srv = _Server.connect(self._store, self._tcp, self._token, self._connect_timeout)
        if srv is not None:
            self._transport = srv
        elif self._store is not None and self._tcp is None:
            try:
                self._transport = _Child(self._zolog_bin, self._store)
            except OSError as e:
                self._error("cannot start %s append: %s" % (self._zolog_bin, e))
                self._warn_once("no-transport", "zolog client: no zolog serve and cannot run `%s append`: %s" % (self._zolog_bin, e))
        return self._transport

    def _deliver(self, lines: List[str], attempt: int = 0) -> None:
        if not lines:
            return
        t = self._connect()
        if t is None:
            self._stats["failed"] += len(lines)
            return
        if isinstance(t, _Child):
            try:
                t.send(lines)
            except OSError as e:
                # The child died: what it confirms is in; the rest of its input is uncertain.
                self._finish_transport()
                self._error("zolog append child failed: %s" % e)
                self._stats["failed"] += len(lines)
            return

        n_refused = [0]

        def refused(i: int, message: str) -> None:
            n_refused[0] += 1
            self._stats["rejected"] += 1
            self._error(message)

        try:
            t.send(lines, refused)
            self._stats["appended"] += len(lines) - n_refused[0]
        except _Lost as lost:
            # Appended for sure: every line neither refused, unsent nor uncertain.
            t.close()
            self._transport = None
            self._stats["appended"] += len(lines) - n_refused[0] - len(lost.unsent) - len(lost.uncertain)
            again = [lines[i] for i in sorted(lost.unsent + lost.uncertain)]
            # Lines the server may have appended before vanishing are sent again: at least once.
            self._stats["resent"] += len(lost.uncertain)
            self._error("zolog serve: %s" % lost)
            if attempt < 3:
                self._deliver(again, attempt + 1)
            else:
                self._stats["failed"] += len(again)
        except OSError as e:
            t.close()
            self._transport = None
            self._error("zolog serve: %s" % e)
            if attempt < 3:
                self._stats["resent"] += len(lines)
                self._deliver(lines, attempt + 1)
            else:
                self._stats["failed"] += len(lines)

    def _finish_transport(self) -> None:
        t = self._transport
        if isinstance(t, _Child):
            self._transport = None
            appended, rejected, err = t.confirm()
            self._stats["appended"] += appended
            self._stats["rejected"] += rejected
            missing = t.pending - appended - rejected
            if missing > 0:
                self._stats["failed"] += missing
            if err and (rejected or missing):
                self._error(err)

    # --- The reference files ---------------------------------------------------------------

    def _ref(self, t_ns: int, event: str, **fields: Any) -> Dict[str, Any]:
        entry = {
            "timestamp": _iso_micro(t_ns),
            "event": event,
            "experiment_id": self.experiment_id,
            "experiment_name": self.experiment_name,
            "epoch": None,
            "total_epochs": None,
            "metrics": {},
            "learning_rate": None,
            "checkpoint_path": None,
            "wall_time_seconds": None,
            "gpu_memory_mb": None,
            "config": {},
        }
        entry.update(fields)
        return entry

    def _write_metrics_line(self, entry: Dict[str, Any]) -> None:
        assert self._log_dir is not None
        if self._metrics_fh is None:
            self._metrics_fh = open(self._log_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._metrics_fh.write(json.dumps(entry, default=str) + "\n")

    def _status_epoch(self, epoch, total, metrics, lr, wall, gpu) -> None:
        for key, val in metrics.items():
            is_loss = "loss" in key.lower()
            best = self._best.get(key)
            if best is None or (is_loss and val < best) or (not is_loss and val > best):
                self._best[key] = val
        self._history.append({"epoch": epoch, **metrics})
        self._history = self._history[-30:]
        self._status = dict(epoch=epoch, total_epochs=total, metrics=metrics, learning_rate=lr,
                            wall_time_seconds=wall, gpu_memory_mb=gpu, is_training=True)

    def _write_status(self) -> None:
        assert self._log_dir is not None
        s = self._status
        if s is None:
            return
        status = {
            "experiment_id": self.experiment_id,
            "experiment_name": self.experiment_name,
            "epoch": s["epoch"],
            "total_epochs": s["total_epochs"],
            "metrics": s["metrics"],
            "best_metrics": dict(self._best),
            "learning_rate": s["learning_rate"],
            "wall_time_seconds": round(s["wall_time_seconds"], 1),
            "gpu_memory_mb": s["gpu_memory_mb"],
            "is_training": s["is_training"],
            "checkpoints": list(self._checkpoints[-5:]),
            "metrics_history": list(self._history[-30:]),
            "config": self._config,
        }
        path = self._log_dir / "training_status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, default=str), encoding="utf-8")
        tmp.replace(path)


class ZOTrainingCallback(ZologClient):
    """Drop-in replacement for the zo platform's ``ZOTrainingCallback(log_dir, experiment_id,
    experiment_name)``: writes the same ``metrics.jsonl`` and ``training_status.json`` under
    ``log_dir`` and also records every call in zolog (when a store is found)."""

    def __init__(self, log_dir: PathLike, experiment_id: str, experiment_name: str = "", **kwargs: Any) -> None:
        super().__init__(experiment_id, experiment_name, log_dir=log_dir, **kwargs)
