"""The benchmark report's arithmetic on a hand-made raw result (no engines run)."""
import json

import pytest

from bench.report import analyse, write_report


def _raw():
    phases = {"rollout": [2.0, 2.0], "reward": [0.1, 0.1], "ref": [0.0, 0.0], "old_logp": [0.0, 0.0],
              "adv": [0.0, 0.0], "update": [5.0, 5.0], "sync": [0.4, 0.4]}
    ours = [{"step_times_s": [8.0, 8.0], "phases": phases, "response_tokens": [1000.0, 1000.0],
             "trained_tokens": [3000.0, 3000.0], "sync_bytes": 4e8, "roles_up_s": 12.0},
            {"step_times_s": [8.0, 8.0], "phases": phases, "response_tokens": [1000.0, 1000.0],
             "trained_tokens": [3000.0, 3000.0], "sync_bytes": 4e8, "roles_up_s": 14.0}]
    trl = [{"step_times_s": [10.0, 10.0], "generate_s": [3.0, 3.0], "response_tokens": [1000.0, 1000.0], "setup_s": 1.0},
           {"step_times_s": [16.0, 16.0], "generate_s": [5.0, 5.0], "response_tokens": [1000.0, 1000.0], "setup_s": 1.0}]
    return {"date": "2026-11-23", "machine": {"cpu": "x", "cores": 2, "memory_gib": 24, "torch": "t"},
            "matmul_gflops_2threads": 400.0,
            "args": {"prompts": 16, "group_size": 8, "micro_batch": 32, "pairs": 2, "warmup": 1, "steps": 2,
                     "rollout_bind": ""},
            "sizes": {"100m": {"params": 1e8, "runs": {"128": {"rlengine": ours, "trl": trl}},
                               "vllm": {"128_default": {"tokens_per_s": 600.0}, "128_0-1": {"tokens_per_s": 900.0}},
                               "memcpy_gbps": 10.0, "parity": None, "parity_mixed_lengths": None}}}


def test_ratios_phases_and_efficiencies_by_hand():
    s = analyse(_raw())["sizes"]["100m"]
    assert s["step_time_s"]["128"] == {"rlengine": 8.0, "trl": 13.0}  # median over all timed steps
    assert s["ratio_vs_trl"]["128"] == pytest.approx((8 / 10 + 8 / 16) / 2)  # median of per-pair ratios
    assert s["ratio_range"]["128"] == [0.5, 0.8]
    assert s["phases_s"]["128"]["remainder"] == pytest.approx(8.0 - 7.5)
    assert s["overhead_frac"]["128"]["remainder"] == pytest.approx(0.5 / 8)
    assert s["rollout_vs_vllm"]["128"] == pytest.approx(1000 / 2.0 / 600.0)  # engine default binding
    assert s["mfu"]["128"]["train"] == pytest.approx(6 * 1e8 * 3000 / 5.0 / 400e9)
    assert s["mfu"]["128"]["rollout"] == pytest.approx(2 * 1e8 * 1000 / 2.0 / 400e9)
    assert s["sync_vs_memcpy"] == pytest.approx(4e8 / 0.4 / 1e9 / 10.0)
    assert s["startup_s"]["rlengine_roles_up"] == 13.0
    assert s["trl_phases_s"]["128"] == {"generate": 4.0, "train": 13.0 - 4.0}


