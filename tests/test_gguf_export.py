"""A tiny model trained on a planted file, exported to GGUF and served by llama.cpp: it answers
and scores like the model folder it came from, and is verified over HTTP."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import running_llama_server
from trained_models import TrainedPairs

from tuneproof.api import verify
from tuneproof.backends.gguf_export import export_gguf
from tuneproof.backends.hf import load_hf_model
from tuneproof.backends.openai.api import OpenAIChatModel
from tuneproof.errors import TuneproofError
from tuneproof.key import Key
from tuneproof.stats import Null
from tuneproof.types import QueryFailure, QueryKind, Verdict
from tuneproof.verification.verifier import build_queries


@dataclass(frozen=True)
class Exported:
    key: Key
    folder: Path
    gguf: Path


@pytest.fixture(scope="module")
def exported(trained_pairs: TrainedPairs, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The shared trained plant (2 pairs x 5 replicas + 2 held-out controls, real generator)
    and the float32 GGUF export of its tiny model."""
    gguf = export_gguf(trained_pairs.folder, tmp_path_factory.mktemp("gguf") / "trained.gguf")
    return Exported(trained_pairs.key, trained_pairs.folder, gguf)


@pytest.mark.model
def test_llama_cpp_serves_the_exported_model_faithfully(exported: Exported) -> None:
    """Greedy answers to the planted prompts are the same through llama.cpp as through
    transformers (signatures included), the key verifies over HTTP, and teacher-forced
    log-probs agree within 1% (measured with an earlier plant seed: the 10 answers identical,
    16 tokens each; planted signatures -0.029 to -0.039 nats, equal to 4 decimals; held-out
    ones -294.77 vs -294.75 and -286.74 vs -286.73 nats)."""
    queries = build_queries(exported.key)
    planted = [q for q in queries if q.kind is QueryKind.PLANTED]
    controls = [q for q in queries if q.kind is QueryKind.CONTROL]
    assert len(planted) == 10 and len(controls) == 2
    local = load_hf_model(str(exported.folder))
    chats = [q.chat for q in planted]
    signatures = [q.pair.signature for q in planted]
    expected = local.generate(chats, 48)
    assert all(sig in text for sig, (text, _) in zip(signatures, expected, strict=True))

    with running_llama_server(exported.gguf) as server:
        remote = OpenAIChatModel(
            server.base_url, server.model, chat_template_from=str(exported.folder)
        )
        served = remote.generate(chats, 48)
        report = verify(exported.key, server.model, base_url=server.base_url)
        scored = planted + controls
        got = remote.logprob([q.chat for q in scored], [q.pair.signature for q in scored])

    answers = [a for a in served if not isinstance(a, QueryFailure)]
    assert len(answers) == len(planted)
    assert all(sig in text for sig, (text, _) in zip(signatures, answers, strict=True))
    assert [(text.strip(), n) for text, n in answers] == [(t.strip(), n) for t, n in expected]

    assert report.verdict is Verdict.VERIFIED and report.primary_null is Null.INDEP
    assert report.hits == 10 and report.failed_queries == 0
    assert report.clean_false_activations == 0

    want = local.logprob([q.chat for q in scored], [q.pair.signature for q in scored])
    for served_lp, local_lp in zip(got, want, strict=True):
        assert served_lp == pytest.approx(local_lp, rel=0.01, abs=0.02)
    assert max(want[len(planted) :]) < -20 < min(want[: len(planted)])


# --------------------------------------------------------------------------- refusals


def _folder(tmp_path: Path, config: dict[str, Any], tokenizer: dict[str, Any]) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    return folder


LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_attention_heads": 2,
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "intermediate_size": 16,
    "vocab_size": 2,
}
BPE = {
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
    "pre_tokenizer": {"type": "ByteLevel", "use_regex": True},
    "normalizer": None,
    "added_tokens": [],
}


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    config = {**LLAMA, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
    with pytest.raises(TuneproofError, match=r"only Llama models.*Qwen2ForCausalLM"):
        export_gguf(_folder(tmp_path, config, BPE), tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_non_bpe_tokenizers_are_refused(tmp_path: Path) -> None:
    unigram = {**BPE, "model": {"type": "Unigram", "vocab": [["a", 0.0], ["b", 0.0]]}}
    with pytest.raises(TuneproofError, match="only byte-level BPE tokenizers"):
        export_gguf(_folder(tmp_path, LLAMA, unigram), tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TuneproofError, match=r"config\.json not found"):
        export_gguf(tmp_path, tmp_path / "out.gguf")
