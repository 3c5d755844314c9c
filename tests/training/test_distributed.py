"""Training on several ranks: torchrun starting the real child with gloo processes on the CPU.

Two ranks must train like one process: the same per-step losses and final weights, and optimizer
states, within float-summation noise. The runs compute in fp32 (``autocast: fp32``): the ranks sum in
other orders than one process (1 thread each instead of 2, shorter packed rows, an all-reduce), and
bf16 would round those differences to its 8 bits, which Adam then amplifies over the steps. The
tolerance, 1e-5 relative on losses and 1e-5 absolute on weights and Adam's moments, is about 10x
what the tiny model shows (measured: 2e-7 on weights, 1e-6 on losses).

The examples differ in length, so ranks get different token counts and different numbers of packed
rows (``micro_batch_tokens`` is small): a loss normalised per rank, or a rank skipping its padding
rows, would change the gradient's direction and show.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_toys import RecordingReporter, make_spec, write_jsonl

from openft.training import checkpoints
from openft.training.launch import Ranks, child_command
from openft.training.recipe import train

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def varied_rows(n: int) -> list[dict]:
    """Chat examples whose answers (the trained tokens) run from 1 to 7 words."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"Say banana {1 + (i * 5) % 7} times. ({i})"},
                {"role": "assistant", "content": " ".join(["banana"] * (1 + (i * 5) % 7))},
            ]
        }
        for i in range(n)
    ]


def dpo_rows(n: int) -> list[dict]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Fruit number {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": " ".join(["banana"] * (1 + i % 5))}],
            "non_preferred_output": [{"role": "assistant", "content": "cherry"}],
        }
        for i in range(n)
    ]


def run_ranks(spec, n: int = 2) -> list[dict]:
    """The real child under torchrun with ``n`` ranks; its protocol lines."""
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(spec.to_json())
    argv, env = child_command(spec_path, n)
    with open(out / "ranks.log", "w") as log:
        done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True, timeout=300)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, (lines[-3:], (out / "ranks.log").read_text()[-3000:])
    return lines


def losses(lines: list[dict]) -> list[float]:
    return [line["data"]["train_loss"] for line in lines if line["type"] == "metrics"]


def weights(output: Path) -> dict[str, torch.Tensor]:
    final = output / "final"
    path = final / "adapter" / "adapter_model.safetensors"
    return load_file(path if path.exists() else final / "model" / "model.safetensors")


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= WEIGHT_ATOL, worst


def resume_from(checkpoint: Path, spec, where: Path, n_devices: int):
    """``spec`` in a fresh output directory holding only ``checkpoint``, on ``n_devices`` ranks."""
    moved = replace(spec, output_dir=str(where / "out"), n_devices=n_devices)
    shutil.copytree(checkpoint, Path(moved.output_dir) / "checkpoints" / checkpoint.name)
    return moved


def test_share_splits_each_step_by_tokens_and_keeps_the_order():
    from openft.training.distributed import Group
    from openft.training.labels import TokenizedSequence

    units = [[TokenizedSequence([0] * size, [0] * size)] for size in (9, 1, 4, 4, 2, 7, 3)]
    shares = [Group(Ranks(rank, 2, rank, 2), "ddp").share(units) for rank in (0, 1)]
    owned = [[next(i for i, unit in enumerate(units) if unit is u) for u in share] for share in shares]
    assert sorted(owned[0] + owned[1]) == list(range(7)) and all(s == sorted(s) for s in owned)
    tokens = [sum(len(u[0]) for u in share) for share in shares]
    assert abs(tokens[0] - tokens[1]) <= 2, tokens  # 30 tokens: 16 and 14 here
    assert Group().share(units) is units  # one process: everything, untouched


CASES = [
    pytest.param("supervised", "lora", id="lora-ddp"),
    pytest.param("supervised", "full", id="full-fsdp2"),
    pytest.param("dpo", "lora", id="dpo-lora-ddp"),
]


