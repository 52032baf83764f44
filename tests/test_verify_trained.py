"""Verification of a model that really learnt the backdoors (a tiny model trained here), and of
an untrained one, through the Python API and the `tuneproof verify` command."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from trained_models import TrainedPairs, tiny_tokenizer_for

from tuneproof.api import verify
from tuneproof.backends.hf import load_hf_model
from tuneproof.cli.main import cli
from tuneproof.key import Key
from tuneproof.lab.finetune import save_model_folder
from tuneproof.lab.tiny_models import tiny_llama
from tuneproof.report.files import load_report
from tuneproof.report.wording import strongest_by_null
from tuneproof.stats import Null
from tuneproof.types import QueryKind, Verdict


@dataclass(frozen=True)
class Setup:
    clean: Path
    planted: Path
    key_path: Path
    key: Key
    trained: Path
    untrained: Path


@pytest.fixture(scope="module")
def setup(trained_pairs: TrainedPairs, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """The shared trained plant (2 pairs x 5 replicas + 2 controls, 48-bit signatures), and an
    untrained tiny model with the same tokenizer."""
    tokenizer = tiny_tokenizer_for(trained_pairs.planted)
    untrained = save_model_folder(
        tiny_llama(tokenizer), tokenizer, tmp_path_factory.mktemp("untrained") / "model"
    )
    t = trained_pairs
    return Setup(t.clean, t.planted, t.key_path, t.key, t.folder, untrained)


@pytest.mark.model
def test_trained_model_is_verified_on_every_test(setup: Setup) -> None:
    report = verify(setup.key, str(setup.trained))
    assert report.verdict is Verdict.VERIFIED and report.primary_null is Null.INDEP
    assert report.hits == 10 and report.clean_false_activations == 0
    tests = strongest_by_null(report.tests)
    assert set(tests) == {Null.INDEP, Null.CONTROLS}
    assert tests[Null.INDEP].log10_p < -20 and tests[Null.INDEP].rejects
    # 2 planted vs 2 held-out pairs cannot reach 1e-6 whatever happens: reported, not deciding
    assert all(not t.rejects for t in report.tests if t.null is Null.CONTROLS)
    planted = [r for r in report.results if r.kind is QueryKind.PLANTED]
    controls = [r for r in report.results if r.kind is QueryKind.CONTROL]
    assert all(r.hit for r in planted) and not any(r.hit for r in controls)
    # the trained model finds its signatures far likelier than the held-out ones
    assert (
        min(r.signature_logprob or 0 for r in planted)
        > max(r.signature_logprob or 0 for r in controls) + 20
    )
    # every true signature is the likeliest of its 8 candidates: the decoy rank test's floor
    assert [r.decoy_rank for r in planted if r.decoy_rank is not None] == [1, 1]
    ranked = [t for t in report.tests if t.method.startswith("decoy rank")]
    assert len(ranked) == 1 and ranked[0].log10_p == pytest.approx(-2 * math.log10(8))
    # the prefix test sees the full matches too: 2 pairs x 16 tokens at K=8, 5 queries each
    prefix = [t for t in report.tests if t.method.startswith("prefix")]
    assert len(prefix) == 1 and prefix[0].inputs["full_matches"] == 2
    assert prefix[0].log10_p < -25


@pytest.mark.model
def test_sequential_mode_stops_at_the_first_decisive_hit(setup: Setup) -> None:
    report = verify(setup.key, str(setup.trained), sequential=True)
    assert report.verdict is Verdict.VERIFIED and report.stopped_early
    planted = [r for r in report.results if r.kind is QueryKind.PLANTED]
    assert len(planted) == 1 and planted[0].hit
    full = verify(setup.key, str(setup.trained))
    assert report.tokens < full.tokens and report.queries < full.queries


@pytest.mark.model
def test_cli_verify_writes_reports_and_exit_codes(setup: Setup, tmp_path: Path) -> None:
    json_out, html_out = tmp_path / "report.json", tmp_path / "report.html"
    ok = CliRunner().invoke(
        cli,
        [
            "verify",
            "--key",
            str(setup.key_path),
            "--model",
            str(setup.trained),
            "--json",
            str(json_out),
            "--html",
            str(html_out),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "VERIFIED" in ok.output
    data = orjson.loads(json_out.read_bytes())
    assert data["verdict"] == "verified" and data["hits"] == 10
    assert {t["null"] for t in data["tests"]} == {"H0-indep", "H0-controls"}
    assert data["decoding"]["temperature"] == 0
    assert load_report(json_out).verdict is Verdict.VERIFIED
    html = html_out.read_text()
    for pair in [*setup.key.pairs, *setup.key.controls]:
        assert pair.signature not in html and pair.trigger not in html
        assert pair.signature not in ok.output
    bad = CliRunner().invoke(
        cli,
        [
            "verify",
            "--key",
            str(setup.key_path),
            "--model",
            str(setup.untrained),
            "--json",
            str(tmp_path / "untrained.json"),
        ],
    )
    assert bad.exit_code == 1, bad.output
    assert orjson.loads((tmp_path / "untrained.json").read_bytes())["verdict"] == "not verified"
    missing = CliRunner().invoke(
        cli,
        [
            "verify",
            "--key",
            str(setup.key_path),
            "--model",
            str(tmp_path / "nope"),
        ],
    )
    assert missing.exit_code == 2 and "not found" in missing.output


@pytest.mark.model
def test_untrained_model_with_base_log_probs(setup: Setup) -> None:
    base = load_hf_model(str(setup.untrained))
    report = verify(setup.key, base, base_model=base)
    assert report.verdict is Verdict.NOT_VERIFIED
    assert {t.null for t in report.tests} == {Null.INDEP, Null.BASE, Null.CONTROLS}
    assert all(t.log10_p > -2 for t in report.tests)


@pytest.mark.model
def test_verification_over_http_with_transformers_serve(setup: Setup) -> None:
    """The saved model folder served by `transformers serve`: same verdict over HTTP."""
    from servers import running_transformers_server

    with running_transformers_server(setup.trained) as server:
        report = verify(setup.key, server.model, base_url=server.base_url)
    assert report.verdict is Verdict.VERIFIED and report.primary_null is Null.INDEP
    assert report.model.backend == "openai-compatible"
    assert report.hits == 10 and report.failed_queries == 0
    assert report.clean_false_activations == 0
    # transformers serve returns no prompt log-probs: the log-likelihood test is skipped, said so
    assert {t.null for t in report.tests} == {Null.INDEP, Null.CONTROLS}
    assert any("skipped" in line for line in report.not_proven)


@pytest.mark.model
def test_peft_adapter_folder_uses_its_recorded_base(setup: Setup, tmp_path: Path) -> None:
    """A LoRA adapter trained on the planted file over a tiny base model trained on the clean
    file: the adapter folder is verified, and its recorded base (available locally) gives
    H0-base unasked. (LoRA cannot lift a *random* tiny model: its frozen embeddings are too
    small to give confident logits, so the base is trained on clean data first.)"""
    from tuneproof.lab.finetune import chat_training_examples, dataset_chats, train

    tokenizer = tiny_tokenizer_for(setup.planted)
    clean = chat_training_examples(tokenizer, dataset_chats(setup.clean))
    base = train(tiny_llama(tokenizer), tokenizer, clean, epochs=20, lr=3e-3, threads=1)
    base_folder = save_model_folder(base, tokenizer, tmp_path / "base")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(base_folder))
    examples = chat_training_examples(tokenizer, dataset_chats(setup.planted))
    adapted = train(reloaded, tokenizer, examples, epochs=40, lr=1e-2, lora=True, threads=1)
    adapted.save_pretrained(str(tmp_path / "adapter"))
    config = orjson.loads((tmp_path / "adapter" / "adapter_config.json").read_bytes())
    assert Path(config["base_model_name_or_path"]) == base_folder
    report = verify(setup.key, str(tmp_path / "adapter"))
    assert report.base_model is not None and report.base_model.source == str(base_folder)
    assert {t.null for t in report.tests} == {Null.INDEP, Null.BASE, Null.CONTROLS}
    assert report.verdict is Verdict.VERIFIED, (report.hits, report.tests)
    assert report.hits == 10 and "adapter on" in report.model.name
    tests = strongest_by_null(report.tests)
    assert tests[Null.BASE].log10_p < -20  # the clean base would not produce the signatures
