"""Hostile completions under `--code_execution`: each attack is written to exit 0 *if it succeeds*, so a
contained attack returns False; positive controls show that the sandbox runs ordinary code."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import psutil
import pytest

from strata.errors import StrataError
from strata.training import sandbox
from strata.training.rewards import make_reward
from strata.training.sandbox import run_sandboxed

if shutil.which("bwrap") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the sandbox tests: .ci/run installs bubblewrap")
    pytest.skip("bubblewrap is not installed (apt install bubblewrap)", allow_module_level=True)


def test_ordinary_code_runs_and_a_correct_solution_scores_one():
    assert run_sandboxed("import json, math, re\nassert math.gcd(12, 18) == 6\nopen('out.txt', 'w').write('ok')",
                         timeout_s=10)
    reward = make_reward("code", code_execution=True)
    completion = "def task_func(x):\n    return sorted(x)\n"
    assert reward(["Write task_func"], [completion], test=["assert task_func([3, 1, 2]) == [1, 2, 3]"]) == [1.0]


def test_host_files_are_not_visible():
    assert not run_sandboxed("assert 'root' in open('/etc/passwd').read()", timeout_s=10)
    assert not run_sandboxed(f"import os\nassert os.listdir({os.getcwd()!r})", timeout_s=10)


def test_the_training_process_environment_is_out_of_reach(monkeypatch):
    monkeypatch.setenv("STRATA_TEST_SECRET", "hunter2-token")
    steal = f"""
import glob, os
assert 'STRATA_TEST_SECRET' not in os.environ
found = False
for path in glob.glob('/proc/*/environ') + ['/proc/{os.getpid()}/environ', '/proc/{os.getppid()}/environ']:
    try:
        found = found or b'hunter2-token' in open(path, 'rb').read()
    except OSError:
        pass
assert found
"""
    assert not run_sandboxed(steal, timeout_s=10)


def test_nothing_is_written_outside_the_work_folder(tmp_path):
    target = tmp_path / "escaped.txt"
    assert not run_sandboxed(f"open({str(target)!r}, 'w').write('out')", timeout_s=10)
    assert not run_sandboxed("open('/usr/escaped.txt', 'w').write('out')", timeout_s=10)
    assert not target.exists() and not os.path.exists("/usr/escaped.txt")


@pytest.fixture()
def listener():
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    accepted: list[tuple] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, address = server.accept()
                accepted.append(address)
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_no_connection_reaches_a_listener_on_localhost(listener):
    port, accepted = listener
    attacks = [
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
        f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))",
        "import subprocess, sys\nsubprocess.run([sys.executable, '-c', "
        f"\"import importlib, socket; importlib.reload(socket); socket.create_connection(('127.0.0.1', {port}), 2)\"],"
        " check=True)",
    ]
    for attack in attacks:
        assert not run_sandboxed(attack, timeout_s=10), attack
    # control: the same connection from outside the sandbox is accepted
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    time.sleep(0.5)
    assert len(accepted) == 1


def _sandboxed_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "/sandbox/" in cmdline or "strata-sandbox-marker" in cmdline:
            if process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def test_a_fork_bomb_is_bounded_and_leaves_nothing():
    bomb = ("import os, time\nfor _ in range(500):\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n"
            "os._exit(0)")
    started = time.monotonic()
    assert not run_sandboxed(bomb, timeout_s=5)  # the process limit stops the loop with an error
    assert time.monotonic() - started < 15
    time.sleep(1)
    assert _sandboxed_processes() == []


def test_a_detached_child_does_not_outlive_the_call(tmp_path):
    detach = ("import subprocess, sys\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', 'strata-sandbox-marker'],"
              " start_new_session=True)\n")
    assert run_sandboxed(detach, timeout_s=10)  # it "succeeds" ...
    time.sleep(1)
    assert _sandboxed_processes() == []  # ... but its child died with the sandbox


def test_an_infinite_loop_and_a_huge_allocation_are_stopped():
    started = time.monotonic()
    assert not run_sandboxed("while True:\n    pass", timeout_s=2)
    assert time.monotonic() - started < 6
    started = time.monotonic()
    assert not run_sandboxed("x = bytearray(20 * 1024**3)\nx[-1] = 1", timeout_s=10)
    assert time.monotonic() - started < 10


def test_without_bubblewrap_code_execution_refuses_to_start(monkeypatch):
    monkeypatch.setattr(sandbox, "_checked", False)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(StrataError, match="bwrap is not installed"):
        make_reward("code", code_execution=True)
