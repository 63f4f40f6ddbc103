"""Standalone vLLM (same build, model, prompts and sampling as an rlengine rollout): tokens/s.

    python bench/vllm_standalone.py --model DIR --prompts FILE --out OUT.json [--bind 0-1] [--tokens 128]

`--bind` sets VLLM_CPU_OMP_THREADS_BIND (default: vLLM's own choice).  `--gemm torch` switches off
the CPU build's oneDNN linear path (plain `F.linear` on unpacked weights; see bench/sync_bound.py).
Output settings match the rollout role's (token ids and the sampled token's log-prob, no detokenisation), so the ratio
compares engines doing the same work.  One warm-up generate, then the median of `--repeats` timed
ones.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def use_gemm(gemm: str) -> None:
    """`torch`: vLLM's CPU build skips its oneDNN repack and runs plain `F.linear` (call before LLM())."""
    if gemm == "torch":
        import vllm._custom_ops as ops

        ops._supports_onednn = False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="jsonl with a `prompt` field; the first --n are used")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--bind", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compiled", action="store_true", help="enforce_eager=False, as rollout.enforce_eager=false")
    ap.add_argument("--gemm", choices=("onednn", "torch"), default="onednn")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if args.bind:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.bind
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    use_gemm(args.gemm)
    tok = AutoTokenizer.from_pretrained(args.model)
    rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines()[: args.n]]
    reqs = [{"prompt_token_ids": tok(r["prompt"], add_special_tokens=False).input_ids} for r in rows]
    llm = LLM(model=args.model, dtype=args.dtype, seed=1, enforce_eager=not args.compiled, max_model_len=args.tokens + 64,
              logprobs_mode="processed_logprobs")

    def run(seed0: int) -> tuple[float, int]:
        params = [SamplingParams(n=args.group_size, max_tokens=args.tokens, seed=seed0 + i, logprobs=0,
                                 temperature=1.0, top_p=1.0, top_k=-1, ignore_eos=True,
                                 detokenize=False, flat_logprobs=True) for i in range(len(reqs))]
        t0 = time.perf_counter()
        outs = llm.generate(reqs, params, use_tqdm=False)
        return time.perf_counter() - t0, sum(len(c.token_ids) for o in outs for c in o.outputs)

    run(0)
    timed = [run(1000 * (i + 1)) for i in range(args.repeats)]
    tps = [n / s for s, n in timed]
    out = {"bind": args.bind or "default", "gemm": args.gemm, "tokens_per_s": statistics.median(tps),
           "all_tokens_per_s": tps, "tokens": timed[0][1]}
    Path(args.out).write_text(json.dumps(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
