import pytest
import torch

from rlengine import chat, tiny
from rlengine.config import DataConfig
from rlengine.data import DataError
from rlengine.modeling import response_logprobs
from rlengine.protocol import Batch

# Qwen2.5's shape: a default system turn when the conversation has none.
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MULTI = [{"role": "user", "content": "Q: 2+3=?"}, {"role": "assistant", "content": "It is 5."},
         {"role": "user", "content": "And 4+4?"}, {"role": "assistant", "content": "The answer is 8"}]


@pytest.fixture(scope="module")
def tok_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


@pytest.fixture(scope="module")
def tok(tok_root):
    return tiny.build_tokenizer(tok_root)


@pytest.fixture(scope="module")
def qwen_tok(tok, tok_root):
    t = tiny.build_tokenizer(tok_root)  # a second instance, loaded from the saved files
    t.chat_template = QWEN_TEMPLATE
    return t


def _loss_spans(tok, r: chat.Rendered) -> list[str]:
    """The decoded runs of loss-masked response tokens."""
    spans, cur = [], []
    for t, m in zip(r.response_ids, r.loss_mask):
        if m:
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    return [tok.decode(s) for s in spans + ([cur] if cur else [])]


@pytest.mark.parametrize("which", ["chatml", "qwen"])
def test_loss_covers_each_assistant_turn_and_its_end_token(tok, qwen_tok, which):
    t = tok if which == "chatml" else qwen_tok
    r = chat.render(t, MULTI, max_length=512)
    assert _loss_spans(t, r) == ["It is 5.<|im_end|>", "The answer is 8<|im_end|>"]
    assert not r.truncated and len(r.loss_mask) == len(r.response_ids)
    prompt = t.decode(r.prompt_ids)
    assert prompt.endswith("<|im_start|>user\nQ: 2+3=?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.") == (which == "qwen")
    # The user turn between the assistant turns is in the response columns, outside the loss.
    assert "And 4+4?" in t.decode(r.response_ids)


def test_system_prompt_only_when_the_row_has_none(tok):
    r = chat.render(tok, MULTI[:2], 512, system_prompt="Be brief.")
    assert tok.decode(r.prompt_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    own = [{"role": "system", "content": "Mine."}, *MULTI[:2]]
    assert "Be brief." not in tok.decode(chat.render(tok, own, 512, system_prompt="Be brief.").prompt_ids)


def test_a_template_that_is_not_prefix_stable_is_refused(tok, tok_root):
    t = tiny.build_tokenizer(tok_root)
    # Marks the final turn (as templates that strip earlier turns' reasoning do): history then
    # renders differently from the conversation's end.
    content = "{{ m['content'] }}"
    t.chat_template = tiny.CHAT_TEMPLATE.replace(content, content + "{% if loop.last %}!{% endif %}")
    with pytest.raises(ValueError, match=r"not prefix-stable: messages\[:1\] \+ generation prompt"):
        chat.render(t, MULTI, 512)


def test_formats_normalise():
    d = DataConfig()
    ua = lambda u, a: [{"role": "user", "content": u}, {"role": "assistant", "content": a}]  # noqa: E731
    assert chat.to_messages({"messages": MULTI}, d) == MULTI
    share = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "hi"},
                               {"from": "gpt", "value": "yo"}]}
    assert chat.to_messages(share, d) == [{"role": "system", "content": "S"}, *ua("hi", "yo")]
    assert chat.to_messages({"instruction": "Sum", "input": "2 3", "output": "5"}, d) == ua("Sum\n\n2 3", "5")
    assert chat.to_messages({"instruction": "Sum", "input": "", "output": "5"}, d) == ua("Sum", "5")
    assert chat.to_messages({"instruction": "Sum", "output": "5"}, d) == ua("Sum", "5")
    assert chat.to_messages({"prompt": "p", "response": "r"}, d) == ua("p", "r")
    assert chat.to_messages({"prompt": "p", "completion": "c"}, d) == ua("p", "c")
    mixed = {"messages": None, "conversations": None, "instruction": None, "prompt": "p", "response": "r"}
    assert chat.to_messages(mixed, d) == ua("p", "r")  # a parquet row with the other formats' columns
    d2 = DataConfig(prompt_key="q", response_key="a", messages_key="chat")
    assert chat.to_messages({"q": "p", "a": "r"}, d2) == ua("p", "r")
    assert chat.to_messages({"chat": MULTI}, d2) == MULTI


