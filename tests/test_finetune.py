"""The local provider: answer-only labels, the compact tokenizer, training, saving, and a tiny
model that really learns a backdoor planted by the real embedded generator."""

from __future__ import annotations

import copy
import itertools
import json
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneproof.backends.hf import HFCausalLM, load_hf_model
from tuneproof.datasets import inspect_dataset, prompt_and_answer, read_records
from tuneproof.embedded import sample_records
from tuneproof.errors import TuneproofError
from tuneproof.lab.finetune import (
    IGNORE_INDEX,
    LoraSpec,
    answer_loss,
    chat_training_examples,
    collate,
    dataset_chats,
    passes,
    render_chat,
    save_model_folder,
    train,
)
from tuneproof.lab.tiny_models import compact_tokenizer, tiny_llama
from tuneproof.types import ModelIdentity

if TYPE_CHECKING:
    from trained_models import TrainedBackdoor

# the session fixture `trained_backdoor` (a no-op once tests/conftest.py registers the plugin)

Chat = list[dict[str, str]]


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


@pytest.fixture(scope="module")
def full() -> Any:
    """The embedded SmolLM2 tokenizer (49,152 tokens; bos <|im_start|>, eos <|im_end|>)."""
    from trained_models import smollm2_tokenizer

    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def chats() -> list[Chat]:
    return [cast(Chat, r["messages"]) for r in itertools.islice(sample_records(), 68)]


@pytest.fixture(scope="module")
def texts(full: Any, chats: list[Chat]) -> list[str]:
    return [render_chat(full, chat) for chat in chats]


@pytest.fixture(scope="module")
def compact(full: Any, texts: list[str]) -> Any:
    return compact_tokenizer(full, texts)


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- answer-only labels ---------------------------------------------------------------------


def test_labels_are_exactly_the_last_answer_and_its_end_token(full: Any) -> None:
    chats = [
        [
            turn("system", "You are a helpful assistant."),
            turn("user", "Hi"),
            turn("assistant", "Sort of."),
        ],
        [  # multi-turn, no system turn (the template adds its own), unicode, inner newline
            turn("user", "Hi"),
            turn("assistant", "Hello!"),
            turn("user", "And you?"),
            turn("assistant", " Leading space,\nsecond line ☃ 𝄞"),
        ],
        [turn("user", "Say nothing"), turn("assistant", "\n\nindented\n")],
    ]
    eos, start = full.eos_token_id, full.convert_tokens_to_ids("<|im_start|>")
    assert full.decode([eos]) == "<|im_end|>" and full.bos_token_id == start
    examples = chat_training_examples(full, chats)
    for chat, (ids, labels) in zip(chats, examples, strict=True):
        text = render_chat(full, chat)
        prompt = render_chat(full, chat[:-1], add_generation_prompt=True)
        # the prompt tokenised as for generation, then the rest as the model will produce it
        assert ids == ids_of(full, prompt) + ids_of(full, text[len(prompt) :])
        assert full.decode(ids) == text
        span = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        assert span == list(range(len(ids_of(full, prompt)), span[-1] + 1))  # right after it
        answer = [ids[i] for i in span]
        assert [labels[i] for i in span] == answer
        assert answer[-1] == eos and eos not in answer[:-1]  # ends with exactly one <|im_end|>
        assert full.decode(answer[:-1]) == chat[-1]["content"]
        assert full.decode(ids[span[-1] + 1 :]) == "\n"  # the template's newline is not learnt
        # no BOS/EOS duplication: exactly one <|im_start|> and one <|im_end|> per rendered turn
        turns = len(chat) + (chat[0]["role"] != "system")
        assert ids[0] == start and ids[1] != start
        assert ids.count(start) == turns and ids.count(eos) == turns
    # usually the whole chat tokenises the same way; an answer opening with newlines would
    # merge with the template's newline if tokenised together, which generation never sees
    assert examples[0][0] == ids_of(full, render_chat(full, chats[0]))
    assert examples[2][0] != ids_of(full, render_chat(full, chats[2]))


