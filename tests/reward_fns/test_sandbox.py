"""Sandbox: normal behaviour, then a security suite of adversarial programs.

Every adversarial program runs through `sbx()`, which checks after the run that the machine is as it
was: no process of the run's uid is left, no sandbox temporary directory is left, and the run ended
within its wall-clock limit (plus start-up slack). Each test then asserts its own outcome.

The dedicated-uid layer (and with it the fork-bomb cap, signal and /proc protection) needs root,
which CI has; those tests are skipped elsewhere, with the reason. As root, the suite also checks
that the machine gave the sandbox every layer (network namespace, mount namespace, dedicated uid),
so a CI machine that silently lost one fails here instead of running a weaker sandbox.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from reward_fns.sandbox import Limits, SandboxError, _procs_of_uid, isolation_report, run

ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[2]
LIM = Limits(cpu_s=1, wall_s=2, memory_mb=256, max_procs=8, max_open_files=32, max_file_mb=1, stack_mb=16,
             scratch_mb=8, max_output_bytes=64 * 1024)
SLACK_S = 3.0  # launcher start-up and cleanup on a loaded 2-core CI machine

needs_root = pytest.mark.skipif(not ROOT, reason="dedicated-uid sandbox needs root (CI runs as root)")


@pytest.fixture(autouse=True)
def private_tempdir(monkeypatch):
    """The sandbox's temporary directories go here, so that leftovers are this test's own (other
    processes on the machine may be using the sandbox at the same time)."""
    base = tempfile.mkdtemp(prefix="rlengine-sandbox-test-")
    os.chmod(base, 0o711)
    monkeypatch.setattr(tempfile, "tempdir", base)
    yield base
    monkeypatch.undo()
    shutil.rmtree(base, ignore_errors=True)


def sbx(code: str, stdin: str = "", **limits):
    """run() with the suite's small limits, then check that nothing of the run is left."""
    lim = dataclasses.replace(LIM, **limits)
    t0 = time.monotonic()
    r = run(code, stdin, lim)
    elapsed = time.monotonic() - t0
    assert elapsed < lim.wall_s + SLACK_S, f"run took {elapsed:.1f}s, wall limit {lim.wall_s}s"
    if r.uid is not None:
        assert _procs_of_uid(r.uid, -1) == [], "processes of the sandbox uid survived the run"
    assert os.listdir(tempfile.tempdir) == [], "sandbox temporary directory left behind"
    r.elapsed = elapsed
    return r


@pytest.fixture(scope="module")
def iso() -> dict:
    return isolation_report()


