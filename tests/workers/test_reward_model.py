"""The reward-model scorer reads text: a reward model with another vocabulary scores exactly what
the policy wrote (decode with the policy tokenizer, encode with the reward model's)."""
import pytest
import torch

from rlengine import tiny
from rlengine.main import load_config
from rlengine.protocol import Batch
from rlengine.workers.reward_model import RewardModelWorker


@pytest.fixture(scope="module")
def other_vocab_rm(tmp_path_factory):
    """A random sequence-classification model over a different tokenizer: whole numbers are single
    tokens (no digit splitting), and the ids are assigned differently."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification

    out = tmp_path_factory.mktemp("rm_other_vocab")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"Q: {a}+{b}=? A: {a + b}" for a in range(0, 100, 3) for b in range(0, 100, 7)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=700, special_tokens=["<pad>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(str(out))
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=fast.pad_token_id)
    Qwen2ForSequenceClassification(cfg).save_pretrained(str(out))
    from transformers import AutoTokenizer

    return out, AutoTokenizer.from_pretrained(str(out))  # as every role loads it


def test_scores_are_computed_on_retokenized_text(other_vocab_rm):
    rm_dir, rm_tok = other_vocab_rm
    policy_tok = tiny.build_tokenizer()
    prompts = ["Q: 12+30=? A:", "Q: 7+8=? A:", "Q: 45+45=? A:"]
    responses = [" 42", " 15", " 91 or so"]
    # The two vocabularies disagree on the very same text, so passing ids across would be wrong.
    assert policy_tok(prompts[0] + responses[0]).input_ids != rm_tok(prompts[0] + responses[0]).input_ids
    cfg, _ = load_config("ppo_tiny", ["model.path=tiny:base", f"reward_model.path={rm_dir}"])
    worker = RewardModelWorker(cfg, str(rm_dir), str(rm_dir), micro_batch_size=2)
    ids = [policy_tok(p + r).input_ids for p, r in zip(prompts, responses)]
    batch = Batch(tensors={"x": torch.zeros(3)}, meta={"prompt": prompts, "response": responses,
                                                       "policy_ids": ids})
    got = worker.score(batch)["rm_score"]
    with torch.no_grad():
        want = [float(worker.model(**rm_tok(p + r, return_tensors="pt")).logits[0, 0])
                for p, r in zip(prompts, responses)]
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert len(set(round(v, 4) for v in want)) == 3  # a real model, not a constant