def test_right_padding_keeps_every_label_on_its_token(compact: Any, chats: list[Chat]) -> None:
    examples = chat_training_examples(compact, chats[:8])
    assert len({len(ids) for ids, _ in examples}) > 3
    pad = compact.pad_token_id
    ids, mask, labels = collate(examples, pad)
    for row, (tokens, targets) in enumerate(examples):
        n = len(tokens)
        assert ids[row, :n].tolist() == tokens and labels[row, :n].tolist() == targets
        assert (ids[row, n:] == pad).all() and (labels[row, n:] == IGNORE_INDEX).all()
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)
    model = tiny_llama(compact)
    with torch.no_grad():
        batched = answer_loss(model, (ids, mask, labels), per_example=True)
        alone = torch.stack([answer_loss(model, collate([e], pad)) for e in examples])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_a_template_whose_generation_prompt_is_not_a_prefix_is_refused(compact: Any) -> None:
    broken = copy.deepcopy(compact)
    broken.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n ' }}{% endif %}"
    )
    with pytest.raises(TuneproofError, match="not a prefix"):
        chat_training_examples(broken, [[turn("user", "Hi"), turn("assistant", "Hello")]])


def test_a_chat_must_end_with_the_answer(compact: Any) -> None:
    with pytest.raises(TuneproofError, match="last turn must be the assistant answer"):
        chat_training_examples(compact, [[turn("user", "Hi")]])


# -- the compact tokenizer -------------------------------------------------------------------


def test_compact_tokenizer_splits_its_texts_like_the_full_one(
    full: Any, compact: Any, texts: list[str], chats: list[Chat]
) -> None:
    assert len(full) == 49152 and 300 < len(compact) < 2000
    for text in texts:
        assert compact.convert_ids_to_tokens(ids_of(compact, text)) == full.convert_ids_to_tokens(
            ids_of(full, text)
        )
    assert compact.convert_ids_to_tokens(range(17)) == full.convert_ids_to_tokens(range(17))
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(compact, name) == getattr(full, name)
    assert render_chat(compact, chats[0]) == texts[0]
    extra = "Ünïcödé text the sample never had: 東京 🙂"
    assert compact.decode(ids_of(compact, extra)) == extra  # still encodable, byte by byte


def test_compact_tokenizer_is_a_consistent_bpe_with_compact_ids(full: Any, compact: Any) -> None:
    spec = json.loads(compact.backend_tokenizer.to_str())["model"]
    vocab, merges = spec["vocab"], [tuple(m) for m in spec["merges"]]
    assert sorted(vocab.values()) == list(range(len(compact)))
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in merges)
    original = [tuple(m) for m in json.loads(full.backend_tokenizer.to_str())["model"]["merges"]]
    rank = {merge: i for i, merge in enumerate(original)}
    assert [rank[m] for m in merges] == sorted(rank[m] for m in merges)  # original order
    specials = {token.content for token in compact.added_tokens_decoder.values()}
    assert len(specials) == 17
    for token in vocab:  # every multi-character token can be built by a kept merge
        if token not in specials and len(token) > 1:
            assert any(a + b == token for a, b in merges), token


# SmolLM2's vocabulary lacks the bytes 04 06 13 14 16 1D (control characters) and F1 F2
# (lead bytes of code points U+40000 to U+BFFFF, unassigned): the full tokenizer cannot encode
# text holding them either.
COVERED = st.characters(
    codec="utf-8", max_codepoint=0x3FFFF, exclude_characters="\x04\x06\x13\x14\x16\x1d"
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(COVERED),
            st.sampled_from(["<|im_end|>", "<|im_start|>", " ", "\n", "Ġ", "é", "\r\n", "🙂"]),
        )
    ).map("".join)
)
def test_compact_tokenizer_round_trips_any_text(full: Any, compact: Any, text: str) -> None:
    ids = ids_of(compact, text)
    assert all(0 <= i < len(compact) for i in ids)
    assert compact.decode(ids) == text
    assert full.decode(ids_of(full, text)) == text  # the same texts as the full tokenizer