@pytest.fixture
def sleeper():
    """A process outside the sandbox (same uid as the test) that the sandbox must not be able to kill."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


# ------------------------------------------------------------------------------------------------
# Normal behaviour
# ------------------------------------------------------------------------------------------------

def test_stdin_stdout_and_exit_status():
    r = sbx("import sys\nname = input()\nprint('hello', name)\nprint('err', file=sys.stderr)\nexit(3)",
            stdin="world\n")
    assert (r.returncode, r.stdout, r.stderr) == (3, "hello world\n", "err\n")
    assert not (r.timed_out or r.truncated or r.cpu_exceeded) and r.killed_by_signal is None and not r.ok
    assert r.wall_s < 2 and r.cpu_s < 1


def test_ok_exception_unicode_and_main():
    r = sbx("print('héllo ✓', __name__)")
    assert r.ok and r.stdout == "héllo ✓ __main__\n"
    r = sbx("def f():\n    raise ValueError('boom')\nf()")
    assert r.returncode == 1 and "ValueError: boom" in r.stderr and 'main.py", line 2' in r.stderr


def test_isolated_interpreter_without_site_packages():
    r = sbx("import sys\nprint(sys.flags.isolated, sys.flags.no_site)\nimport pytest")
    assert r.stdout == "1 1\n" and "ModuleNotFoundError" in r.stderr


def test_empty_program_and_syntax_error():
    assert sbx("").ok
    r = sbx("def (:")
    assert r.returncode == 1 and "SyntaxError" in r.stderr


def test_limits_validation():
    with pytest.raises(ValueError, match="cpu_s"):
        Limits(cpu_s=0)
    with pytest.raises(ValueError, match="max_procs"):
        Limits(max_procs=1)


@needs_root
def test_this_machine_gives_every_layer(iso):
    assert iso["net"].startswith("network namespace")
    assert iso["fs"].startswith("mount namespace: / read-only")
    assert iso["user"].startswith("dedicated uid")
    assert iso["ipc"] == "ipc namespace"
    if "hidepid" not in iso["proc"]:
        pytest.skip(f"no private /proc here: {iso['proc']}")
    r = sbx("pass", strict=True)  # strict refuses anything less
    assert r.ok


@needs_root
def test_concurrent_runs_get_distinct_uids():
    results = []
    barrier = threading.Barrier(3)
    code = "import os, time\nprint(os.getuid())\ntime.sleep(1)"  # the three runs overlap in time

    def one():
        barrier.wait()
        results.append(run(code, limits=LIM))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(_procs_of_uid(r.uid, -1) == [] for r in results)
    uids = {int(r.stdout) for r in results}
    assert len(uids) == 3 and uids == {r.uid for r in results} and os.getuid() not in uids


# ------------------------------------------------------------------------------------------------
# Security suite: adversarial programs
# ------------------------------------------------------------------------------------------------

@needs_root
def test_fork_bomb():
    r = sbx("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert r.returncode != 0 and (r.timed_out or r.cpu_exceeded)


@needs_root
def test_fork_count_capped_and_children_killed_when_main_exits():
    code = ("import os, time\nn = 0\nfor i in range(100):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
            "    n += 1\nprint(n)")
    r = sbx(code)
    assert r.returncode == 0 and 1 <= int(r.stdout) <= LIM.max_procs - 1  # RLIMIT_NPROC of the dedicated uid
    assert r.leftovers_killed and r.elapsed < 1.5  # the sleepers were killed, not waited for


@needs_root
def test_subprocess_spawn_bomb():
    code = ("import subprocess, sys\nn = 0\nwhile True:\n    try:\n"
            "        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n        n += 1\n"
            "    except OSError:\n        break\nprint(n)")
    r = sbx(code)
    assert r.returncode == 0 and int(r.stdout) <= LIM.max_procs - 1 and r.leftovers_killed


@needs_root
def test_thread_bomb():
    code = ("import threading, time\nn = 0\ntry:\n    while True:\n"
            "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
            "except RuntimeError:\n    pass\nprint(n)")
    r = sbx(code)
    assert r.returncode == 0 and int(r.stdout) <= LIM.max_procs - 1


def test_memory_bomb():
    r = sbx("x = []\nwhile True:\n    x.append(bytearray(10**7))")
    assert r.returncode == 1 and "MemoryError" in r.stderr


def test_single_huge_allocation():
    r = sbx("x = bytearray(8 * 1024**3)")
    assert r.returncode == 1 and "MemoryError" in r.stderr


def test_infinite_loop_hits_cpu_limit():
    r = sbx("while True:\n    pass")
    assert r.cpu_exceeded and r.killed_by_signal == signal.SIGXCPU and not r.timed_out
    assert r.returncode == -signal.SIGXCPU


def test_busy_loop_ignoring_sigterm_and_sigxcpu_is_killed():
    code = ("import signal\nfor s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass")
    r = sbx(code)
    assert r.killed_by_signal == signal.SIGKILL and r.returncode == -signal.SIGKILL


def test_sleep_forever_hits_wall_limit():
    r = sbx("import time\ntime.sleep(3600)")
    assert r.timed_out and r.killed_by_signal == signal.SIGKILL and not r.cpu_exceeded
    assert LIM.wall_s <= r.elapsed


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_capped(stream):
    r = sbx(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 4096)")
    out = getattr(r, stream)
    assert r.truncated and len(out) == LIM.max_output_bytes and set(out) == {"x"}
    assert r.returncode == -signal.SIGKILL and r.elapsed < 1.5


def test_output_from_an_orphan_after_main_exits():
    code = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    while True:\n"
            "        sys.stdout.write('y' * 4096)\n        sys.stdout.flush()\nprint('main done')")
    r = sbx(code)  # the orphan never stops writing: the run must still end, without it
    assert len(r.stdout) <= LIM.max_output_bytes and r.elapsed < 1.5
    assert r.returncode == 0 or (r.truncated and r.returncode == -signal.SIGKILL)  # main done first, or the cap


@needs_root
def test_daemon_that_left_the_process_group_is_killed_after_timeout():
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(3600)\n    os._exit(0)\ntime.sleep(3600)")
    r = sbx(code)  # sbx asserts that no process of the run's uid is left
    assert r.timed_out and r.leftovers_killed


def test_writes_outside_the_working_directory():
    tag = uuid.uuid4().hex
    targets = [f"/tmp/outside_{tag}", f"/var/tmp/outside_{tag}", f"/dev/shm/outside_{tag}",
               str(REPO / f"outside_{tag}"), f"/outside_{tag}", f"/etc/outside_{tag}",
               os.path.join(tempfile.gettempdir(), f"outside_{tag}")]
    code = (f"import os\nfor p in {targets!r}:\n    try:\n        open(p, 'w').write('x')\n"
            "        print('wrote', p)\n    except OSError as e:\n        print('denied', p, e.errno)\n"
            "open('inside.txt', 'w').write('ok')\nprint('cwd', os.getcwd(), open('inside.txt').read())")
    r = sbx(code)
    assert r.returncode == 0 and "cwd " in r.stdout and r.stdout.rstrip().endswith(" ok")
    for p in targets:
        assert not os.path.exists(p), f"the sandbox wrote {p}"
    if ROOT:
        assert f"denied {REPO}/outside_{tag}" in r.stdout and f"denied /etc/outside_{tag}" in r.stdout


def test_file_size_limit():
    code = ("import os\ntry:\n    with open('big', 'wb') as f:\n        f.write(b'x' * (5 * 1024**2))\n"
            "except OSError as e:\n    print('error', e.errno)\nprint(os.path.getsize('big'))")
    r = sbx(code)
    assert "error 27" in r.stdout  # EFBIG
    assert int(r.stdout.split()[-1]) <= LIM.max_file_mb * 1024**2


@needs_root
def test_scratch_space_is_capped():
    code = ("n = 0\ntry:\n    while True:\n        with open(f'/tmp/f{n}', 'wb') as f:\n"
            "            f.write(b'x' * 900_000)\n        n += 1\nexcept OSError as e:\n    print(e.errno, n)")
    r = sbx(code)
    errno_, n = map(int, r.stdout.split())
    assert errno_ == 28 and n <= LIM.scratch_mb * 1024**2 // 900_000  # ENOSPC in the private tmpfs


@needs_root
def test_planted_secret_is_not_visible(monkeypatch):
    secret = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("RLENGINE_TEST_SECRET", secret)
    code = (f"import os\nprint(dict(os.environ))\nfor pid in ({os.getpid()}, {os.getppid()}, 1, os.getppid()):\n"
            "    try:\n        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except OSError as e:\n        print('denied', pid, e.errno)\n"
            "for p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n"
            "            print(open(f'/proc/{p}/environ', 'rb').read())\n        except OSError:\n            pass")
    r = sbx(code)
    assert r.returncode == 0 and secret not in r.stdout + r.stderr
    env = eval(r.stdout.splitlines()[0])  # noqa: S307 - our own program's printed dict
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR"}
    assert f"denied {os.getpid()}" in r.stdout


@needs_root
def test_other_processes_are_invisible_in_proc(iso, sleeper):
    code = (f"import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\nprint(pids)\n"
            f"for pid in ({os.getpid()}, {sleeper.pid}):\n    for what in ('cmdline', 'status', 'environ'):\n"
            "        try:\n            open(f'/proc/{pid}/{what}').read()\n            print('read', pid, what)\n"
            "        except OSError as e:\n            print('denied', pid, what)")
    r = sbx(code)
    assert r.returncode == 0
    assert f"read {os.getpid()} environ" not in r.stdout and f"read {sleeper.pid} environ" not in r.stdout
    if "hidepid" in iso["proc"]:
        assert os.getpid() not in eval(r.stdout.splitlines()[0])  # noqa: S307
        assert "read " not in r.stdout


def test_tcp_connect_to_a_local_listener_fails():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        code = ("import socket\nfor host in ('127.0.0.1', 'localhost'):\n    s = socket.socket()\n"
                f"    s.settimeout(1)\n    try:\n        s.connect((host, {port}))\n        s.sendall(b'leak')\n"
                "        print('connected')\n    except OSError as e:\n        print('failed', type(e).__name__)")
        r = sbx(code)
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert "connected" not in r.stdout and r.stdout.count("failed") == 2 or "PermissionError" in r.stderr


def test_udp_to_a_local_listener_never_arrives():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        code = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n"
                f"    s.sendto(b'leak', ('127.0.0.1', {port}))\n    print('sent')\n"
                "except OSError as e:\n    print('failed', e.errno)")
        r = sbx(code)
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.recvfrom(100)
    assert "failed" in r.stdout or "PermissionError" in r.stderr


@needs_root
def test_kill_of_the_parent_and_other_processes_is_denied(sleeper):
    code = (f"import os, signal\nfor pid in ({os.getpid()}, {sleeper.pid}, os.getppid(), 1):\n    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n        print('killed', pid)\n"
            "    except OSError as e:\n        print('denied', e.errno)")
    r = sbx(code)
    assert r.returncode == 0 and "killed" not in r.stdout and r.stdout.count("denied 1") == 4  # EPERM
    assert sleeper.poll() is None


@needs_root
def test_kill_minus_one_reaches_only_the_sandbox(sleeper):
    code = ("import os, signal, time\npid = os.fork()\nif pid == 0:\n    time.sleep(30)\n    os._exit(0)\n"
            "time.sleep(0.1)\nos.kill(-1, signal.SIGKILL)\n_, st = os.waitpid(pid, 0)\nprint(os.WTERMSIG(st))")
    r = sbx(code)
    assert r.returncode == 0 and r.stdout == f"{int(signal.SIGKILL)}\n"  # its own child died, nobody else
    assert sleeper.poll() is None


def test_deep_recursion_default_limit():
    r = sbx("def f(n):\n    return f(n + 1) + 1\nf(0)")
    assert r.returncode == 1 and "RecursionError" in r.stderr


def test_deep_recursion_with_raised_limit_is_contained():
    # C-level recursion (repr of a deeply nested list) with the recursion guard lifted overflows the
    # stack: the crash must stay inside the sandbox
    r = sbx("import sys\nsys.setrecursionlimit(10**9)\nx = []\nfor _ in range(10**6):\n    x = [x]\nprint(len(repr(x)))")
    assert r.returncode != 0 and (r.killed_by_signal in (signal.SIGSEGV, signal.SIGXCPU, signal.SIGKILL)
                                  or "MemoryError" in r.stderr or "RecursionError" in r.stderr)


def test_open_files_limit():
    code = ("fs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\n"
            "except OSError as e:\n    print(e.errno, len(fs))")
    r = sbx(code)
    errno_, n = map(int, r.stdout.split())
    assert errno_ == 24 and n < LIM.max_open_files  # EMFILE


@needs_root
def test_privilege_escalation_is_denied():
    code = ("import os, resource\nfor name, f in [('setuid', lambda: os.setuid(0)), ('setgid', lambda: os.setgid(0)),\n"
            "        ('shadow', lambda: open('/etc/shadow').read()),\n"
            "        ('rlimit', lambda: resource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))),\n"
            "        ('chmod', lambda: os.chmod('/etc/passwd', 0o777)), ('root', lambda: os.listdir('/root/.ssh')),\n"
            "        ('mount', lambda: 1 / (os.system('mount -t tmpfs none /mnt 2>/dev/null') == 0))]:\n"
            "    try:\n        f()\n        print('ALLOWED', name)\n    except Exception as e:\n"
            "        print('denied', name, type(e).__name__)")
    r = sbx(code)
    assert r.returncode == 0 and "ALLOWED" not in r.stdout and r.stdout.count("denied") == 7


@needs_root
def test_shared_memory_left_behind_does_not_reach_the_host():
    name = "rlengine_test_" + uuid.uuid4().hex[:12]
    code = (f"from multiprocessing import shared_memory\nimport os\n"
            f"m = shared_memory.SharedMemory(name={name!r}, create=True, size=4096)\n"
            "print(os.path.exists('/dev/shm/' + m.name), flush=True)\nos._exit(0)")
    r = sbx(code)
    assert r.stdout == "True\n" and not os.path.exists(f"/dev/shm/{name}")


def test_no_file_descriptors_leak_into_the_sandbox():
    r = sbx("import os\nprint(sorted(int(f) for f in os.listdir('/proc/self/fd')))")
    assert json.loads(r.stdout) == [0, 1, 2, 3]  # 3 is the listing's own directory handle


@needs_root
def test_workdir_is_private_and_removed():
    r = sbx("import os\nst = os.stat('.')\nprint(oct(st.st_mode & 0o777), st.st_uid == os.getuid(), os.getcwd())")
    mode, own, cwd = r.stdout.split()
    assert (mode, own) == ("0o700", "True") and not os.path.exists(os.path.join(cwd, "main.py"))


@needs_root
def test_unprivileged_caller_gets_user_namespace_isolation():
    """The non-root path (a caller without root, e.g. a SLURM job): user + network + mount namespaces,
    the caller's uid. Run as `nobody` with the system interpreter, which that user can reach."""
    py = shutil.which("python3", path="/usr/bin:/bin")
    if py is None or os.path.realpath(py).startswith("/root"):
        pytest.skip("no system python3 reachable by an unprivileged user")
    secret = "s3cr3t-" + uuid.uuid4().hex
    with socket.socket() as listener, tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        prog = (f"import os, socket\nprint('SECRET' in os.environ)\ns = socket.socket()\ns.settimeout(1)\ntry:\n"
                f"    s.connect(('127.0.0.1', {port}))\n    print('connected')\nexcept OSError:\n    print('no network')\n"
                "open('/tmp/x', 'w').write('x')\nprint(os.getcwd())")
        driver = ("import importlib.util, json, sys\n"
                  f"spec = importlib.util.spec_from_file_location('sbx', {str(REPO / 'reward_fns' / 'sandbox.py')!r})\n"
                  "m = importlib.util.module_from_spec(spec); sys.modules['sbx'] = m; spec.loader.exec_module(m)\n"
                  f"r = m.run({prog!r}, limits=m.Limits(cpu_s=1, wall_s=5))\n"
                  "print(json.dumps(r.to_dict()))")
        tmp_path.chmod(0o777)
        p = subprocess.run([py, "-I", "-c", driver], user=65534, group=65534, extra_groups=[], cwd=tmp_path,
                           env={"PATH": "/usr/bin:/bin", "SECRET": secret, "TMPDIR": str(tmp_path)},
                           capture_output=True, text=True, timeout=60)
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()
        assert not glob.glob(str(tmp_path / "rlengine-sandbox-*"))
    if "user namespace" not in p.stdout and "unavailable" in p.stdout:
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["returncode"] == 0 and r["stdout"].split("\n")[:3] == ["False", "no network", "/tmp/sandbox"], r
    assert r["isolation"]["net"] == "network namespace (no interfaces up) inside a user namespace"
    assert r["isolation"]["fs"].startswith("mount namespace") and r["uid"] is None
    assert not os.path.exists("/tmp/x") or os.stat("/tmp/x").st_uid != 65534


