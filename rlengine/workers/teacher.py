"""The teacher of distillation: a frozen causal LM scoring the student's token ids.

Per response token it returns the teacher's top-k log-probs at the distillation temperature
(teacher.top_k; 0: the whole vocabulary), their ids, its entropy and the log-prob of the token
itself (the sampled or target token), all aligned with the batch's response columns.  The ids are
the student's: teacher and student share one vocabulary (checked before any actor starts,
`check_vocabulary`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rlengine import faults
from rlengine.algos.distill import teacher_topk
from rlengine.config import RootConfig
from rlengine.errors import ConfigError
from rlengine.layout import micro_batches
from rlengine.modeling import load_causal_lm, response_token_map, set_threads
from rlengine.plan import token_budget
from rlengine.protocol import Batch


@torch.no_grad()
def teacher_scores(model, batch: Batch, k: int, temperature: float, micro_batch_size: int, device,
                   max_tokens: int | None = None, chunk_tokens: int = 512, vocab_size: int | None = None) -> Batch:
    """teacher_logp [B, R, K] (K = k, or V for k = 0), teacher_ids [B, R, K] (absent for k = 0),
    teacher_entropy [B, R], teacher_token_logp [B, R] of `batch`'s responses.

    vocab_size: the student's output size.  The teacher's distribution is taken over those first
    ids only: a larger head's extra rows (Qwen2.5-7B pads to 152,064 rows, 1.5B to 151,936) are
    padding no tokenizer emits, and an id past the student's head could not be compared."""

    def fn(z_nV, labels_n):
        z_nV = z_nV[:, :vocab_size]
        logp_nK, ids_nK, ent_n = teacher_topk(z_nV, k, temperature)
        token_n = torch.log_softmax(z_nV / temperature, dim=-1).gather(-1, labels_n.unsqueeze(-1)).squeeze(-1)
        out = (logp_nK, ent_n, token_n)
        return out if ids_nK is None else (*out, ids_nK)

    mbs = micro_batches(batch, micro_batch_size, max_tokens, device)
    per_micro = [response_token_map(model, m, fn, chunk_tokens=chunk_tokens) for m in mbs]
    names = ("teacher_logp", "teacher_entropy", "teacher_token_logp", "teacher_ids")
    return Batch(tensors={name: mbs.gather([o[j] for o in per_micro]) for j, name in enumerate(names)
                          if j < len(per_micro[0])})


class TeacherWorker:
    def __init__(self, cfg: RootConfig, model_path: str, micro_batch_size: int, student_vocab_size: int | None):
        self.cfg, self.micro_batch_size, self.vocab_size = cfg, micro_batch_size, student_vocab_size
        self.device = torch.device("cuda" if cfg.resources.device == "cuda" else "cpu")
        if cfg.resources.device == "cpu":
            set_threads(cfg.trainer.cpu_threads)
        m = cfg.model
        self.model = load_causal_lm(model_path, cfg.teacher.dtype or m.dtype, m.attn_implementation,
                                    m.trust_remote_code).requires_grad_(False).to(self.device).eval()

    def score(self, batch: Batch) -> Batch:
        faults.maybe_kill("teacher", batch.info.get("step"))
        return teacher_scores(self.model, batch, self.cfg.teacher.top_k, self.cfg.distill.temperature,
                              self.micro_batch_size, self.device, token_budget(self.cfg, "teacher"),
                              self.cfg.trainer.logits_chunk_tokens, self.vocab_size)


def vocab_size(model_dir: str | Path) -> int | None:
    """config.json's vocab_size (the output head's rows) of a local model directory, or None."""
    path = Path(model_dir) / "config.json"
    if not path.exists():
        return None
    c = json.loads(path.read_text())
    return (c.get("text_config") or c).get("vocab_size")


def _vocab(model_dir: Path, tokenizer_dir: Path) -> tuple[int | None, dict | None]:
    """(config vocab_size, the tokenizer's token -> id map) of local directories, None where absent."""
    size = vocab_size(model_dir)
    vocab = None
    if (tokenizer_dir / "tokenizer.json").exists() or (tokenizer_dir / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        vocab = AutoTokenizer.from_pretrained(str(tokenizer_dir)).get_vocab()
    return size, vocab


def check_vocabulary(student: tuple[str, str], teacher: tuple[str, str]) -> None:
    """ConfigError (teacher.path) unless the teacher's tokenizer maps every token to the same id
    as the student's and its output head covers the student's ids: the teacher scores the
    student's token ids directly (no re-tokenization), so a differing vocabulary would compare
    unrelated tokens.  Paths are (model, tokenizer) local directories; hub names not yet
    downloaded are checked when present only."""
    s_size, s_vocab = _vocab(Path(student[0]), Path(student[1]))
    t_size, t_vocab = _vocab(Path(teacher[0]), Path(teacher[1]))
    if s_vocab is not None and t_vocab is not None and s_vocab != t_vocab:
        differ = sorted(k for k in set(s_vocab) ^ set(t_vocab))[:5] or sorted(
            k for k in s_vocab if s_vocab[k] != t_vocab.get(k))[:5]
        raise ConfigError("teacher.path", f"the teacher's tokenizer ({teacher[1]}, {len(t_vocab)} tokens) and the "
                                          f"student's ({student[1]}, {len(s_vocab)} tokens) differ, e.g. {differ}: "
                                          "distillation compares per-token distributions over one shared vocabulary")
    if s_vocab is not None and t_size is not None and max(s_vocab.values()) >= t_size:
        raise ConfigError("teacher.path", f"the teacher's output head has {t_size} rows but the student's tokenizer "
                                          f"uses ids up to {max(s_vocab.values())}")
    if s_size is not None and t_size is not None and s_vocab is None and t_vocab is None and s_size != t_size:
        raise ConfigError("teacher.path", f"teacher vocab_size {t_size} != student vocab_size {s_size}")