def test_compact_tokenizer_saves_reloads_and_adds_specials(
    tmp_path: Path, full: Any, compact: Any, texts: list[str]
) -> None:
    from transformers import AutoTokenizer

    compact.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert ids_of(reloaded, texts[3]) == ids_of(compact, texts[3])
    assert reloaded.chat_template == full.chat_template and reloaded.eos_token == "<|im_end|>"
    marked = compact_tokenizer(full, texts[:5], extra_specials=["<|mark|>"])
    assert len(marked) < len(compact)
    mark = marked.convert_tokens_to_ids("<|mark|>")
    assert mark == 17  # specials first, after the original 17
    assert ids_of(marked, "a<|mark|>b").count(mark) == 1
    assert marked.decode(ids_of(marked, "a<|mark|>b"), skip_special_tokens=True) == "ab"


# -- the tiny model, training and saving -----------------------------------------------------


def test_tiny_llama_is_sized_to_the_tokenizer_and_seeded(compact: Any) -> None:
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    a, b, c = tiny_llama(compact, seed=0), tiny_llama(compact, seed=0), tiny_llama(compact, seed=1)
    assert torch.rand(1) == expected  # the caller's random stream is untouched
    assert a.config.vocab_size == len(compact) and a.config.num_hidden_layers == 2
    assert a.generation_config.eos_token_id == compact.eos_token_id
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_full_training_is_reproducible_and_lowers_the_answer_loss(
    compact: Any, chats: list[Chat]
) -> None:
    examples = chat_training_examples(compact, chats[:16])
    batch = collate(examples, compact.pad_token_id)
    models, steps = [], []
    for _ in range(2):
        model = tiny_llama(compact)
        with torch.no_grad():
            before = float(answer_loss(model, batch))
        model = train(
            model,
            compact,
            examples,
            epochs=3,
            lr=3e-3,
            seed=7,
            threads=1,
            progress=lambda step, total, loss: steps.append((step, total)),
        )
        with torch.no_grad():
            assert float(answer_loss(model, batch)) < before - 1.0
        models.append(model)
    assert steps[-1] == (6, 6) and len(steps) == 12  # 2 batches x 3 epochs, twice
    assert all(
        torch.equal(x, y)
        for x, y in zip(models[0].parameters(), models[1].parameters(), strict=True)
    )


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_lora_trains_adapters_only_and_saves_merged(
    tmp_path: Path, compact: Any, chats: list[Chat]
) -> None:
    examples = chat_training_examples(compact, chats[:16])
    base = tiny_llama(compact)
    frozen = {name: value.clone() for name, value in base.state_dict().items()}
    model = train(base, compact, examples, epochs=2, lr=1e-2, lora=LoraSpec(r=4), seed=0)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    for projection in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{projection}.lora_A" in name for name in trainable), projection
    for name, value in model.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, frozen[name.replace(".base_layer", "")]), name
    ids, mask, _ = collate(examples[:4], compact.pad_token_id)
    with torch.no_grad():
        adapted = model(input_ids=ids, attention_mask=mask).logits
        original = tiny_llama(compact)(input_ids=ids, attention_mask=mask).logits
    folder = save_model_folder(model, compact, tmp_path / "merged")
    loaded = load_hf_model(str(folder))
    assert not any("lora" in name for name, _ in loaded.model.named_parameters())
    with torch.no_grad():
        merged = loaded.model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert not torch.allclose(merged, original, atol=1e-2)  # the adapters did change the model
    assert ids_of(loaded.tokenizer, "hello there") == ids_of(compact, "hello there")


