"""The checkpoint directory format: atomic commit, manifest validation, pruning, picking the newest."""
import json

import pytest

from rlengine import checkpoint, faults
from rlengine.config import to_dict


def _write(run_dir, step, keep_last=0, payload=b"x" * 100):
    tmp = checkpoint.begin(run_dir, step)
    (tmp / "trainer").mkdir()
    (tmp / "trainer" / "shard.pt").write_bytes(payload)
    return checkpoint.commit(run_dir, step, {"step": step, "tag": f"step_{step:06d}"}, keep_last)


def test_commit_writes_manifest_latest_and_renames(tmp_path):
    path = _write(tmp_path, 2)
    assert path == tmp_path / "checkpoints" / "step_000002"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000002"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["files"] == {"driver_state.json": (path / "driver_state.json").stat().st_size,
                                 "trainer/shard.pt": 100}
    assert checkpoint.problem(path) is None
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))


def test_keep_last_prunes_only_older_complete_checkpoints(tmp_path):
    for step in (1, 2, 3, 4):
        _write(tmp_path, step, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000003", "step_000004"]
    for step in (5, 6):
        _write(tmp_path, step, keep_last=0)  # 0 keeps everything
    assert len(list((tmp_path / "checkpoints").glob("step_*"))) == 4


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
    (lambda p: (p / "trainer" / "shard.pt").unlink(), "missing files ['trainer/shard.pt']"),
    (lambda p: (p / "trainer" / "shard.pt").write_bytes(b"x" * 10), "wrong size"),
    (lambda p: (p / "driver_state.json").write_text("{"), "unreadable"),
])
def test_damaged_checkpoints_are_skipped_with_the_reason(tmp_path, damage, reason):
    _write(tmp_path, 2)
    bad = _write(tmp_path, 4)
    damage(bad)
    assert reason in checkpoint.problem(bad)
    found, skipped = checkpoint.newest_complete(tmp_path)
    assert found == tmp_path / "checkpoints" / "step_000002"
    assert [(p.name, reason in why) for p, why in skipped] == [("step_000004", True)]


def test_newest_complete_ignores_latest_pointer_and_removes_interrupted_writes(tmp_path):
    _write(tmp_path, 2)
    _write(tmp_path, 4)
    (tmp_path / "checkpoints" / "latest").write_text("step_000002\n")  # killed between rename and pointer
    tmp = checkpoint.begin(tmp_path, 6)
    (tmp / "half.pt").write_bytes(b"1")
    found, skipped = checkpoint.newest_complete(tmp_path)
    assert found.name == "step_000004" and skipped == []
    assert not tmp.exists()
    assert checkpoint.newest_complete(tmp_path / "nothing") == (None, [])


def test_resolve_accepts_a_checkpoint_or_a_run_dir_and_rejects_the_rest(tmp_path):
    path = _write(tmp_path, 3)
    assert checkpoint.resolve(str(path)) == path
    assert checkpoint.resolve(str(tmp_path)) == path
    with pytest.raises(checkpoint.NotACheckpoint, match="not a complete rlengine checkpoint: no manifest"):
        checkpoint.resolve(str(path / "trainer"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        checkpoint.resolve(str(tmp_path / "missing"))
    (path / "manifest.json").unlink()
    with pytest.raises(checkpoint.NotACheckpoint, match="no complete checkpoint.*step_000003"):
        checkpoint.resolve(str(tmp_path))


def test_rng_state_round_trips():
    import random

    import numpy as np
    import torch

    state = checkpoint.capture_rng()
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpoint.restore_rng(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a


def test_fault_spec_parses_and_fires_once(tmp_path, monkeypatch):
    assert faults.parse("rollout:2, after_checkpoint:4") == {("rollout", 2), ("after_checkpoint", 4)}
    with pytest.raises(ValueError, match="POINT:STEP"):
        faults.parse("rollout:two")
    with pytest.raises(ValueError, match="POINT:STEP"):
        faults.parse("optimizer:1")
    monkeypatch.setenv(faults.ENV, "rollout:2")
    monkeypatch.setenv(faults.STATE_ENV, str(tmp_path))
    assert not faults.armed("rollout", 1) and not faults.armed("reference", 2) and not faults.armed("rollout", None)
    assert faults.armed("rollout", 2)
    assert not faults.armed("rollout", 2)  # a restarted actor is not killed again
    monkeypatch.delenv(faults.ENV)
    assert not faults.armed("rollout", 2)


@pytest.mark.parametrize("saved, resumed", [("separate", "trainer"), ("trainer", "separate")])
def test_resume_across_reference_placements(tmp_path, saved, resumed):
    """The reference is the frozen initial model wherever it lives and is never checkpointed, so a
    checkpoint of either placement resumes in the other."""
    from rlengine import resume
    from rlengine.main import load_config

    common = ["model.path=tiny:base", f"run_dir={tmp_path}"]
    cfg, plan = load_config("grpo_tiny", [*common, f"reference.placement={saved}"])
    tmp = checkpoint.begin(tmp_path, 2)
    state = {"step": 2, "tag": "step_000002", "recipe": cfg.recipe, "model": cfg.model.path,
             "shape": resume.shape(cfg, plan), "config": json.loads(json.dumps(to_dict(cfg), default=str))}
    path = checkpoint.commit(tmp_path, 2, state, 0)
    assert tmp.name.startswith(".tmp")
    cfg2, plan2 = load_config("grpo_tiny", [*common, f"reference.placement={resumed}"])
    assert plan2.reference_in_trainer is (resumed == "trainer")
    assert resume.check_compatible(cfg2, plan2, path)["step"] == 2
