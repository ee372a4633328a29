"""Fixtures: a built zolog binary (ZOLOG_BIN, default <repo>/target/debug/zolog), a fresh store,
and a running `zolog serve`."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(scope="session")
def zolog_bin() -> str:
    b = os.environ.get("ZOLOG_BIN") or str(ROOT / "target" / "debug" / "zolog")
    if not Path(b).is_file():
        pytest.fail("no zolog binary at %s: run `cargo build` first, or set ZOLOG_BIN" % b)
    os.environ["ZOLOG_BIN"] = b
    return b


@pytest.fixture
def project(tmp_path, zolog_bin, monkeypatch) -> Path:
    subprocess.run([zolog_bin, "init", "--project", "t"], cwd=tmp_path, check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZO_STORE", raising=False)
    return tmp_path


class Server:
    def __init__(self, zolog_bin: str, project: Path, *args: str):
        self.proc = subprocess.Popen(
            [zolog_bin, "serve", "--store", str(project), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.banner = self.proc.stdout.readline()
        assert self.banner.startswith("serving"), self.banner

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, (self.proc.returncode, out)
        return out


@pytest.fixture
def server(zolog_bin, project):
    s = Server(zolog_bin, project)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def read_log(zolog_bin: str, project: Path, *args: str):
    out = subprocess.run(
        [zolog_bin, "log", "--store", str(project), *args], check=True, capture_output=True, text=True
    ).stdout
    return [json.loads(line) for line in out.splitlines()]
