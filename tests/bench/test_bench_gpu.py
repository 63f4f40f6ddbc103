"""The benchmark harness on a GPU (run with `pytest -m gpu` where one is present): the tiny model,
one A/B pair, bf16; checks that MFU over the measured bf16 peak and rollout vs standalone vLLM
are reported. The figures themselves come from `bench/compare_trl.py --device cuda`."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.gpu


def test_gpu_harness_reports_mfu_and_rollout_efficiency(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    proc = subprocess.run([sys.executable, "bench/compare_trl.py", "--device", "cuda", "--sizes", "tiny",
                           "--tokens", "32", "--natural-sizes", "", "--pairs", "1", "--steps", "1",
                           "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = json.loads((tmp_path / "results" / "summary.json").read_text())
    tiny = s["sizes"]["tiny"]
    assert s["matmul_gflops_2threads"] > 1000  # a GPU's bf16 peak, not a CPU's
    assert 0 < tiny["mfu"]["32"]["train"] < 1 and 0 < tiny["rollout_vs_vllm"]["32"]
    assert tiny["ratio_vs_trl"]["32"] > 0
