"""Best-of-K rejection sampling (algorithm.name=best_of_n): K samples per prompt from the rollout
engines, scored by the reward functions (plus reward_model.path's weighted score), filtered, and
written as SFT data, preference pairs and per-prompt statistics.

Nothing trains: the stage has no trainer role, the engines serve model.path as it is, and a
checkpoint is the driver state alone (prompts done, rows written per file, running totals).  One
pass over data.train_path (its first sample.max_prompts rows), data.prompts_per_step prompts a
step, in file order: step s samples rows [(s-1)*P, s*P).  Each step appends to the output files;
a resumed run first cuts every file back to the line counts of its checkpoint, so a kill between
an append and the next checkpoint neither loses nor duplicates a prompt.

Files in sample.output_dir (null: <run_dir>/data): sft.jsonl (kept samples, best first per prompt),
pairs.jsonl (the best kept sample vs the worst one, when sample.pairs), stats.jsonl (one row per
prompt).  A run that keeps no sample writes its summary (sample/empty: true) and fails.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rlengine.data import DataError, check_rows, load_rows
from rlengine.errors import ConfigError
from rlengine.layout import concat_rollouts
from rlengine.stages import register_stage
from rlengine.stages.base import Stage, Timer, Uses

log = logging.getLogger("rlengine")
OUTPUTS = ("sft", "pairs", "stats")


@dataclass(frozen=True)
class Sample:
    """One of a prompt's K samples, as the filters see it."""

    response: str
    score: float  # the training score: weighted reward functions (+ the reward model)
    correct: bool  # by the declared verifier (eval.fn, eval.threshold)
    n_tokens: int
    finished: bool  # ended by an end-of-sequence token, not cut at rollout.max_new_tokens


def select(samples: list[Sample], top_n: int, min_score: float | None = None, dedup: bool = True,
           max_response_tokens: int | None = None, keep_unfinished: bool = False) -> list[int]:
    """Indices of the kept samples, best score first (ties: sampling order).  A sample is dropped
    when it is longer than max_response_tokens, unfinished (unless keep_unfinished), scores below
    min_score, or (dedup) repeats the text of a better one; at most top_n remain."""
    ok = [i for i, s in enumerate(samples)
          if (max_response_tokens is None or s.n_tokens <= max_response_tokens)
          and (keep_unfinished or s.finished) and (min_score is None or s.score >= min_score)]
    ranked = sorted(ok, key=lambda i: -samples[i].score)  # stable: equal scores keep sampling order
    kept, seen = [], set()
    for i in ranked:
        if dedup and samples[i].response in seen:
            continue
        seen.add(samples[i].response)
        kept.append(i)
    return kept[:top_n]


def pick_pair(samples: list[Sample], kept: list[int], margin: float,
              max_response_tokens: int | None = None) -> tuple[int, int] | None:
    """(chosen, rejected): the best kept sample and the lowest-scoring sample within the length cap
    whose text differs (ties: the first sampled), when their scores differ by at least margin."""
    if not kept:
        return None
    chosen = kept[0]
    pool = [i for i, s in enumerate(samples) if s.response != samples[chosen].response
            and (max_response_tokens is None or s.n_tokens <= max_response_tokens)]
    if not pool:
        return None
    rejected = min(pool, key=lambda i: samples[i].score)  # min is stable: the first of equal scores
    if samples[chosen].score - samples[rejected].score < margin:
        return None
    return chosen, rejected


def prompt_stats(samples: list[Sample], kept: list[int]) -> dict:
    """One stats.jsonl row's figures: std is the population std (over the K samples); pass@K is 1
    when any sample is correct."""
    scores = [s.score for s in samples]
    n = len(scores)
    mean = sum(scores) / n
    return {"n": n, "kept": len(kept), "score_mean": mean, "score_max": max(scores), "score_min": min(scores),
            "score_std": math.sqrt(sum((x - mean) ** 2 for x in scores) / n),
            "correct": sum(s.correct for s in samples), "pass_at_k": float(any(s.correct for s in samples)),
            "unique": len({s.response for s in samples}), "unfinished": sum(not s.finished for s in samples)}


def totals_figures(t: dict) -> dict:
    """The run's sample/* figures from the running totals (counts summed over prompts)."""
    return {"sample/prompts": t["prompts"], "sample/samples": t["samples"], "sample/rows": t["kept"],
            "sample/pairs": t["pairs"],
            "sample/single_accuracy": t["correct"] / t["samples"] if t["samples"] else 0.0,
            "sample/kept_accuracy": t["kept_correct"] / t["kept"] if t["kept"] else 0.0,
            "sample/pass_at_k": t["passed"] / t["prompts"] if t["prompts"] else 0.0,
            "sample/kept_fraction": t["kept"] / t["samples"] if t["samples"] else 0.0,
            "sample/prompts_kept_fraction": t["prompts_kept"] / t["prompts"] if t["prompts"] else 0.0,
            "sample/score_mean": t["score_sum"] / t["samples"] if t["samples"] else 0.0}


