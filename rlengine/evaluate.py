"""Held-out evaluation: the declared checks a run scores its greedy answers with (`HeldOut`), and
a command that evaluates an exported Hugging Face checkpoint independently of the run: plain
transformers greedy decoding (no Ray, no vLLM), scored with a verifier.

    python -m rlengine.evaluate --model RUN_DIR/checkpoints/step_000060/hf [--data tiny:test] \
        [--max-new-tokens 8] [--reward reward_fns/math.py:compute_score]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

import torch

from rlengine.data import PromptEncoder, check_rows, load_rows
from rlengine.rewards import RewardManager, resolve_fn


@dataclass
class HeldOut:
    """One held-out set and its check: a verifier whose score >= threshold counts as correct,
    declared by eval.fn / eval.sets, independent of the reward being optimised."""

    name: str  # "" for data.test_path, else the eval.sets entry's name
    rows: list[dict]
    fn: str
    threshold: float
    kwargs: dict = field(default_factory=dict)
    timeout_s: float = 10.0
    _manager: RewardManager | None = None

    @property
    def suffix(self) -> str:
        return f"/{self.name}" if self.name else ""

    def describe(self) -> dict:
        return {"fn": self.fn, "threshold": self.threshold, "n": len(self.rows)}

    def metrics(self, prompts, responses, ground_truths, extras, response_length_N) -> dict:
        from rlengine.config import RewardConfig, RewardFnConfig

        if self._manager is None:
            self._manager = RewardManager(RewardConfig(fns=[RewardFnConfig(fn=self.fn, kwargs=dict(self.kwargs))],
                                                       timeout_s=self.timeout_s))
        scored = self._manager.score(prompts, responses, ground_truths, extras)
        s, p = scored.per_fn[0], f"eval{self.suffix}"
        return {f"{p}/accuracy": float((s >= self.threshold - 1e-6).float().mean()),
                f"{p}/score_mean": float(s.mean()), f"{p}/response_length": float(response_length_N.mean()),
                f"{p}/errors": float(scored.errors + scored.timeouts), f"{p}/n": float(len(s))}

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def heldout_sets(cfg, test_rows: list[dict] | None) -> list[HeldOut]:
    """data.test_path's rows (None: the stage evaluates them another way) and every eval.sets entry.
    eval.fn defaults to the task's verifier, the first reward function (with its kwargs)."""
    e, d = cfg.eval, cfg.data
    first = cfg.reward.fns[0] if cfg.reward.fns else None
    default_fn = e.fn or (first.fn if first else None)
    default_kwargs = dict(first.kwargs) if first and default_fn == first.fn else {}
    for key, spec in [("eval.fn", e.fn)] + [(f"eval.sets[{i}].fn", s.fn) for i, s in enumerate(e.sets)]:
        if spec:
            resolve_fn(spec, key=key)  # a bad path fails before any actor starts, naming the key
    out = []
    if test_rows is not None:
        out.append(HeldOut("", test_rows, default_fn, e.threshold, default_kwargs, cfg.reward.timeout_s))
    for i, s in enumerate(e.sets):
        keys = (s.prompt_key or d.prompt_key, s.answer_key or d.answer_key)
        rows = load_rows(s.path, s.split, s.config_name)
        check_rows(rows, keys, f"{s.path} (eval.sets[{i}].path)")
        # The run's encoder reads data.prompt_key / data.answer_key.
        rows = [{**r, d.prompt_key: r[keys[0]], d.answer_key: r[keys[1]]} for r in rows]
        fn = s.fn or default_fn
        out.append(HeldOut(s.name, rows[:s.max_rows] if s.max_rows else rows, fn,
                           e.threshold if s.threshold is None else s.threshold,
                           default_kwargs if fn == default_fn else {}, cfg.reward.timeout_s))
    return out


@torch.no_grad()
def greedy_accuracy(model_path: str, data: str, max_new_tokens: int, reward: str, prompt_key: str = "prompt",
                    answer_key: str = "answer", chat_template: bool = False, max_prompt_tokens: int = 512,
                    batch_size: int = 128, limit: int | None = None, config_name: str | None = None,
                    split: str = "test", system_prompt: str | None = None, threshold: float = 1.0,
                    device: str = "cpu", dtype: str = "float32") -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device).eval()
    rows = load_rows(data, split, config_name)[:limit] if limit else load_rows(data, split, config_name)
    enc = PromptEncoder(tok, prompt_key, answer_key, chat_template, system_prompt, max_prompt_tokens)
    fn = resolve_fn(reward)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    correct, responses = 0, []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        ids = [enc.encode(r) for r in chunk]
        P = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (P - len(x)) + x for x in ids], device=device)
        attn = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(out[:, P:], skip_special_tokens=True)
        for row, text in zip(chunk, texts):
            res = fn(row[prompt_key], text, row[answer_key])
            score = res["score"] if isinstance(res, dict) else res
            correct += score >= threshold - 1e-6
            responses.append(text)
    return {"accuracy": correct / len(rows), "n": len(rows), "responses": responses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="tiny:test")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--reward", default="reward_fns/math.py:compute_score")
    ap.add_argument("--prompt-key", default="prompt")
    ap.add_argument("--answer-key", default="answer")
    ap.add_argument("--chat-template", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--config-name", default=None, help="the dataset's configuration (data.config_name)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--system-prompt", default=None)
    ap.add_argument("--max-prompt-tokens", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=1.0, help="a score >= this counts as correct")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    a = ap.parse_args()
    res = greedy_accuracy(a.model, a.data, a.max_new_tokens, a.reward, a.prompt_key, a.answer_key,
                          a.chat_template, a.max_prompt_tokens, a.batch_size, a.limit, a.config_name, a.split,
                          a.system_prompt, a.threshold, a.device, a.dtype)
    print(json.dumps({"accuracy": res["accuracy"], "n": res["n"]}))


if __name__ == "__main__":
    main()
