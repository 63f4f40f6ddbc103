"""bench/gpu_check.py: the trainer driven directly, no Ray or vLLM.  On CPU a tiny-shape smoke run
(the same code path the GPU machine runs); with `-m gpu` the Qwen2.5-1.5B-shaped check itself."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(tmp_path, *args):
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp_path / "out" / "gpu_check.json").read_text())


def test_cpu_smoke_run_reports_every_section(tmp_path):
    r = _run(tmp_path, "--device", "cpu", "--quick")
    assert r["attention"] == "sdpa"  # flash_attention_2 requested, not installed: the warned fallback
    assert 0 < r["update"][0]["mfu"] <= 1
    assert r["zero3"]["zero3_partitioned"] and r["zero3"]["export_matches_gathered"]
    assert 0 < r["bf16_logprob_error"]["mean_abs"] < 1


@pytest.mark.gpu
def test_gpu_check_on_a_qwen_1_5b_shape(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    r = _run(tmp_path)
    assert all(0 < u["mfu"] <= 1 for u in r["update"])
    assert all(0.75 <= u["measured_over_predicted"] <= 1.25 for u in r["update"] if "measured_over_predicted" in u)
    assert r["zero3"]["export_matches_gathered"]
