"""Fixtures of the sandbox test modules (test_sandbox*.py use `private_tempdir` for every test)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from reward_fns.sandbox import isolation_report


@pytest.fixture
def private_tempdir(monkeypatch):
    """The sandbox's temporary directories go here, so that leftovers are this test's own (other
    processes on the machine may be using the sandbox at the same time)."""
    base = tempfile.mkdtemp(prefix="rlengine-sandbox-test-")
    os.chmod(base, 0o711)
    monkeypatch.setattr(tempfile, "tempdir", base)
    yield base
    monkeypatch.undo()
    shutil.rmtree(base, ignore_errors=True)


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
