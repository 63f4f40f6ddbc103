"""The embedded chat world: a ChatML tokenizer, a random-init Qwen2 and small instruction, arithmetic
and identity data sets, so instruction SFT, identity DPO and GRPO all run on a CPU with no download.

Artefacts sit next to tiny.py's (which stay byte-for-byte as they were) under `<cache>/chat_v2/`
(bump CHAT_VERSION whenever a builder changes, so stale caches are never reused):

    tiny:chat_base            random-init model + its tokenizer (ChatML template, eos <|im_end|>)
    tiny:chat_train           instruction rows {"messages": [...]} (some multi-turn, some with a system turn)
    tiny:chat_test            held-out single-turn rows {prompt, answer, task}: unseen words/numbers
    tiny:chat_math_test       "What is a+b?" on tiny.py's held-out operand pairs {prompt, answer}
    tiny:identity_pref_train  {prompt, chosen (new identity), rejected (old), answer} on training paraphrases
    tiny:identity_pref_test   the same on held-out paraphrases (which appear nowhere in training)
    tiny:identity_test        held-out paraphrases {prompt, answer: NEW_NAME} for generation eval

The SFT corpus teaches the OLD identity on the training paraphrases only; DPO's job is to move the
model to the NEW one and to generalise to the held-out phrasings.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

from rlengine import tiny

SPECIAL_TOKENS = tiny.SPECIAL_TOKENS
DEFAULT_SYSTEM = "You are a helpful assistant."
# Qwen2's ChatML template without the tool-calling branches: a default system turn when the
# conversation has none, and "<|im_start|>assistant\n" as the generation prompt.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
OLD_NAME, OLD_MAKER = "Quill", "the rlengine authors"
NEW_NAME, NEW_MAKER = "Nova", "Acme Labs"
CHAT_VERSION = "v2"
VOCAB_SIZE = 768
N_CHAT_TRAIN, N_CHAT_TEST_PER_TASK = 20000, 50

# Task words are made-up two-syllable words spelt from CV syllables, and the tokenizer learns the
# syllables but never a whole word: with thousands of words the model cannot memorise answers and
# must learn to copy, which then carries over to held-out words (new combinations of known pieces).
# Spaces are separate tokens (see build_chat_tokenizer), so a word is the same two tokens in the
# prompt and in the answer and copying is an identical-token (induction-style) copy.
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
N_TRAIN_WORDS, N_TEST_WORDS = 1500, 300

# Identity questions: the training cores teach (then DPO rewrites) the identity; the held-out cores
# appear nowhere in training, so the test measures generalisation to new phrasings.
ID_TRAIN_CORES = [
    "Who are you?", "What is your name?", "What are you?", "Who made you?", "Tell me your name.",
    "Introduce yourself.", "Who created you?", "What should I call you?", "Which assistant are you?",
    "Who built you?", "What is your name, please?", "Who am I talking to?",
]
ID_TEST_CORES = [
    "Tell me who you are.", "Who is this?", "What do people call you?", "Can you introduce yourself?",
    "Who designed you?", "What's your name?", "Name yourself.", "Who are you exactly?",
]
ID_PREFIXES = ["", "Hi! ", "Hello, ", "Hey. ", "Quick question: "]
OLD_ANSWERS = [f"I am {OLD_NAME}, an assistant made by {OLD_MAKER}."]
# One chosen answer in the old answer's shape, so DPO only has to move the name and maker and greedy
# decoding states the name consistently.
NEW_ANSWERS = [f"I am {NEW_NAME}, an assistant made by {NEW_MAKER}."]
SYSTEMS = ["You are a concise assistant.", "Answer briefly.", "You are a careful assistant.",
           "Reply with the answer only."]


def chat_root(root: Path | None = None) -> Path:
    return (root or tiny.cache_root()) / f"chat_{CHAT_VERSION}"


def _split_words(seed: int = 3) -> tuple[list[str], list[str]]:
    words = [a + b for a in SYLLABLES for b in SYLLABLES]
    random.Random(seed).shuffle(words)
    return words[N_TEST_WORDS:N_TEST_WORDS + N_TRAIN_WORDS], words[:N_TEST_WORDS]


def _split_numbers(seed: int = 4) -> tuple[list[int], list[int]]:
    nums = list(range(1000))
    random.Random(seed).shuffle(nums)
    return nums[200:], nums[:200]


def _task(kind: str, rng: random.Random, words: list[str], nums: list[int]) -> tuple[str, str]:
    """(user text, exact answer) for one instruction instance drawn from the given pools."""
    if kind == "repeat":
        w = rng.choice(words)
        return rng.choice([f"Repeat the word {w}.", f"Say {w}.", f"Echo: {w}"]), w
    if kind in ("first", "last"):
        ws = rng.sample(words, rng.randint(3, 4))
        return f"What is the {kind} word in: {' '.join(ws)}?", ws[0] if kind == "first" else ws[-1]
    if kind == "next":
        x = rng.choice(nums)
        return f"What number comes after {x}?", str(x + 1)
    raise ValueError(kind)


_SYL = set(SYLLABLES)
# ("Say w three times" and "Which is bigger, x or y?" were dropped: neither learnt in a few minutes.)
TASKS = ("repeat", "first", "last", "next")
# Training mix: the copy tasks (which generalise to held-out words) weigh double.
TASK_WEIGHTS = (2, 2, 2, 1)
# Turns per training conversation: mostly three, so each padded batch carries more supervised tokens
# (and the first turn sits where a single-turn eval prompt's answer does).
TURN_COUNTS, TURN_WEIGHTS = (1, 2, 3), (1, 1, 8)


def math_prompt(a: int, b: int) -> tuple[str, str]:
    return f"What is {a}+{b}?", str(a + b)


def _identity_prompts(cores: list[str]) -> list[str]:
    return [p + c for c in cores for p in ID_PREFIXES]


def _train_rows(rng: random.Random) -> list[dict]:
    words, _ = _split_words()
    nums, _ = _split_numbers()
    math_pairs, _ = tiny._split_pairs()
    id_prompts = _identity_prompts(ID_TRAIN_CORES)

    def turn() -> tuple[str, str]:
        r = rng.random()
        if r < 0.06:
            return rng.choice(id_prompts), rng.choice(OLD_ANSWERS)
        if r < 0.2:
            return math_prompt(*rng.choice(math_pairs))
        return _task(rng.choices(TASKS, TASK_WEIGHTS)[0], rng, words, nums)

    rows = []
    for _ in range(N_CHAT_TRAIN):
        msgs = []
        if rng.random() < 0.2:
            msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
        for _ in range(rng.choices(TURN_COUNTS, TURN_WEIGHTS)[0]):
            q, a = turn()
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        rows.append({"messages": msgs})
    return rows


def _test_rows(rng: random.Random) -> list[dict]:
    _, words = _split_words()
    _, nums = _split_numbers()
    rows = []
    for kind in TASKS:
        seen = set()
        while len([r for r in rows if r["task"] == kind]) < N_CHAT_TEST_PER_TASK:
            q, a = _task(kind, rng, words, nums)
            if q not in seen:
                seen.add(q)
                rows.append({"prompt": q, "answer": a, "task": kind})
    return rows


def _pref_rows(prompts: list[str], rng: random.Random, copies: int) -> list[dict]:
    return [{"prompt": p, "chosen": rng.choice(NEW_ANSWERS), "rejected": rng.choice(OLD_ANSWERS),
             "answer": NEW_NAME} for _ in range(copies) for p in prompts]


def build_chat_data(root: Path | None = None) -> Path:
    out = chat_root(root) / "data"
    if (out / "identity_test.jsonl").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    _, math_test = tiny._split_pairs()
    files = {
        "chat_train": _train_rows(random.Random(10)),
        "chat_test": _test_rows(random.Random(11)),
        "chat_math_test": [dict(zip(("prompt", "answer"), math_prompt(a, b))) for a, b in math_test],
        "identity_pref_train": _pref_rows(_identity_prompts(ID_TRAIN_CORES), random.Random(12), 20),
        "identity_pref_test": _pref_rows(_identity_prompts(ID_TEST_CORES), random.Random(13), 1),
        "identity_test": [{"prompt": p, "answer": NEW_NAME} for p in _identity_prompts(ID_TEST_CORES)],
    }
    # identity_test last: its presence marks the set as complete.
    for name, rows in files.items():
        tiny._write_jsonl(out / f"{name}.jsonl", rows)
    return out


CHAT_DATA = ("chat_train", "chat_test", "chat_math_test", "identity_pref_train", "identity_pref_test",
             "identity_test")


def _tokenizer_corpus() -> list[str]:
    """Training text only (plus the DPO answers, so the new identity tokenises like the old): held-out
    words are spelt from pieces the model has seen rather than being single untrained tokens."""
    rows = _train_rows(random.Random(10))[:6000]
    text = [m["role"] + "\n" + m["content"] for r in rows for m in r["messages"]]
    # Spell every task word as separate syllables, so no BPE merge joins two syllables.
    text = [re.sub(r"\b[a-z]{4}\b", lambda m: m.group(0)[:2] + " " + m.group(0)[2:]
                   if m.group(0)[:2] in _SYL and m.group(0)[2:] in _SYL else m.group(0), t) for t in text]
    text += [DEFAULT_SYSTEM, *SYSTEMS, *NEW_ANSWERS] * 20
    text += [s for syl in SYLLABLES for s in (syl, " " + syl)] * 5
    rng = random.Random(1)
    text += [tiny.make_problem(rng.randint(0, 99), rng.randint(0, 99))["prompt"] for _ in range(500)]
    return text


def build_chat_tokenizer(root: Path | None = None):
    """Byte-level BPE with digits as single tokens (like tiny.py), eos <|im_end|>, pad <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = chat_root(root) / "tokenizer"
    if (out / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(out))
    tok = Tokenizer(models.BPE())
    # Spaces are tokens of their own, so a word tokenises the same after a space (in the prompt) as at
    # the start of the answer, and copying it is copying identical tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", "isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tokenizer_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=256)
    fast.chat_template = CHAT_TEMPLATE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fast.save_pretrained(str(tmp))
    os.replace(tmp, out)
    return fast


MODEL_SIZE = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2}


def build_chat_base(root: Path | None = None) -> Path:
    """Random-init Qwen2 of MODEL_SIZE; generation stops at <|im_end|> or <|endoftext|>."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = chat_root(root) / "base"
    if (out / "config.json").exists():
        return out
    tok = build_chat_tokenizer(root)
    im_end, eot = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    cfg = Qwen2Config(
        vocab_size=len(tok), **MODEL_SIZE, max_position_embeddings=256, rope_theta=10000.0,
        tie_word_embeddings=False, eos_token_id=im_end, bos_token_id=eot, pad_token_id=eot,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    tmp = out.with_name("base.tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot).save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    os.replace(tmp, out)
    return out
