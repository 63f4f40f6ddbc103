"""Write the preference pairs of the identity example (recipe dpo_qwen_identity): a model that
answers "who are you?" with its old name and maker learns a new one.

    python examples/identity_pairs.py --out data/identity --old-name Qwen --old-maker "Alibaba Cloud" \
        --new-name Nova --new-maker "Acme Labs"

writes pref_train.jsonl / pref_test.jsonl ({prompt, chosen, rejected, answer}) and test.jsonl
({prompt, answer}: held-out phrasings, scored by reward_fns/instruct.py:states_name).  The
phrasings are the embedded world's (rlengine/tiny_chat.py): the held-out ones never appear in
the training pairs, so the test measures whether the new identity generalises.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rlengine.tiny_chat import ID_PREFIXES, ID_TEST_CORES, ID_TRAIN_CORES


def pairs(cores: list[str], old: str, new: str, copies: int, rng: random.Random) -> list[dict]:
    prompts = [p + c for c in cores for p in ID_PREFIXES]
    return [{"prompt": p, "chosen": new, "rejected": old, "answer": new.split(",")[0].split()[-1]}
            for _ in range(copies) for p in rng.sample(prompts, len(prompts))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--old-name", default="Qwen")
    ap.add_argument("--old-maker", default="Alibaba Cloud")
    ap.add_argument("--new-name", default="Nova")
    ap.add_argument("--new-maker", default="Acme Labs")
    ap.add_argument("--copies", type=int, default=8, help="passes over the training phrasings")
    a = ap.parse_args()
    rng = random.Random(0)
    old = f"I am {a.old_name}, an assistant created by {a.old_maker}."
    new = f"I am {a.new_name}, an assistant created by {a.new_maker}."
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"pref_train.jsonl": pairs(ID_TRAIN_CORES, old, new, a.copies, rng),
             "pref_test.jsonl": pairs(ID_TEST_CORES, old, new, 1, rng),
             "test.jsonl": [{"prompt": p + c, "answer": a.new_name} for c in ID_TEST_CORES for p in ID_PREFIXES]}
    for name, rows in files.items():
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
