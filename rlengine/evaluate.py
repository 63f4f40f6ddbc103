"""Evaluate an exported Hugging Face checkpoint on a held-out split, independently of the run:
plain transformers greedy decoding (no Ray, no vLLM), scored with the recipe's first reward function.

    python -m rlengine.evaluate --model RUN_DIR/checkpoints/step_000060/hf [--data tiny:test] \
        [--max-new-tokens 8] [--reward reward_fns/math.py:compute_score]
"""
from __future__ import annotations

import argparse
import json

import torch

from rlengine.data import PromptEncoder, load_rows
from rlengine.rewards import resolve_fn


@torch.no_grad()
def greedy_accuracy(model_path: str, data: str, max_new_tokens: int, reward: str, prompt_key: str = "prompt",
                    answer_key: str = "answer", chat_template: bool = False, max_prompt_tokens: int = 512,
                    batch_size: int = 128, limit: int | None = None, config_name: str | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    rows = load_rows(data, "test", config_name)[:limit] if limit else load_rows(data, "test", config_name)
    enc = PromptEncoder(tok, prompt_key, answer_key, chat_template, None, max_prompt_tokens)
    fn = resolve_fn(reward)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    correct, responses = 0, []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        ids = [enc.encode(r) for r in chunk]
        P = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (P - len(x)) + x for x in ids])
        attn = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids])
        out = model.generate(input_ids=input_ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(out[:, P:], skip_special_tokens=True)
        for row, text in zip(chunk, texts):
            res = fn(row[prompt_key], text, row[answer_key])
            score = res["score"] if isinstance(res, dict) else res
            correct += score >= 1.0 - 1e-6
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
    a = ap.parse_args()
    res = greedy_accuracy(a.model, a.data, a.max_new_tokens, a.reward, a.prompt_key, a.answer_key,
                          a.chat_template, limit=a.limit, config_name=a.config_name)
    print(json.dumps({"accuracy": res["accuracy"], "n": res["n"]}))


if __name__ == "__main__":
    main()