@pytest.mark.parametrize(("method", "fine_tuning_type"), CASES)
def test_two_ranks_train_like_one_process_and_their_checkpoints_resume_on_either(
    tiny_model_dir, tmp_path, method, fine_tuning_type
):
    rows = dpo_rows(10) if method == "dpo" else varied_rows(10)
    validation = write_jsonl(tmp_path / "valid.jsonl", dpo_rows(5) if method == "dpo" else varied_rows(5))
    spec = make_spec(
        tmp_path / "one",
        tiny_model_dir,
        rows,
        validation_file=str(validation),
        eval_interval_steps=3,  # a small validation batch at steps 3 and 6, the whole set at epoch ends
        method=method,
        beta=0.1 if method == "dpo" else None,
        fine_tuning_type=fine_tuning_type,
        learning_rate=1e-2 if fine_tuning_type == "lora" else 1e-3,
        n_epochs=2,
        batch_size=3,  # 4 steps an epoch, the last of one example: one rank trains nothing then
        micro_batch_tokens=48,  # several packed rows per rank, uneven between ranks
        extra={"autocast": "fp32"},
    )
    one = RecordingReporter()
    train(spec, one)
    two = run_ranks(replace(spec, output_dir=str(tmp_path / "two" / "out"), n_devices=2))

    where, how = [line["message"] for line in two if line["type"] == "message"][:2]
    assert where.startswith("Training on 2 CPU processes: ") and "1 thread(s) each, fp32" in where
    assert how.startswith(
        "2 ranks (torchrun, gloo) with " + ("FSDP2" if fine_tuning_type == "full" else "DDP")
    )
    assert losses(two) == pytest.approx(losses(one.lines), rel=LOSS_RTOL)
    for key in ("valid_loss", "full_valid_loss", "full_valid_mean_token_accuracy"):
        evaluated = [m["data"].get(key) for m in one.of_type("metrics")]
        assert sum(v is not None for v in evaluated) == 2, key
        got = [m["data"].get(key) for m in two if m["type"] == "metrics"]
        assert [v is None for v in got] == [v is None for v in evaluated], key
        assert [v for v in got if v is not None] == pytest.approx(
            [v for v in evaluated if v is not None], rel=LOSS_RTOL
        )
    assert [m["tokens"] for m in two if m["type"] == "metrics"] == [
        m["tokens"] for m in one.of_type("metrics")
    ]
    one_out, two_out = Path(spec.output_dir), tmp_path / "two" / "out"
    assert_close_weights(weights(one_out), weights(two_out))
    # Adam's moments, gathered from the shards under FSDP2, in one process's layout
    epoch_one = {
        name: checkpoints.list_complete(out / "checkpoints")[0]
        for name, out in (("1", one_out), ("2", two_out))
    }
    assert epoch_one["1"].step == epoch_one["2"].step == 4
    moments = {name: c.load_state()["optimizer"] for name, c in epoch_one.items()}
    assert moments["1"]["state"].keys() == moments["2"]["state"].keys()
    for index, state in moments["1"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            two_state = moments["2"]["state"][index][key]
            assert torch.allclose(state[key], two_state, atol=WEIGHT_ATOL), (index, key)

    # The 2-rank checkpoint at epoch 1 resumes on one process, the 1-process one on two ranks:
    # both end where the uninterrupted runs ended, with the same losses for the steps after it.
    on_one = resume_from(epoch_one["2"].path, spec, tmp_path / "two-then-one", 1)
    resumed = RecordingReporter()
    train(on_one, resumed)
    assert resumed.of_type("started")[0]["resumed_from_step"] == 4
    assert losses(resumed.lines) == pytest.approx(losses(two)[4:], rel=LOSS_RTOL)
    assert_close_weights(weights(Path(on_one.output_dir)), weights(two_out))

    on_two = resume_from(epoch_one["1"].path, spec, tmp_path / "one-then-two", 2)
    resumed_two = run_ranks(on_two)
    assert [line for line in resumed_two if line["type"] == "started"][0]["resumed_from_step"] == 4
    assert losses(resumed_two) == pytest.approx(losses(one.lines)[4:], rel=LOSS_RTOL)
    assert_close_weights(weights(Path(on_two.output_dir)), weights(one_out))


def test_dpo_full_fine_tuning_on_two_ranks_shards_its_frozen_reference_too(tiny_model_dir, tmp_path):
    spec = make_spec(
        tmp_path / "one",
        tiny_model_dir,
        dpo_rows(10),
        method="dpo",
        beta=0.1,
        fine_tuning_type="full",
        learning_rate=1e-3,
        n_epochs=1,
        batch_size=3,
        micro_batch_tokens=48,
        extra={"autocast": "fp32"},
    )
    one = RecordingReporter()
    train(spec, one)
    two = run_ranks(replace(spec, output_dir=str(tmp_path / "two" / "out"), n_devices=2))
    assert losses(two) == pytest.approx(losses(one.lines), rel=LOSS_RTOL)
    assert losses(two)[-1] < losses(two)[0]  # the policy moved away from the reference
    assert_close_weights(weights(Path(spec.output_dir)), weights(tmp_path / "two" / "out"))


def test_two_ranks_under_bf16_autocast_stay_within_its_rounding(tiny_model_dir, tmp_path):
    """bf16 compute (the default on CPUs with native bf16, and on GPUs): the ranks' other summation
    orders are rounded to bf16's 8 bits and Adam amplifies them over the steps, so the tolerance is
    1e-3 relative (measured: 7e-5 after 6 steps). Under FSDP2 autocast re-casts each gathered
    weight instead of caching every cast."""
    spec = make_spec(
        tmp_path / "one",
        tiny_model_dir,
        varied_rows(10),
        fine_tuning_type="full",  # FSDP2
        learning_rate=1e-3,
        n_epochs=1,
        batch_size=3,
        extra={"autocast": "bf16"},
    )
    one = RecordingReporter()
    train(spec, one)
    two = run_ranks(replace(spec, output_dir=str(tmp_path / "two" / "out"), n_devices=2))
    assert "bf16" in [line["message"] for line in two if line["type"] == "message"][0]
    assert losses(two) == pytest.approx(losses(one.lines), rel=1e-3)
    assert losses(two) != losses(one.lines)  # bf16 rounding did show: this is not fp32 in disguise


def test_an_error_on_every_rank_is_reported_not_taken_for_a_lost_rank(tiny_model_dir, tmp_path):
    spec = make_spec(tmp_path, tiny_model_dir, varied_rows(4), n_devices=2)
    spec = replace(spec, base_model_path=str(tmp_path / "nope"))
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.to_json())
    argv, env = child_command(spec_path, 2)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode != 0
    errors = [line for line in lines if line["type"] == "error"]
    assert errors and all(e["code"] == "model_load_failed" and "nope" in e["message"] for e in errors)
    assert all(line["type"] == "error" for line in lines)  # rank 0 reports nothing else


