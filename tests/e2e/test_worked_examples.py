"""The worked examples of post-training on the embedded chat model, run as a user runs them:
instruction SFT (sft_tiny_chat) and DPO on identity (dpo_tiny_identity).  GRPO on math
(grpo_tiny) is tests/e2e/test_learns.py."""
import subprocess
import sys

import pytest

from rlengine import tiny
from tests.conftest import REPO, read_summary, run_main

pytestmark = [pytest.mark.e2e, pytest.mark.acceptance]


def _check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def test_sft_tiny_chat_follows_held_out_instructions(tmp_path):
    """Held-out instruction-following accuracy (exact answers to instructions about words and
    numbers training never used) rises by >= 30 points."""
    run_dir = tmp_path / "run"
    _check(run_main(["recipe=sft_tiny_chat", "tracking.progress_bar=false", f"run_dir={run_dir}"], timeout=1500))
    s = read_summary(run_dir)
    before, after = s["eval/accuracy_before"], s["eval/accuracy_after"]
    assert after - before >= 0.30, f"held-out instruction accuracy {before:.3f} -> {after:.3f}"


def test_dpo_tiny_identity_changes_the_name_and_keeps_the_rest(tmp_path):
    """From the chat SFT model: held-out identity questions answered with the new name <= 10% ->
    >= 90%, held-out arithmetic falls <= 5 points, held-out pairs ranked right >= 90%, within 10
    minutes (the one-time tiny:chat build is not counted)."""
    if not tiny.is_built("chat"):  # the same build, lock and cache a run would use
        subprocess.run([sys.executable, "-c", "from rlengine.job import build_tiny; from rlengine.compose import "
                        "load_config; build_tiny('chat', load_config('dpo_tiny_identity', [])[0])"], cwd=REPO,
                       check=True, timeout=1500)
    run_dir = tmp_path / "run"
    _check(run_main(["recipe=dpo_tiny_identity", "tracking.progress_bar=false", f"run_dir={run_dir}"], timeout=1200))
    s = read_summary(run_dir)
    assert s["eval/identity/accuracy_before"] <= 0.10 and s["eval/identity/accuracy_after"] >= 0.90, s
    assert s["eval/arithmetic/accuracy_after"] >= s["eval/arithmetic/accuracy_before"] - 0.05, s
    assert s["eval/rewards/accuracies_after"] >= 0.90, s
    assert s["wall_time_s"] <= 600, s["wall_time_s"]