def _ua(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


@pytest.mark.parametrize("row, problem", [
    ({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'tool'"),
    (_ua("", "y"), "turn 0 (user): empty content"),
    (_ua("x", 3), "turn 1 (assistant): non-text (int) content"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
    ({"messages": MULTI[:3]}, "ends with a user turn"),
    ({"messages": MULTI[1:2]}, "needs a user turn before it"),
    ({"messages": []}, "non-empty list"),
    ({"question": "x", "answer": "y"}, "unknown row format: keys ['answer', 'question']; expected 'messages'"),
])
def test_bad_rows_name_file_line_and_problem(row, problem):
    good = {"prompt": "p", "response": "r", "_source": "d.jsonl:1"}
    rows = [good, dict(row, _source="d.jsonl:2")]
    with pytest.raises(DataError, match=r"^d\.jsonl:2: ") as e:
        chat.check_chat_rows(rows, DataConfig(), "d.jsonl")
    assert problem in str(e.value) and "data.bad_rows=skip" in str(e.value)
    assert chat.check_chat_rows(rows, DataConfig(bad_rows="skip"), "d.jsonl") == ([good], 1)


def test_truncation_keeps_the_start_and_is_counted(tok):
    rows = [{"messages": MULTI}, {"prompt": "Q", "response": "2"}]
    full = chat.render(tok, MULTI, 512)
    n_prompt = len(full.prompt_ids)
    cut = chat.render(tok, MULTI, n_prompt + 3)
    assert cut.truncated and cut.response_ids == full.response_ids[:3] and cut.loss_mask == [1, 1, 1]
    gone = chat.render(tok, MULTI, n_prompt - 2)  # every loss token cut: an all-zero mask, no crash
    assert gone.truncated and gone.response_ids == [] and gone.prompt_ids == full.prompt_ids[:n_prompt - 2]
    batch, stats = chat.chat_batch(tok, rows, DataConfig(), max_length=n_prompt - 2)
    assert stats["sft/truncated_frac"] == 0.5 and stats["sft/rows"] == 2
    assert batch["response_mask"][0].sum() == 0 and stats["sft/loss_tokens"] == batch["response_mask"].sum()


def _rows():
    return [{"messages": MULTI}, {"prompt": "Q: 12+30=?", "response": "42"},
            {"instruction": "Add", "input": "7 and 8", "output": "15"}, {"prompt": "Q: 1+1=?", "response": "2"},
            {"messages": MULTI[:2]}]


def _tiny_qwen(tok, impl: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = Qwen2ForCausalLM(cfg).eval()
    model.set_attn_implementation(impl)
    return model


def _alone_and_packed(tok, impl):
    d, rows = DataConfig(), _rows()
    model = _tiny_qwen(tok, impl)
    packed, stats = chat.chat_batch(tok, rows, d, max_length=96, packing=True)
    assert 1 < stats["sft/sequences"] < len(rows)  # several rows share a pack, and some packs are padded
    assert (packed["attention_mask"] == 0).any()
    # Where each row's response tokens sit in the packed response columns (offset in pack - 1).
    rendered = [chat.render(tok, chat.to_messages(r, d), 96) for r in rows]
    seg, cols = packed["segment_ids"], {}
    for b, members in enumerate(packed["packed_rows"]):
        for j, k in enumerate(members, 1):
            cols[k] = (b, int((seg[b] == j).nonzero()[0]) - 1)
    assert sorted(cols) == list(range(len(rows)))
    cols = [cols[k] for k in range(len(rows))]
    alone = []
    with torch.no_grad():
        for r in rows:
            one, _ = chat.chat_batch(tok, [r], d, max_length=96)
            alone.append(response_logprobs(model, one)[0])
    return model, packed, rendered, cols, alone


def _check(packed_logp, packed, rendered, cols, alone, atol=1e-5):
    ok = True
    for r, (b, c), ref in zip(rendered, cols, alone):
        s, n = c + len(r.prompt_ids), len(r.response_ids)
        assert packed["responses"][b, s:s + n].tolist() == r.response_ids
        assert packed["response_mask"][b, s:s + n].tolist() == r.loss_mask
        ok &= torch.allclose(packed_logp[b, s:s + n], ref[:n], atol=atol)
    return ok


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_rows_give_the_same_logprobs_as_alone(tok, impl):
    model, packed, rendered, cols, alone = _alone_and_packed(tok, impl)
    with torch.no_grad():
        assert _check(response_logprobs(model, packed), packed, rendered, cols, alone)
    assert packed["response_mask"].sum() == sum(sum(r.loss_mask) for r in rendered)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packing_without_row_positions_or_mask_differs(tok, impl):
    model, packed, rendered, cols, alone = _alone_and_packed(tok, impl)
    with torch.no_grad():
        # Without segment_ids the 2D mask is passed: transformers then ignores the restarts.
        unmarked = Batch({k: v for k, v in packed.tensors.items() if k != "segment_ids"})
        assert not _check(response_logprobs(model, unmarked), packed, rendered, cols, alone)
        flat = Batch(dict(packed.tensors, position_ids=packed["attention_mask"].cumsum(-1) - 1))
        assert not _check(response_logprobs(model, flat), packed, rendered, cols, alone)