TOTALS = ("prompts", "samples", "correct", "kept", "kept_correct", "passed", "pairs", "prompts_kept", "score_sum")


def truncate_lines(path: Path, n: int) -> None:
    """Keep the first n lines of `path` (a checkpoint's count); fewer lines than that means rows the
    checkpoint recorded are gone, which resuming cannot repair."""
    have = 0
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            if have == n:
                break
            if not line.endswith(b"\n"):  # a torn last line of a killed append
                break
            have += 1
            offset += len(line)
    if have < n:
        raise DataError(f"{path} has {have} complete lines but its checkpoint recorded {n}: the output was "
                        f"changed after the checkpoint (resume=never starts fresh)")
    os.truncate(path, offset)


class Outputs:
    """The append-only output files and their line counts (the resume point)."""

    def __init__(self, root: Path, names: tuple[str, ...] = OUTPUTS):
        self.root = root
        self.paths = {n: root / f"{n}.jsonl" for n in names}
        self.lines = {n: 0 for n in names}

    def open(self, lines: dict[str, int] | None) -> None:
        """Resume at `lines` (a checkpoint's counts), or start every file empty (None)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name, path in self.paths.items():
            want = (lines or {}).get(name, 0)
            if not path.exists():
                if want:
                    raise DataError(f"{path} is missing but its checkpoint recorded {want} lines")
                path.touch()
            elif lines is None and path.stat().st_size:
                log.warning("best_of_n: a fresh run replaces the %d bytes already in %s", path.stat().st_size, path)
            truncate_lines(path, want)
            self.lines[name] = want

    def append(self, name: str, rows: list[dict]) -> None:
        if not rows:
            return
        with open(self.paths[name], "a") as f:
            f.write("".join(json.dumps(r, default=str) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.lines[name] += len(rows)


def verifier(cfg) -> tuple[str | None, dict]:
    """The declared check that says whether a sample is correct (as held-out evaluation reads it):
    eval.fn, else the first reward function with its kwargs; None: score >= eval.threshold."""
    first = cfg.reward.fns[0] if cfg.reward.fns else None
    spec = cfg.eval.fn or (first.fn if first else None)
    return spec, (dict(first.kwargs) if first and spec == first.fn else {})


@register_stage
class BestOfN(Stage):
    name = "best_of_n"
    trains = False
    online = True  # samples every step; the engines never need the weights pushed
    scores_samples = True
    headline = ("sample/kept_accuracy", "kept-data accuracy")
    output_names = OUTPUTS  # summary.json `outputs` (what a pipeline can take as data)

    @classmethod
    def sequences_per_row(cls, cfg) -> int:
        return cfg.sample.k

    @classmethod
    def uses(cls, cfg) -> Uses:
        return Uses(rollout=True, reward_model=cfg.reward_model.path is not None)

    @classmethod
    def check(cls, cfg) -> None:
        s = cfg.sample
        if s.k < 1:
            raise ConfigError("sample.k", f"samples per prompt must be >= 1, got {s.k}")
        if not 1 <= s.top_n <= s.k:
            raise ConfigError("sample.top_n", f"must be in [1, sample.k={s.k}], got {s.top_n}")
        if s.max_response_tokens is not None and s.max_response_tokens < 1:
            raise ConfigError("sample.max_response_tokens", f"must be > 0 (or null), got {s.max_response_tokens}")
        if s.max_prompts is not None and s.max_prompts < 1:
            raise ConfigError("sample.max_prompts", f"must be > 0 (or null: every row), got {s.max_prompts}")
        if s.pair_margin < 0:
            raise ConfigError("sample.pair_margin", f"must be >= 0, got {s.pair_margin}")
        if s.k > 1 and cfg.rollout.temperature == 0:
            raise ConfigError("rollout.temperature", f"0 is greedy decoding: the {s.k} samples per prompt would be "
                                                     "identical; sample with rollout.temperature > 0")
        if not cfg.reward.fns and cfg.reward_model.path is None:
            raise ConfigError("reward.fns", "best_of_n ranks samples by a score: set reward.fns or reward_model.path")
        if cfg.algorithm.kl_coef > 0:
            raise ConfigError("algorithm.kl_coef", "best_of_n trains nothing: there is no KL term")
        if cfg.model.lora.r > 0:
            raise ConfigError("model.lora.r", "best_of_n samples from model.path and trains nothing: merge the "
                                              "adapter into a model (python -m rlengine.export) and sample from that")
        if cfg.resources.colocate:
            raise ConfigError("resources.colocate", "best_of_n has no trainer to share the engines' devices with")
        if cfg.resources.device == "cuda" and cfg.resources.gpus_per_rollout <= 0:
            raise ConfigError("resources.gpus_per_rollout", "resources.device=cuda: each engine needs a GPU "
                                                            "(best_of_n has no trainer: gpus_per_trainer is unused)")
        if cfg.checkpoint.export_hf_to:
            raise ConfigError("checkpoint.export_hf_to", "best_of_n trains no model: there is nothing to export")

    @classmethod
    def summary_keys(cls, cfg) -> list[str]:
        return []  # no held-out evaluation: the figures are the sample/* totals (results)

    def __init__(self, cfg, plan):
        super().__init__(cfg, plan)
        self.totals = {k: 0 for k in TOTALS}
        self.totals["score_sum"] = 0.0
        self.rows: list[dict] = []
        self.outputs: Outputs | None = None
        self._resume_lines: dict | None = None
        self._opened = False
        self._verifier = None  # a RewardManager for a verifier that is not one of reward.fns

    # Before Ray: data, output directory, step count.

    def load_data(self):
        """Training rows only: nothing is evaluated on data.test_path."""
        d, s = self.cfg.data, self.cfg.sample
        train = load_rows(d.train_path, d.train_split, d.config_name)
        check_rows(train, (d.prompt_key, d.answer_key), f"{d.train_path} (data.train_path)")
        self.rows = train[:s.max_prompts] if s.max_prompts else train
        return train, []

    def heldout_rows(self, test_rows):
        return None

    def start(self, run_dir: Path) -> None:
        out = Path(self.cfg.sample.output_dir).expanduser() if self.cfg.sample.output_dir else run_dir / "data"
        self.outputs = Outputs(out.resolve())
        log.info("best_of_n: %d prompts of %s x %d samples, %d per step: %d steps (trainer.total_steps is not "
                 "read); output: %s", len(self.rows), self.cfg.data.train_path, self.cfg.sample.k,
                 self.cfg.data.prompts_per_step, self.total_steps(), out)

    def total_steps(self) -> int:
        return -(-len(self.rows) // self.cfg.data.prompts_per_step)

    def evaluate(self, ctl) -> dict:
        return {}  # the sampler is not trained: there is no before/after to compare

    # Driver state (checkpointed after each step).

    def state_dict(self) -> dict:
        lines = dict(self.outputs.lines) if self._opened else self._resume_lines
        return {"best_of_n": {"totals": dict(self.totals), "lines": lines,
                              "prompts_per_step": self.cfg.data.prompts_per_step}}

    def load_state_dict(self, state: dict) -> None:
        if "best_of_n" not in state:
            return
        mine = state["best_of_n"]
        # Step s samples rows [(s-1)*P, s*P): another P would skip or repeat rows.
        if mine["prompts_per_step"] != self.cfg.data.prompts_per_step:
            raise ConfigError("data.prompts_per_step", f"the checkpoint sampled {mine['prompts_per_step']} prompts a "
                                                       "step: resuming with another count would skip or repeat rows")
        self.totals.update(mine["totals"])
        self._resume_lines = mine["lines"] or {}

    def step(self, ctl, step: int) -> dict:
        s, d, timer = self.cfg.sample, self.cfg.data, Timer()
        if not self._opened:
            self.outputs.open(self._resume_lines)
            self._opened = True
        first = (step - 1) * d.prompts_per_step
        rows = self.rows[first:first + d.prompts_per_step]
        with timer("step"):
            prompts = ctl.prompts(rows, step)
            with timer("rollout"):
                batch = ctl.redo(ctl.roles.rollout, "generate", prompts, s.k, join=concat_rollouts)  # [P*K, ...]
            with timer("reward"):
                batch, scored = ctl.score(batch)
                correct_N = self.correct(batch, scored)
            with timer("write"):
                samples = self.samples(ctl, batch, correct_N)
                step_totals = self.write(rows, first, samples)
        for k, v in step_totals.items():
            self.totals[k] += v
        m = totals_figures(step_totals)
        m.update({"reward/mean": float(batch["scores"].mean()), "reward/errors": scored.errors,
                  "reward/timeouts": scored.timeouts,
                  "response_length/mean": float(batch["response_length"].float().mean()),
                  "perf/throughput_tokens_per_s": float(batch["response_length"].sum()) / timer.t["timing_s/step"]})
        return {**m, **timer.t, **ctl.faults}

    def correct(self, batch, scored) -> torch.Tensor:
        spec, kwargs = verifier(self.cfg)
        threshold = self.cfg.eval.threshold - 1e-6  # as evaluate.HeldOut compares
        if spec is None:
            return batch["scores"] >= threshold
        for f, fn_scores in zip(self.cfg.reward.fns, scored.per_fn):
            if f.fn == spec and dict(f.kwargs) == kwargs:
                return fn_scores >= threshold
        if self._verifier is None:
            from rlengine.config import RewardConfig, RewardFnConfig
            from rlengine.rewards import RewardManager

            self._verifier = RewardManager(RewardConfig(fns=[RewardFnConfig(fn=spec, kwargs=kwargs)],
                                                        timeout_s=self.cfg.reward.timeout_s))
        res = self._verifier.score(batch["prompt"], batch["response"], batch["ground_truth"], batch["extra"])
        return res.per_fn[0] >= threshold

    def samples(self, ctl, batch, correct_N) -> list[Sample]:
        lengths = [int(n) for n in batch["response_length"].tolist()]  # float in the rollout layout
        eos = ctl.encoder.tokenizer.eos_token_id
        resp = batch["responses"]
        out = []
        for i, (text, score, ok, n) in enumerate(zip(batch["response"], batch["scores"].tolist(),
                                                     correct_N.tolist(), lengths)):
            ended = n > 0 and int(resp[i, n - 1]) == eos
            out.append(Sample(text, float(score), bool(ok), int(n), ended or n < self.cfg.rollout.max_new_tokens))
        return out

    def write(self, rows: list[dict], first: int, samples: list[Sample]) -> dict:
        """Filter each prompt's K samples and append this step's rows to the three files; returns
        the step's totals."""
        s, d = self.cfg.sample, self.cfg.data
        system = [{"role": "system", "content": d.system_prompt}] if d.chat_template and d.system_prompt else []
        sft, pairs, stats = [], [], []
        t = {k: 0 for k in TOTALS}
        t["score_sum"] = 0.0
        for p, row in enumerate(rows):
            group = samples[p * s.k:(p + 1) * s.k]
            kept = select(group, s.top_n, s.min_score, s.dedup, s.max_response_tokens, s.keep_unfinished)
            prompt, answer = row[d.prompt_key], row[d.answer_key]
            for j in kept:
                g = group[j]
                sft.append({"messages": [*system, {"role": "user", "content": prompt},
                                         {"role": "assistant", "content": g.response}],
                            d.prompt_key: prompt, "completion": g.response, d.answer_key: answer,
                            "score": g.score, "correct": g.correct, "index": first + p, "sample": j})
            pair = pick_pair(group, kept, s.pair_margin, s.max_response_tokens) if s.pairs else None
            if pair is not None:
                c, r = group[pair[0]], group[pair[1]]
                pairs.append({d.prompt_key: prompt, d.chosen_key: c.response, d.rejected_key: r.response,
                              d.answer_key: answer, "chosen_score": c.score, "rejected_score": r.score,
                              "index": first + p})
            st = prompt_stats(group, kept)
            stats.append({"index": first + p, "source": row.get("_source"), **st})
            t["prompts"] += 1
            t["samples"] += st["n"]
            t["correct"] += st["correct"]
            t["kept"] += len(kept)
            t["kept_correct"] += sum(group[j].correct for j in kept)
            t["passed"] += int(st["pass_at_k"])
            t["pairs"] += pair is not None
            t["prompts_kept"] += bool(kept)
            t["score_sum"] += st["score_mean"] * st["n"]
        # stats last: its line count is the number of prompts whose rows are all written.
        self.outputs.append("sft", sft)
        self.outputs.append("pairs", pairs)
        self.outputs.append("stats", stats)
        return t

    # After the loop.

    def results(self) -> dict:
        out = dict(totals_figures(self.totals))
        out["sample/empty"] = self.totals["kept"] == 0
        if self.outputs is not None:
            out["outputs"] = {n: str(p) for n, p in self.outputs.paths.items()}
        return out

    def finish(self, summary: dict) -> None:
        if summary.get("sample/empty"):
            s = self.cfg.sample
            raise DataError(
                f"best_of_n kept no sample of {self.totals['samples']} ({self.totals['prompts']} prompts; "
                f"sample.min_score={s.min_score}, sample.max_response_tokens={s.max_response_tokens}, "
                f"sample.keep_unfinished={s.keep_unfinished}): {summary.get('outputs', {}).get('sft')} is empty, "
                f"nothing to train on (summary.json records sample/empty: true)")

    def close(self) -> None:
        if self._verifier is not None:
            self._verifier.close()
            self._verifier = None