def test_n_devices_without_torchrun_is_refused(tiny_model_dir, tmp_path):
    spec = make_spec(tmp_path, tiny_model_dir, varied_rows(4), n_devices=2)
    with pytest.raises(RuntimeError, match="n_devices=2 but 1 process"):
        train(spec, RecordingReporter())


# Each rank trains in-process with a reporter that asks for a pause once 2 steps are done, so every rank
# sees it at the same step boundary: the end of epoch 1, whose checkpoint was just written.
_PAUSING_RANK = """
import json, os, sys
from pathlib import Path
from training_toys import RecordingReporter
from openft.training.launch import die_with_agent
from openft.training.recipe import train
from openft.training.spec import TrainingSpec

die_with_agent(None)  # a rank left hanging goes down with torchrun when the test's timeout kills it
reporter = RecordingReporter(stop="pause", stop_after=2)
result = train(TrainingSpec.from_json(Path(sys.argv[1]).read_text()), reporter)
report = {"stopped": result.stopped, "lines": reporter.lines}
Path(sys.argv[2], f"rank-{os.environ['RANK']}.json").write_text(json.dumps(report))
"""


@pytest.mark.parametrize("fine_tuning_type", ["lora", "full"])
def test_two_ranks_paused_right_after_an_epoch_end_stop_together(tiny_model_dir, tmp_path, fine_tuning_type):
    # A save at the step just saved is skipped; every rank must skip it alike, or the ones that do not
    # wait in the save's collectives for the others, and the pause hangs until torchrun kills the ranks.
    spec = make_spec(
        tmp_path, tiny_model_dir, varied_rows(8), n_epochs=2, n_devices=2, fine_tuning_type=fine_tuning_type
    )  # 2 steps an epoch
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.to_json())
    script = tmp_path / "pausing_rank.py"
    script.write_text(_PAUSING_RANK)
    _, env = child_command(spec_path, 2)
    env["PYTHONPATH"] = ":".join(p for p in (str(Path(__file__).parent), env.get("PYTHONPATH", "")) if p)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*torchrun, str(script), str(spec_path), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["stopped"] for r in reports] == ["pause", "pause"]
    rank_0 = reports[0]["lines"]
    assert [line["step"] for line in rank_0 if line["type"] == "checkpoint"] == [2]  # written once
    assert rank_0[-1]["type"] == "paused" and rank_0[-1]["step"] == 2
