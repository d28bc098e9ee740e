"""FINE_TUNING: supervised fine-tuning on prompt/completion or conversation records.

A training file of preference records trains with DPO instead (:mod:`tuneforge.recipes.preference`).

Read top to bottom: setup (base model, LoRA or full) -> data -> train -> evaluate -> save. The
shared machinery lives in :mod:`tuneforge.recipes.loop` and its neighbours; this file only decides what to call.

Outputs in ``model_dir`` are written by :func:`tuneforge.model.folders.save_model`: the LoRA
adapter and/or the merged model, and the manifest that says which exists.
"""

from __future__ import annotations

import math

import torch

from tuneforge.catalog.models import FINE_TUNING
from tuneforge.data.formats import FORMAT_CONVERSATION, FORMAT_PREFERENCE
from tuneforge.model.loading import load_model_and_tokenizer
from tuneforge.model.prompts import ChatTemplateError
from tuneforge.recipes.base import JobReporter, RecipeFailed, RecipeInputs, RecipeResult
from tuneforge.recipes.loop import (
    EpochValidation,
    TrainingConfig,
    prepare_for_training,
    record_validation,
    train,
)
from tuneforge.recipes.outputs import MetricsWriter, checkpoint_models, save_trained_model
from tuneforge.recipes.preference import PreferenceTuning
from tuneforge.recipes.tokenising import conversation_rendering, data_format, encode_file


class FineTuningRecipe:
    customization_type = FINE_TUNING

    def run(self, inputs: RecipeInputs, reporter: JobReporter) -> RecipeResult:
        if data_format(inputs.training_file) == FORMAT_PREFERENCE:
            return PreferenceTuning().run(inputs, reporter)
        hp = inputs.hyperparameters
        config = TrainingConfig.from_hyperparameters(hp)
        full = hp["trainingMethod"] == "full"
        if inputs.num_threads > 0:
            torch.set_num_threads(inputs.num_threads)

        # Setup: the base model and, unless full fine-tuning, LoRA adapters.
        model, tokenizer = load_model_and_tokenizer(inputs.base_model_dir)
        torch.manual_seed(config.seed)
        model = prepare_for_training(model, hp, reporter)

        # Data: records -> token ids with the loss on answers only, conversations through the model's
        # chat template (or the plain one, which the log says). Over-long records fail here loudly;
        # pre-flight validation should already have rejected them. The data format is saved with
        # the model, which is served as it was trained.
        reporter.stage("dataProcessing", "InProgress")
        max_length = int(hp["maxSequenceLength"]) or int(model.config.max_position_embeddings)
        trained_format = data_format(inputs.training_file)
        if trained_format == FORMAT_CONVERSATION:
            reporter.log(conversation_rendering(tokenizer))
        try:
            examples = encode_file(inputs.training_file, tokenizer, max_length)
            validators = [encode_file(path, tokenizer, max_length) for path in inputs.validation_files]
        except ChatTemplateError as exc:
            raise RecipeFailed(str(exc)) from exc
        reporter.stage("dataProcessing", "Completed")

        # Train; with a validation set, validate after each epoch and stop early once it stops improving.
        reporter.stage("training", "InProgress")
        metrics = MetricsWriter(inputs.output_dir, inputs.job_id)
        epoch_end = (
            EpochValidation(
                validators[0],
                tokenizer.pad_token_id,
                reporter,
                patience=int(hp["earlyStoppingPatience"]),
                report=inputs.on_validation,
            )
            if validators
            else None
        )
        outcome = train(
            model,
            examples,
            config,
            reporter,
            metrics,
            inputs.checkpoint_dir,
            pad_id=tokenizer.pad_token_id,
            epoch_end=epoch_end,
            on_checkpoint=None
            if full
            else checkpoint_models(
                tokenizer,
                inputs,
                trained_format,
                steps_per_epoch=math.ceil(len(examples) / config.batch_size),
                epochs=config.epochs,
            ),
        )
        if outcome.stopped:
            reporter.stage("training", "Stopped")
            return RecipeResult(training_loss=outcome.final_loss, stopped=True)
        reporter.log(
            f"trained {outcome.steps} steps in {outcome.seconds:.1f}s, "
            f"{outcome.tokens_seen:,} tokens, final loss {outcome.final_loss:.4f}"
        )

        # Evaluate: mean token loss per validator, one metrics file each.
        validation_losses, artifacts = record_validation(
            model, validators, metrics, outcome, outcome.epochs_done, tokenizer.pad_token_id
        )
        reporter.stage("training", "Completed")

        # Save.
        artifacts.update(save_trained_model(model, tokenizer, inputs, full=full, data_format=trained_format))
        return RecipeResult(
            training_loss=outcome.final_loss,
            validation_losses=validation_losses,
            artifacts=artifacts,
        )