def test_report_files_are_written(tmp_path):
    write_report(_raw(), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sizes"]["100m"]["ratio_vs_trl"]["128"] == pytest.approx(0.65)
    md = (tmp_path / "REPORT.md").read_text()
    assert "| 100m | 100.0M | 128 tok | 8.00" in md and "**0.65**" in md
    assert "| 100m | 128 | 4.00 | 9.00 | 2.10 | 5.40 |" in md  # TRL generate, train; ours rollout+reward, update+sync
    assert (tmp_path / "step_time.png").stat().st_size > 1000


def _bound(repack_s=None):
    def side(reload_s, tps, **extra):
        return {"memcpy_gbps": 10.0, "reload_s": reload_s, "reload_vs_memcpy": 4e8 / reload_s / 1e9 / 10.0,
                "rollout_tokens": 4096, "rollout_tokens_per_s": tps, **extra}
    repack = {} if repack_s is None else {"repack_s": repack_s, "repack_bound_vs_memcpy": 4e8 / repack_s / 1e9 / 10.0}
    return {"tokens": 32, "sizes": {"100m": {"onednn": side(0.2, 1024.0, **repack),
                                             "torch": side(0.05, 512.0)}}}


def test_sync_bound_prices_the_repack(tmp_path):
    (tmp_path / "sync_bound.json").write_text(json.dumps(_bound()))
    summary = write_report(_raw(), tmp_path)
    b = summary["sync_bound"]["sizes"]["100m"]
    assert b["reload_vs_memcpy"] == pytest.approx(0.2) and b["reload_vs_memcpy_no_repack"] == pytest.approx(0.8)
    assert (b["rollout_s"], b["rollout_s_no_repack"]) == (4.0, 8.0)  # 4096 tokens at 1024 and 512 tok/s
    md = (tmp_path / "REPORT.md").read_text()
    assert "| 100m | 10.00 | 0.200 | – | 4.00 | 8.00 | 0.800 |" in md  # a sync_bound.json without the repack
    assert "+4.00 s a step, against 0.15 s saved in the sync" in md
    assert "weight sync vs in-process copy (100m; vLLM's reload_weights alone: 0.20×)" in md
    assert "repack alone" not in md.split("## Targets")[1]


def test_sync_bound_repack_alone_caps_the_sync(tmp_path):
    # 4e8 bytes repacked in 0.16 s = 2.5 GB/s, against a 10 GB/s copy: no sync above 0.25x
    (tmp_path / "sync_bound.json").write_text(json.dumps(_bound(repack_s=0.16)))
    summary = write_report(_raw(), tmp_path)
    assert summary["sync_bound"]["sizes"]["100m"]["repack_bound_vs_memcpy"] == pytest.approx(0.25)
    md = (tmp_path / "REPORT.md").read_text()
    assert "| 100m | 10.00 | 0.200 | 0.250 | 4.00 | 8.00 | 0.800 |" in md
    assert "takes 0.160 s at 100m" in md and "cannot exceed 0.25× of a copy" in md
    assert "(100m; vLLM's reload_weights alone: 0.20×, its oneDNN repack alone: 0.25×)" in md


def test_mfu_is_over_the_runs_highest_matmul_rate_and_never_above_one():
    raw = _raw()
    raw["matmul_gflops_after"] = 500.0  # measured again at the end, higher: the ceiling
    raw["sizes"]["100m"]["embed_params"] = 2e7  # untied input embedding: no FLOPs
    s = analyse(raw)
    assert s["matmul_peak_gflops"] == 500.0
    assert s["sizes"]["100m"]["mfu"]["128"]["train"] == pytest.approx(6 * 8e7 * 3000 / 5.0 / 500e9)
    raw["matmul_gflops_2threads"] = raw["matmul_gflops_after"] = 10.0  # a ceiling the work outran
    with pytest.raises(ValueError, match="MFU .* > 1"):
        analyse(raw)


def test_report_without_sync_bound_has_no_bound_section(tmp_path):
    write_report(_raw(), tmp_path)
    assert "bench/sync_bound.py" not in (tmp_path / "REPORT.md").read_text()


def test_measured_figure_never_rounds_onto_its_target():
    from bench.report import _measured

    assert _measured(1.4976, "≥ 1.5×") == "1.498×"  # "1.50×" beside "no" would contradict itself
    assert _measured(1.5412, "≥ 1.5×") == "1.54×"
    assert _measured(0.7967, "≤ 0.8×") == "0.797×"
    assert _measured(0.005, "≤ 5%") == "0.5%"
    assert _measured(None, "≥ 0.9×") == "–"


def test_work_redone_by_a_merge_run_keeps_its_own_peak_and_pairs(tmp_path):
    raw = _raw()
    e = raw["sizes"]["100m"]
    e["matmul_gflops"] = 400.0
    e["runs"]["128_natural"] = e["runs"]["128"]
    e["work_args"] = {"128_natural": {"pairs": 4, "steps": 2, "matmul_gflops": 800.0}}
    raw["args_by_size"] = {"100m": {"pairs": 2, "tokens": "128", "natural_sizes": "100m"}}
    s = analyse(raw)["sizes"]["100m"]
    # Both over the run's highest matmul rate, the re-run's: a ceiling for every figure of the run.
    assert s["mfu"]["128"]["train"] == pytest.approx(6 * 1e8 * 3000 / 5.0 / 800e9)
    assert s["mfu"]["128_natural"]["train"] == pytest.approx(6 * 1e8 * 3000 / 5.0 / 800e9)
    write_report(raw, tmp_path)
    assert ("Per size: 100m: 2 pair(s), tokens 128, natural (128_natural: 4 pairs, 800.0 GFLOP/s peak)."
            in (tmp_path / "REPORT.md").read_text())
