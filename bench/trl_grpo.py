"""TRL's GRPOTrainer on the benchmark's work, timed per optimizer step (the baseline side).

Runs with TRL on the path (bench/.trl, installed by bench/compare_trl.py; same torch and
transformers as rlengine). One optimizer step = generate prompts_per_step x G completions with
HF `generate`, score them, one forward+backward over them in micro-batches, one AdamW step: the
same work as one rlengine GRPO step with ppo_epochs=1, minibatches=1, kl_coef=0, token-mean loss.

    python bench/trl_grpo.py --model DIR --steps 3 --out times.json [--max-new-tokens 128] ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _reward(prompts, completions, ground_truth, **kw):
    from reward_fns.math import compute_score

    return [float(compute_score(p, c, g)["score"]) for p, c, g in zip(prompts, completions, ground_truth)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="jsonl with prompt and answer, used in order")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--natural-length", action="store_true", help="allow EOS (default: suppressed)")
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--use-vllm", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 on one GPU")
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (alpha 2r, all-linear), 0: full training")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["prompt"], "ground_truth": str(r["answer"])} for r in rows])
    tok = AutoTokenizer.from_pretrained(args.model)
    n = args.prompts_per_step * args.group_size
    gen_kwargs = {} if args.natural_length else {"min_new_tokens": args.max_new_tokens}
    cfg = GRPOConfig(
        output_dir=str(Path(args.out).with_suffix(".trl")), use_cpu=args.device == "cpu",
        bf16=args.device == "cuda", seed=args.seed,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=n // args.micro_batch,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens, temperature=1.0,
        top_p=1.0, top_k=0, generation_kwargs=gen_kwargs, beta=0.0, num_iterations=1, epsilon=0.2,
        loss_type="dapo", scale_rewards="group", mask_truncated_completions=False, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=args.steps,
        logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0, shuffle_dataset=False,
        use_vllm=args.use_vllm, vllm_mode="colocate", log_completions=False, disable_tqdm=True,
    )
    times: list[float] = []
    gen_times: list[float] = []  # per optimizer step: generation + scoring (+ TRL's bookkeeping)
    history: list[dict] = []
    gen_acc = [0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            gen_acc[0] = 0.0
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)
            gen_times.append(gen_acc[0])

        def on_log(self, a, state, control, logs=None, **k):
            if logs:
                history.append(dict(logs))

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if args.device == "cuda"
                                                 else torch.float32)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=_reward, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Timer()], peft_config=peft_config)
    setup_s = time.perf_counter() - t0
    generate = trainer._generate_and_score_completions

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            gen_acc[0] += time.perf_counter() - t

    trainer._generate_and_score_completions = timed_generate
    trainer.train()
    Path(args.out).write_text(json.dumps({"engine": "trl", "step_times_s": times, "generate_s": gen_times,
                                         "setup_s": setup_s,
                                         "logs": history, "samples_per_step": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
