"""Bad input fails before Ray starts, exit code 2, naming the key (and the file and line)."""
import json
import time

from tests.conftest import run_main


def _fails(args, *fragments):
    t0 = time.time()
    proc = run_main(args, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    for f in fragments:
        assert f in proc.stderr, (f, proc.stderr[-2000:])
    assert "roles up" not in proc.stderr and "ray.init" not in proc.stderr
    return time.time() - t0


def test_model_path_that_is_neither_a_directory_nor_a_hub_id():
    assert _fails(["model.path=/no/model"], "config key 'model.path'", "/no/model") < 30


def test_missing_data_file_names_the_key(tmp_path):
    _fails([f"data.train_path={tmp_path / 'missing.jsonl'}"], "data.train_path", "missing.jsonl")


def test_chat_rows_with_an_unknown_role_or_no_assistant_turn_name_file_and_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    for bad, problem in (({"messages": [{"role": "wizard", "content": "Hi"}]}, "role"),
                         ({"messages": [{"role": "user", "content": "Hi"}]}, "assistant")):
        path = tmp_path / "rows.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        _fails(["recipe=sft_tiny_chat", f"data.train_path={path}"], f"{path}:2", problem)


def test_lora_target_module_that_matches_nothing_and_a_rank_above_the_layer():
    _fails(["recipe=grpo_tiny_lora", "model.lora.target_modules=[q_proj,qkv]"],
           "config key 'model.lora.target_modules'", "'qkv' matches no module")
    _fails(["recipe=grpo_tiny_lora", "model.lora.r=512"], "config key 'model.lora.r'", "exceeds layer")