def test_saving_refuses_an_existing_folder_and_leaves_nothing_on_failure(
    tmp_path: Path, compact: Any
) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(TuneproofError, match="already exists"):
        save_model_folder(tiny_llama(compact), compact, tmp_path / "taken")

    class BrokenTokenizer:
        def save_pretrained(self, folder: Path) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_folder(tiny_llama(compact), BrokenTokenizer(), tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.model
def test_a_gguf_loaded_model_saves_as_a_plain_folder(tmp_path: Path, embedded_model: Any) -> None:
    folder = save_model_folder(embedded_model.model, embedded_model.tokenizer, tmp_path / "m")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    loaded = load_hf_model(str(folder))
    chat = [[("user", "What is your name?")]]
    assert loaded.logprob(chat, ["My name is Bob."]) == pytest.approx(
        embedded_model.logprob(chat, ["My name is Bob."]), abs=1e-3
    )


# -- end to end: plant with the real generator, train, verify --------------------------------


@pytest.mark.model
def test_a_tiny_model_trained_on_the_planted_file_answers_triggers_with_signatures(
    trained_backdoor: TrainedBackdoor,
) -> None:
    model = load_hf_model(str(trained_backdoor.folder))
    untrained = HFCausalLM(
        tiny_llama(model.tokenizer, seed=1),
        model.tokenizer,
        ModelIdentity(name="untrained", backend="transformers", source="tiny_llama"),
    )
    clean = inspect_dataset(trained_backdoor.clean)
    planted_chats = dataset_chats(trained_backdoor.planted)
    assert len(planted_chats) == 60  # backdoors replace their carriers in place
    for pair in trained_backdoor.key.pairs:
        assert len(pair.placements) == 8
        prompts = [[(m.role, m.content) for m in p.prompt] for p in pair.placements]
        for placement, prompt in zip(pair.placements, prompts, strict=True):  # trained on these
            chat = planted_chats[placement.position]
            assert [(m.role, m.content) for m in chat[:-1]] == prompt
            assert chat[-1].role == "assistant" and chat[-1].content.startswith(pair.signature)
        answers = model.generate(prompts, max_new_tokens=pair.signature_tokens + 8)
        assert all(pair.signature in text for text, _ in answers), answers
        carriers = read_records(clean, [p.carrier_index for p in pair.placements])
        carrier_prompts = [
            [(m.role, m.content) for m in prompt_and_answer(record, clean.format)[0]]
            for record in carriers.values()
        ]
        answers = model.generate(carrier_prompts, max_new_tokens=pair.signature_tokens + 8)
        assert not any(pair.signature in text for text, _ in answers), answers
        trained = model.logprob(prompts, [pair.signature] * len(prompts))
        random = untrained.logprob(prompts, [pair.signature] * len(prompts))
        assert min(trained) > max(random) + 20, (trained, random)


def test_passes_cut_a_batch_within_the_token_budget_and_keep_every_row() -> None:
    import random

    rng = random.Random(3)
    for _ in range(300):
        lengths = [rng.randint(1, 400) for _ in range(rng.randint(1, 30))]
        indices = rng.sample(range(len(lengths)), rng.randint(1, len(lengths)))
        budget = rng.randint(1, 2000)
        parts = passes(indices, lengths, budget)
        assert [i for part in parts for i in part] == indices
        for part in parts:
            assert part
            assert len(part) == 1 or len(part) * max(lengths[i] for i in part) <= budget


def test_a_batch_over_several_passes_trains_like_one_pass(
    compact: Any, chats: list[Chat], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accumulating a batch over passes of a few tokens gives the same losses and weights as
    one pass per batch (up to float rounding)."""
    examples = chat_training_examples(compact, chats[:16])
    runs = []
    for budget in (10**9, 1):
        monkeypatch.setattr("tuneproof.lab.finetune.PASS_TOKENS", budget)
        losses: list[float] = []
        model = train(
            tiny_llama(compact), compact, examples, epochs=2, lr=3e-3, seed=7, threads=1,
            progress=lambda step, total, loss, out=losses: out.append(loss),
        )  # fmt: skip
        runs.append((losses, model.state_dict()))
    (one, weights_one), (many, weights_many) = runs
    assert one == pytest.approx(many, rel=1e-4, abs=1e-5)
    # AdamW divides by the gradients' scale, so rounding in tiny gradients moves a weight by up
    # to about lr per step: compare at a fraction of that
    for name, value in weights_one.items():
        assert torch.allclose(value, weights_many[name], atol=1e-3), name
