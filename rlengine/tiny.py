"""The embedded default: a tiny Qwen2-architecture model, a locally trained tokenizer and a
synthetic arithmetic task, so the whole CPU path runs without a download.

Everything here is deterministic and cached under `$RLENGINE_CACHE` (default
`~/.cache/rlengine`).  Paths in recipes use the `tiny:` scheme:

    tiny:base   random-initialised model + tokenizer
    tiny:sft    the base model warm-started by recipe=sft_tiny (built by rlengine.main when missing)
    tiny:rm     a reward model (scalar head) trained by recipe=rm_tiny from tiny:sft
    tiny:teacher_base / tiny:teacher  a 5.4x larger model, and the distillation teacher trained from
                it by recipe=sft_tiny_teacher
    tiny:train  training prompts (jsonl), tiny:test  the held-out split (disjoint operand pairs)
    tiny:pref_train / tiny:pref_test  preference pairs {prompt, chosen, rejected} on the same splits

The chat world (rlengine/tiny_chat.py, its own tokenizer and model, cached under `chat/`):

    tiny:chat_base  random-initialised ChatML model + tokenizer
    tiny:chat       tiny:chat_base after instruction SFT by recipe=sft_tiny_chat
    tiny:chat_train / tiny:chat_test / tiny:chat_math_test  instruction and arithmetic chat data
    tiny:identity_pref_train / tiny:identity_pref_test / tiny:identity_test  identity DPO and eval
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

TINY_VERSION = "v3"  # v3: tiny:sft stops at 0.35 (recipes/sft_tiny.yaml), so v2 caches are stale
SCHEME = "tiny:"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
N_TRAIN, N_TEST, MAX_OPERAND = 20000, 500, 99


def cache_root() -> Path:
    return Path(os.environ.get("RLENGINE_CACHE", Path.home() / ".cache" / "rlengine")) / "tiny" / TINY_VERSION


def is_tiny(path: str | None) -> bool:
    return bool(path) and path.startswith(SCHEME)


def tiny_name(path: str) -> str:
    return path[len(SCHEME):]


def make_problem(a: int, b: int) -> dict:
    """One row: ground truth is the plain integer answer; the prompt ends where the answer starts."""
    return {"prompt": f"Q: {a}+{b}=? A:", "answer": str(a + b), "completion": f" {a + b}"}


def _split_pairs(seed: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    rng.shuffle(pairs)
    # Disjoint operand pairs: the held-out split is never seen in training.
    test = pairs[:N_TEST]
    pool = pairs[N_TEST:]
    train = [pool[i % len(pool)] for i in range(N_TRAIN)]
    return train, test


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def make_preference(a: int, b: int, rng: random.Random) -> dict:
    """Chosen: the right sum. Rejected: off by 1..9, so the units digit always differs and a small
    model can learn the preference from the operands' units digits."""
    right = a + b
    wrong = right + rng.choice([d for d in range(-9, 10) if d and right + d >= 0])
    p = make_problem(a, b)
    return {"prompt": p["prompt"], "chosen": f" {right}", "rejected": f" {wrong}", "answer": p["answer"]}


def build_data(root: Path | None = None) -> Path:
    root = (root or cache_root()) / "data"
    if (root / "pref_test.jsonl").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    train, test = _split_pairs()
    _write_jsonl(root / "train.jsonl", [make_problem(a, b) for a, b in train])
    _write_jsonl(root / "test.jsonl", [make_problem(a, b) for a, b in test])
    rng = random.Random(2)
    _write_jsonl(root / "pref_train.jsonl", [make_preference(a, b, rng) for a, b in train])
    _write_jsonl(root / "pref_test.jsonl", [make_preference(a, b, rng) for a, b in test])
    return root


def _tokenizer_corpus() -> list[str]:
    rng = random.Random(1)
    lines = [make_problem(rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)) for _ in range(3000)]
    text = [r["prompt"] + r["completion"] for r in lines]
    # Some plain English and chat scaffolding so the vocabulary is not arithmetic-only.
    text += ["You are a helpful assistant. The answer is", "system user assistant Question Answer"] * 50
    return text


def build_tokenizer(root: Path | None = None):
    """A byte-level BPE (vocab 512) with every digit its own token, saved in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = (root or cache_root()) / "tokenizer"
    if (out / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(out))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tokenizer_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   model_max_length=256)
    fast.chat_template = CHAT_TEMPLATE
    tmp = out.with_name(out.name + ".tmp")
    fast.save_pretrained(str(tmp))
    os.replace(tmp, out)
    return fast


# name -> (hidden, intermediate, layers, attention heads, KV heads) of the random-initialised models.
BASES = {"base": (128, 384, 4, 4, 2),  # ~0.92M parameters
         "teacher_base": (256, 768, 6, 8, 4)}  # ~5.0M: the distillation teacher, 5.4x the student


def build_base(root: Path | None = None, name: str = "base") -> Path:
    """Random-initialised Qwen2 of BASES[name]'s shape (head dim 32) with the tiny tokenizer."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    root = root or cache_root()
    out = root / name
    if (out / "config.json").exists():
        return out
    tok = build_tokenizer(root)
    hidden, inter, layers, heads, kv = BASES[name]
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256,
        rope_theta=10000.0, tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    tmp = out.with_name(name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    os.replace(tmp, out)
    return out


# Trained tiny artefacts: name -> the recipe that builds it (rlengine.job runs it when missing).
TRAINED = {"sft": "sft_tiny", "rm": "rm_tiny", "chat": "sft_tiny_chat", "teacher": "sft_tiny_teacher"}


def trained_dir(name: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / name


def sft_dir(root: Path | None = None) -> Path:
    return trained_dir("sft", root)


def resolve_path(path: str) -> str:
    """Map a `tiny:` path to a local file or directory, building what can be built without training.

    `tiny:sft` must already exist (rlengine.main builds it by running recipe=sft_tiny first).
    """
    if not is_tiny(path):
        return path
    name = tiny_name(path)
    if name in BASES:
        return str(build_base(name=name))
    if name == "chat_base":
        from rlengine import tiny_chat

        return str(tiny_chat.build_chat_base())
    if name in TRAINED:
        d = trained_dir(name)
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"{path} is not built yet: run `python -m rlengine.main recipe={TRAINED[name]}`")
        return str(d)
    if name in ("train", "test", "pref_train", "pref_test"):
        return str(build_data() / f"{name}.jsonl")
    from rlengine import tiny_chat

    if name in tiny_chat.CHAT_DATA:
        return str(tiny_chat.build_chat_data() / f"{name}.jsonl")
    raise ValueError(f"unknown tiny artefact {path!r}; known: tiny:base, tiny:teacher_base, tiny:sft, tiny:rm, "
                     "tiny:teacher, tiny:train, "
                     f"tiny:test, tiny:pref_train, tiny:pref_test, tiny:chat_base, tiny:chat, "
                     + ", ".join(f"tiny:{n}" for n in tiny_chat.CHAT_DATA))


def is_built(name: str) -> bool:
    return (trained_dir(name) / "config.json").exists()


def sft_is_built() -> bool:
    return is_built("sft")
