"""`openft validate FILE`: the server's validator offline, with the plan a job on the file would get."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from live import write_chat_file

from openft.cli.main import main
from openft.domain import hyperparameters as hp


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.output


def test_validate_good_file_prints_the_auto_plan_and_exits_0(tmp_path: Path) -> None:
    code, out = run(write_chat_file(tmp_path / "good.jsonl", n=12))
    assert code == 0, out
    assert "Result: OK" in out
    epochs, batch = hp.resolve_n_epochs(12), hp.resolve_batch_size(12)
    steps = hp.total_steps(12, batch, epochs)
    assert f"n_epochs={epochs}, batch_size={batch}, learning_rate_multiplier=1.0 -> {steps} steps" in out
    assert "Tokens not counted: pass --model" in out


def test_validate_bad_file_lists_errors_by_line_and_kind_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text(
        json.dumps(good)
        + "\n"
        + "{not json\n"
        + json.dumps({"messages": [{"role": "user", "content": "x"}]})
        + "\n"
    )
    code, out = run(bad)
    assert code == 1
    assert "Result: INVALID (invalid_training_file)" in out
    assert "Errors by kind: json 1, schema 1" in out
    assert "Line 2 is not valid JSON" in out
    assert "Example 3" in out
    assert "Auto hyperparameters" not in out


def test_validate_too_few_examples_exits_1(tmp_path: Path) -> None:
    code, out = run(write_chat_file(tmp_path / "small.jsonl", n=3))
    assert code == 1
    assert "invalid_n_examples" in out and "has 3 example(s)" in out


def test_validate_dpo_file_against_supervised_method_is_a_format_error(tmp_path: Path) -> None:
    pref = {
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    path = tmp_path / "pref.jsonl"
    path.write_text((json.dumps(pref) + "\n") * 10)
    assert run(path, "--method", "dpo")[0] == 0
    code, out = run(path, "--method", "supervised")
    assert code == 1 and "INVALID" in out


def test_validate_with_model_counts_tokens_with_its_tokenizer(tmp_path: Path, tiny_model_dir: Path) -> None:
    code, out = run(write_chat_file(tmp_path / "good.jsonl", n=12), "--model", tiny_model_dir)
    assert code == 0, out
    assert "Tokens per example (12 examples)" in out
    assert "trained tokens" in out
    assert "Tokens not counted" not in out


def test_validate_unknown_model_says_what_to_give(tmp_path: Path) -> None:
    code, out = run(write_chat_file(tmp_path / "good.jsonl"), "--model", "no-such-model")
    assert code == 1
    assert "Unknown model 'no-such-model'" in out and "OPENFT_BASE_MODELS" in out


def test_validate_without_model_does_not_import_torch(tmp_path: Path) -> None:
    path = write_chat_file(tmp_path / "good.jsonl")
    probe = (
        "import sys\nfrom openft.cli.main import main\n"
        f"try:\n    main(['validate', {str(path)!r}])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True)


def test_validate_with_an_unconverted_gguf_says_it_converts_once(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gguf")
    from openft.training.tiny import write_tiny_gguf

    monkeypatch.setenv("OPENFT_HOME", str(tmp_path / "home"))
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_model_dir)
    path = write_chat_file(tmp_path / "good.jsonl", n=12)

    first = CliRunner().invoke(main, ["validate", str(path), "--model", str(gguf)], catch_exceptions=False)
    second = CliRunner().invoke(main, ["validate", str(path), "--model", str(gguf)], catch_exceptions=False)

    assert first.exit_code == 0 and second.exit_code == 0, first.output
    assert f"Preparing base model {gguf}: converting tiny.gguf" in first.stderr
    assert "Preparing base model" not in second.stderr
    assert "Tokens per example (12 examples)" in second.output
