"""Sandbox: what a caller gets where the machine takes layers away (no root, no namespaces, an old
kernel, an interrupted caller), and the sandbox failing as an exception.  Shared limits, `sbx()`
and fixtures: `sandbox_support.py`."""
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
import time
import uuid
from pathlib import Path

import pytest

from reward_fns.sandbox import SandboxError, _procs_of_uid, run
from sandbox_support import LIM, REPO, SLACK_S, cgroups_of, needs_root

pytestmark = pytest.mark.usefixtures("private_tempdir")


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
    """Where no new root can be built, the host's / is made read-only instead (weaker: host files
    stay visible); kernels before 5.12 have no mount_setattr: every mount is remounted one by one."""
    tag = uuid.uuid4().hex
    code = (f"for p in ('/outside_{tag}', '/etc/outside_{tag}', {str(REPO / ('outside_' + tag))!r}):\n    try:\n"
            "        open(p, 'w')\n        print('wrote', p)\n    except OSError as e:\n        print(e.errno)\n"
            "open('/tmp/inside', 'w').write('ok')\nprint(open('/tmp/inside').read())")
    r = run(code, limits=LIM, _disable=("newroot", "mount_setattr"))
    assert "per-mount remount" in r.isolation["fs"] and "WEAK" in r.isolation["fs"]
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
    assert cgroups_of(uids[0]) == []  # the caller's backstop sweep removed the run's cgroup
