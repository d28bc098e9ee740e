"""DPO on preference records: the loss, the reference model, and the shared loop's guarantees for pairs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from tests.unit.test_fine_tuning_recipe import MICRO, RecordingReporter, make_inputs
from tuneforge.data.tasks import make_conversation_task, make_preference_task, write_jsonl
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.loading import load_model_and_tokenizer
from tuneforge.recipes import get_recipe
from tuneforge.recipes.base import RecipeFailed, RecipeInputs
from tuneforge.recipes.batching import collate_pairs
from tuneforge.recipes.loop import prepare_for_training
from tuneforge.recipes.preference import dpo_losses, pair_margins, with_reference_margins
from tuneforge.recipes.tokenising import encode_preference_file


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    ensure_builtin("forge-micro", root)
    return root


def test_dpo_loss_is_log_two_at_the_reference_and_falls_as_the_margin_grows() -> None:
    margins = torch.tensor([1.0, 3.0, -1.0])
    reference = torch.tensor([1.0, 1.0, 1.0])
    losses, rewards = dpo_losses(margins, reference, beta=0.5)
    torch.testing.assert_close(rewards, torch.tensor([0.0, 1.0, -1.0]))
    expected = [math.log(2), math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(1.0))]
    torch.testing.assert_close(losses, torch.tensor(expected))


def test_reference_margins_are_the_base_models_with_lora_trained(tmp_path: Path, models_dir: Path) -> None:
    train, _ = make_preference_task(n_train=6, n_test=0, seed=1)
    model, tokenizer = load_model_and_tokenizer(models_dir / "builtin" / "forge-micro")
    pairs = encode_preference_file(write_jsonl(tmp_path / "train.jsonl", train), tokenizer, 512)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        base = pair_margins(model.eval(), batch)
    hp = {"trainingMethod": "lora", "loraRank": 4, "loraAlpha": 8.0, "loraDropout": 0.0}
    model = prepare_for_training(model, hp, RecordingReporter())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)  # as if trained: the adapters now change the margins
        tuned = pair_margins(model.eval(), batch)
    referenced = with_reference_margins(model, pairs, tokenizer.pad_token_id)
    torch.testing.assert_close(torch.tensor([p.reference_margin for p in referenced]), base, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(tuned, base, atol=1e-2)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_stopped_and_resumed_dpo_job_matches_an_uninterrupted_one(tmp_path: Path, models_dir: Path) -> None:
    """The reference margins are computed again from the base weights before the checkpoint is
    loaded, so a resumed job continues exactly; and the run that is stopped and resumed splits each
    batch of pairs into two micro-batches, which must change nothing either."""
    train = [  # short pairs: the point is the loop's bookkeeping, not what is learnt
        {
            "input": {"messages": [{"role": "user", "content": f"t{i}"}]},
            "preferred_output": [{"role": "assistant", "content": "ok" * (1 + i % 2)}],
            "non_preferred_output": [{"role": "assistant", "content": "NO" * (1 + i % 3)}],
        }
        for i in range(8)
    ]

    def inputs_in(folder: str, **overrides: str) -> RecipeInputs:
        hp = {"batchSize": "4", "epochCount": "2", "checkpointEverySteps": "2", **overrides}
        return make_inputs(tmp_path / folder, models_dir, MICRO, train, **hp)

    whole = RecordingReporter()
    get_recipe("FINE_TUNING").run(inputs_in("whole"), whole)
    killed = inputs_in("killed", gradientAccumulationSteps="2")
    assert get_recipe("FINE_TUNING").run(killed, RecordingReporter(stop_after_steps=3)).stopped
    resumed = RecordingReporter()
    get_recipe("FINE_TUNING").run(killed, resumed)

    assert whole.losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert [m.split(",")[0] for m in whole.messages if "reward accuracy" in m and "over 8 pairs" in m] == [
        "epoch 1: DPO loss " + f"{sum(whole.losses[:2]) / 2:.4f}",
        "epoch 2: DPO loss " + f"{sum(whole.losses[2:]) / 2:.4f}",
    ]
    assert [s["step"] for s in resumed.steps] == [4]  # the stop after step 3 checkpointed it
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(whole.losses[3:]), rtol=1e-4, atol=1e-5)
    metrics = "model-customization-job-a1b2c3d4e5f6/training_artifacts/step_wise_preference_metrics.csv"
    rows = read_csv(killed.output_dir / metrics)
    assert rows[0] == ["step_number", "epoch_number", "dpo_loss", "reward_margin", "reward_accuracy"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2", "3"]
    whole_rows = read_csv(tmp_path / "whole" / "output" / metrics)
    for row, expected in zip(rows[1:], whole_rows[1:], strict=True):
        assert [float(v) for v in row] == pytest.approx([float(v) for v in expected], abs=1e-4)


def test_validation_file_in_another_format_fails_the_dpo_job(tmp_path: Path, models_dir: Path) -> None:
    train, _ = make_preference_task(n_train=4, n_test=0, seed=2)
    supervised, _ = make_conversation_task(n_train=4, n_test=0, seed=2)
    inputs = make_inputs(tmp_path, models_dir, MICRO, train, validation=[supervised])
    with pytest.raises(RecipeFailed, match=r"validation-0\.jsonl is in conversation format"):
        get_recipe("FINE_TUNING").run(inputs, RecordingReporter())