def test_sandbox_error_for_a_missing_interpreter():
    # the sandbox failing is an exception, not a program result
    with pytest.raises(SandboxError):
        run("pass", limits=LIM, python="/nonexistent/python3")


@needs_root
def test_fallback_without_network_and_mount_namespaces(sleeper):
    """What a root caller gets on a machine that refuses namespaces (forced here): the weak audit-hook
    network block, files of the sandbox uid deleted after the run, an interpreter the uid can reach,
    and still the dedicated uid."""
    tag = uuid.uuid4().hex
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code = (f"import os, socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                "    print('connected')\nexcept OSError as e:\n    print('no network', type(e).__name__)\n"
                f"open('/tmp/outside_{tag}', 'w').write('x')\nos.mkdir('/var/tmp/outside_{tag}')\n"
                f"try:\n    os.kill({sleeper.pid}, 9)\nexcept OSError:\n    print('kill denied')\n"
                f"print(os.path.exists('/tmp/outside_{tag}'), os.getuid())")
        t0 = time.monotonic()
        r = run(code, limits=LIM, _disable=("net", "mnt", "ipc", "uts"))
        assert time.monotonic() - t0 < LIM.wall_s + SLACK_S
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["no network PermissionError", "kill denied", f"True {r.uid}"]
    assert "WEAK" in r.isolation["net"] and "deleted after the run" in r.isolation["fs"]
    assert not os.path.exists(f"/tmp/outside_{tag}") and not os.path.exists(f"/var/tmp/outside_{tag}")
    assert _procs_of_uid(r.uid, -1) == [] and os.listdir(tempfile.tempdir) == [] and sleeper.poll() is None
    if os.path.realpath(sys.executable).startswith("/root/"):  # pyenv under a 0700 /root, as on CI
        assert "not reachable by the sandbox uid" in r.isolation.get("python", "")


