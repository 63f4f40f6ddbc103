"""The project's sbatch script on a real single-node SLURM, and the scripts' hygiene."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.slurm_fixture import Slurm, missing
from tests.conftest import REPO, read_summary

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = missing()
    if why:
        pytest.skip(why)
    s = Slurm(tmp_path_factory.mktemp("slurm")).start()
    yield s
    s.stop()


def test_sbatch_runs_grpo_tiny_and_propagates_success(slurm, tmp_path):
    run_dir = tmp_path / "run"
    job = slurm.sbatch([f"--output={tmp_path}/job-%j.out", "--cpus-per-task=2",
                        str(REPO / "cluster/slurm/rlengine.sbatch"), "recipe=grpo_tiny", "model.path=tiny:base",
                        "trainer.total_steps=2", "data.prompts_per_step=8", "algorithm.group_size=4",
                        "data.max_test_rows=16", "tracking.progress_bar=false", f"run_dir={run_dir}"],
                       cwd=REPO, env={"RLENGINE_PYTHON": sys.executable})
    st = slurm.wait(job, timeout=600)
    log = next(tmp_path.glob("job-*.out")).read_text()
    assert st["JobState"] == "COMPLETED" and st["ExitCode"] == "0:0", log[-4000:]
    assert "all 1 node(s) joined" in log
    s = read_summary(run_dir)
    assert s["steps"] == 2 and s["final_metrics"]["sync/checksum_ok"] == 1.0
    # Our Ray processes are gone (killed by PID), and nobody called `ray stop`.
    left = subprocess.run(["pgrep", "-f", f"rl-{job}/ray"], capture_output=True, text=True).stdout.split()
    assert not left, f"Ray processes of job {job} left behind: {left}"


def test_driver_failure_propagates_exit_code(slurm, tmp_path):
    job = slurm.sbatch([f"--output={tmp_path}/job-%j.out", str(REPO / "cluster/slurm/rlengine.sbatch"),
                        "recipe=grpo_tiny", "algorithm.group_sise=4"], cwd=REPO, env={"RLENGINE_PYTHON": sys.executable})
    st = slurm.wait(job, timeout=300)
    log = next(tmp_path.glob("job-*.out")).read_text()
    assert st["JobState"] == "FAILED" and st["ExitCode"] == "2:0", (st, log[-3000:])
    assert "algorithm.group_sise" in log


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (.ci/run installs it)")
def test_cluster_scripts_are_shellcheck_clean():
    scripts = sorted(str(p) for p in (REPO / "cluster").rglob("*") if p.suffix in (".sh", ".sbatch"))
    assert scripts
    out = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_a_node_that_never_joins_fails_the_job_naming_it(slurm, tmp_path):
    """The allocation's node list names a node that cannot start Ray (it is not in the allocation):
    the join wait times out, names it, exits 3, and this job's Ray head is stopped."""
    script = REPO / "cluster/slurm/rlengine.sbatch"
    wrap = (f"SLURM_JOB_NODELIST=localhost,ghost RLENGINE_JOIN_TIMEOUT=15 RLENGINE_HEAD_IP=127.0.0.1 "
            f"bash {script} recipe=grpo_tiny model.path=tiny:base")
    job = slurm.sbatch([f"--output={tmp_path}/job-%j.out", "--wrap", wrap], cwd=REPO,
                       env={"RLENGINE_PYTHON": sys.executable})
    st = slurm.wait(job, timeout=180)
    log = next(tmp_path.glob("job-*.out")).read_text()
    assert st["JobState"] == "FAILED" and st["ExitCode"] == "3:0", (st, log[-3000:])
    assert "missing: ['ghost']" in log and "did not form" in log
    left = subprocess.run(["pgrep", "-f", f"rl-{job}/ray"], capture_output=True, text=True).stdout.split()
    assert not left, f"Ray processes of job {job} left behind: {left}"


@pytest.mark.slow
def test_sigterm_before_the_time_limit_checkpoints_requeues_and_resumes(slurm, tmp_path):
    """What SLURM does before a time limit (--signal=B:TERM@120), sent by hand: the batch script
    passes SIGTERM to the driver, which checkpoints and exits 75; the job requeues itself under the
    same id and the second start resumes from that checkpoint and finishes."""
    run_dir = tmp_path / "run"
    job = slurm.sbatch([f"--output={tmp_path}/job-%j.out", "--cpus-per-task=2",
                        str(REPO / "cluster/slurm/rlengine.sbatch"), "recipe=grpo_tiny", "model.path=tiny:base",
                        "trainer.total_steps=12", "data.prompts_per_step=8", "algorithm.group_size=4",
                        "data.max_test_rows=16", "tracking.progress_bar=false", f"run_dir={run_dir}"],
                       cwd=REPO, env={"RLENGINE_PYTHON": sys.executable})
    deadline = time.time() + 300
    while not any('"step": 2,' in line for line in _lines(run_dir / "metrics.jsonl")):
        assert time.time() < deadline and slurm.job_state(job).get("JobState") in ("PENDING", "RUNNING"), \
            slurm.job_state(job)
        time.sleep(0.5)
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], env=slurm.env, check=True)
    st = slurm.wait(job, timeout=600)
    log = next(tmp_path.glob("job-*.out")).read_text()
    assert st["JobState"] == "COMPLETED" and st["ExitCode"] == "0:0", log[-4000:]
    assert "stopped by SIGTERM" in log and f"requeueing job {job}" in log, log[-4000:]
    assert st.get("Restarts") == "1", st
    s = read_summary(run_dir)
    assert s["steps"] == 12 and 2 <= s["resumed_from_step"] < 12, s
    steps = [m["step"] for m in map(json.loads, _lines(run_dir / "metrics.jsonl")) if "reward/mean" in m]
    assert steps == list(range(1, 13)), steps  # each step once, none skipped


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
