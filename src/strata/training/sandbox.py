"""Running model-generated code (the `code` reward with `--code_execution`) inside bubblewrap.

What the candidate program gets, and nothing else:
* its own mount namespace: read-only /usr (and the /bin, /lib symlinks into it) and the Python installation,
  a fresh /proc of its own pid namespace, a minimal /dev, an empty tmpfs /tmp, and a fresh writable work folder
  (deleted afterwards). No /etc, /home, /root, /work or any other host path;
* its own network namespace (no interface but a down loopback: no connection anywhere, 127.0.0.1 included);
* its own pid namespace: it sees only its own processes, and when the call ends (exit, timeout) the namespace's
  init dies and the kernel kills every process left in it, detached or not (`--die-with-parent` too);
* an empty environment (the training process's variables, tokens included, are not passed);
* an unprivileged uid (nobody, 65534) when Strata runs as root; otherwise the caller's own uid, which is
  unprivileged already;
* limits: CPU seconds, address space (2 GiB), file size (64 MiB), open files, and processes.

Where bubblewrap is missing or cannot create the namespaces, `require_sandbox()` refuses with one line:
there is no weaker fallback. Not isolated: the CPU and memory bandwidth it shares with training while it runs,
and the kernel itself (bubblewrap is not a VM).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from strata.errors import StrataError

NOBODY = 65534
MEMORY_BYTES = 2 * 1024**3
FILE_BYTES = 64 * 1024**2
MAX_PROCESSES = 64

# Runs inside the sandbox as its first program (trusted, ours): limits, then the uid drop, then the candidate.
_LAUNCHER = """\
import os, resource, sys
cpu, memory, files, processes, drop = (int(v) for v in sys.argv[1:6])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (files, files))
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
if drop:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
os.execv(sys.executable, [sys.executable, "-I", "-S", "/sandbox/candidate.py"])
""".replace("NOBODY", str(NOBODY))


def _python_root() -> str:
    return os.path.realpath(sys.base_prefix)


# The Python installation appears here inside the sandbox: its host path may run through folders that
# nobody cannot enter (pyenv under /root), and Python finds its standard library from its own location.
PYTHON_MOUNT = "/opt/strata-python"


def _bwrap_command(work: Path, timeout_s: float, as_root: bool) -> list[str]:
    python = os.path.join(PYTHON_MOUNT, "bin", os.path.basename(os.path.realpath(sys.executable)))
    namespaces = (["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
                  if as_root else ["--unshare-all"])
    mounts = ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            mounts += ["--symlink", os.readlink(target), f"/{link}"]
        elif target.is_dir():
            mounts += ["--ro-bind", str(target), f"/{link}"]
    mounts += ["--perms", "0755", "--dir", os.path.dirname(PYTHON_MOUNT), "--ro-bind", _python_root(), PYTHON_MOUNT]
    mounts += ["--bind", str(work), "/sandbox", "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    limits = [str(int(timeout_s) + 1), str(MEMORY_BYTES), str(FILE_BYTES), str(MAX_PROCESSES), "1" if as_root else "0"]
    return ["bwrap", *namespaces, "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PYTHONHASHSEED",
            "0", "--setenv", "PYTHONDONTWRITEBYTECODE", "1", *mounts, "--chdir", "/sandbox", "--",
            python, "-I", "-S", "/sandbox/launcher.py", *limits]


def run_sandboxed(source: str, timeout_s: float) -> bool:
    """Run `source` as a Python program in the sandbox; True when it exits 0 within `timeout_s`."""
    as_root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="strata-sandbox-") as tmp:
        work = Path(tmp)
        (work / "candidate.py").write_text(source + "\n", encoding="utf-8")
        (work / "launcher.py").write_text(_LAUNCHER, encoding="utf-8")
        if as_root:
            os.chown(work, NOBODY, NOBODY)  # the candidate, as nobody, may write in its work folder only
        try:
            result = subprocess.run(_bwrap_command(work, timeout_s, as_root), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s)
        except subprocess.TimeoutExpired:  # subprocess.run killed bwrap: its pid namespace goes with it
            return False
        return result.returncode == 0


_checked = False


def require_sandbox() -> None:
    """Refuse `--code_execution` unless the sandbox really starts here (checked once per process)."""
    global _checked
    if _checked:
        return
    if shutil.which("bwrap") is None:
        raise StrataError("--code_execution runs completions in a bubblewrap sandbox, and bwrap is not installed; "
                          "install it (Debian/Ubuntu: apt install bubblewrap) or drop --code_execution")
    if not run_sandboxed("import sys; sys.exit(0)", timeout_s=20.0):
        raise StrataError("--code_execution: bubblewrap is installed but cannot create its namespaces here "
                          "(unprivileged user namespaces off, or a container without them); drop --code_execution")
    _checked = True