@needs_root
def test_read_only_root_without_mount_setattr():
    """Kernels before 5.12 have no mount_setattr: every mount is remounted read-only one by one."""
    tag = uuid.uuid4().hex
    code = (f"for p in ('/outside_{tag}', '/etc/outside_{tag}', {str(REPO / ('outside_' + tag))!r}):\n    try:\n"
            "        open(p, 'w')\n        print('wrote', p)\n    except OSError as e:\n        print(e.errno)\n"
            "open('/tmp/inside', 'w').write('ok')\nprint(open('/tmp/inside').read())")
    r = run(code, limits=LIM, _disable=("mount_setattr",))
    assert "per-mount remount" in r.isolation["fs"]
    # EROFS everywhere but the scratch tmpfs; a checkout under /tmp is hidden by that tmpfs (ENOENT)
    in_tmp = str(REPO.resolve()).startswith("/tmp/")
    assert r.stdout.split() == ["30", "30", "2" if in_tmp else "30", "ok"]


@needs_root
def test_caller_interrupted_mid_run_leaves_nothing(monkeypatch):
    """The reward manager stops a slow call with SIGALRM (an exception inside run()): the launcher, the
    program and its children must still all go."""
    import reward_fns.sandbox as sandbox

    uids = []
    acquire = sandbox._acquire_uid
    monkeypatch.setattr(sandbox, "_acquire_uid", lambda: (lambda got: (uids.append(got[0]), got)[1])(acquire()))

    class Interrupted(Exception):
        pass

    def on_alarm(signum, frame):
        raise Interrupted

    code = "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid()\n        break\ntime.sleep(3600)"
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            run(code, limits=dataclasses.replace(LIM, wall_s=30))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 0.5 + SLACK_S
    # (orphans of a killed launcher go to init: their zombies may linger until init reaps them)
    assert len(uids) == 1 and _procs_of_uid(uids[0], -1, zombies=False) == [] and os.listdir(tempfile.tempdir) == []
