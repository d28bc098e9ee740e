"""CONTINUED_PRE_TRAINING: more next-token training on unlabeled text, to change what a model knows.

Read top to bottom: setup (base model, LoRA or full) -> data (documents -> overlapping chunks) ->
train (loss on every token) -> evaluate (validation loss and perplexity, before and after) -> save.

Documents longer than ``maxSequenceLength`` (default: the model's context) are cut into windows
that overlap by ``chunkOverlap`` tokens; the overlap is context only, so every token of every
document is in the loss exactly once (:func:`tuneforge.recipes.tokenising.chunk_document`). Nothing
is truncated and nothing is packed: short documents are padded within length-grouped batches, for
the reasons given in :mod:`tuneforge.recipes.batching`.
"""

from __future__ import annotations

import math

import torch

from tuneforge.catalog.models import CONTINUED_PRE_TRAINING
from tuneforge.data.formats import FORMAT_PRETRAINING
from tuneforge.model.loading import load_model_and_tokenizer
from tuneforge.recipes.base import JobReporter, RecipeInputs, RecipeResult
from tuneforge.recipes.loop import TrainingConfig, mean_token_loss, prepare_for_training, record_validation, train
from tuneforge.recipes.outputs import MetricsWriter, save_trained_model
from tuneforge.recipes.tokenising import encode_documents, loss_token_count


class ContinuedPretrainingRecipe:
    customization_type = CONTINUED_PRE_TRAINING

    def run(self, inputs: RecipeInputs, reporter: JobReporter) -> RecipeResult:
        hp = inputs.hyperparameters
        config = TrainingConfig.from_hyperparameters(hp)
        if inputs.num_threads > 0:
            torch.set_num_threads(inputs.num_threads)

        # Setup.
        model, tokenizer = load_model_and_tokenizer(inputs.base_model_dir)
        torch.manual_seed(config.seed)
        model = prepare_for_training(model, hp, reporter)

        # Data: each document is <bos> text <eos>, cut into overlapping windows.
        reporter.stage("dataProcessing", "InProgress")
        max_length = int(hp["maxSequenceLength"]) or int(model.config.max_position_embeddings)
        overlap = int(hp["chunkOverlap"])
        examples, documents = encode_documents(inputs.training_file, tokenizer, max_length, overlap)
        validators = [encode_documents(path, tokenizer, max_length, overlap)[0] for path in inputs.validation_files]
        reporter.log(
            f"{documents:,} documents -> {len(examples):,} chunks of at most {max_length} tokens "
            f"(overlap {overlap}); {loss_token_count(examples):,} tokens in the loss, none dropped"
        )
        before = [mean_token_loss(model, validator, tokenizer.pad_token_id) for validator in validators]
        reporter.stage("dataProcessing", "Completed")

        # Train.
        reporter.stage("training", "InProgress")
        metrics = MetricsWriter(inputs.output_dir, inputs.job_id)
        pad_id = tokenizer.pad_token_id
        outcome = train(model, examples, config, reporter, metrics, inputs.checkpoint_dir, pad_id=pad_id)
        if outcome.stopped:
            reporter.stage("training", "Stopped")
            return RecipeResult(training_loss=outcome.final_loss, stopped=True)
        reporter.log(
            f"trained {outcome.steps} steps in {outcome.seconds:.1f}s, "
            f"{outcome.tokens_seen:,} tokens, final loss {outcome.final_loss:.4f}"
        )

        # Evaluate: validation loss and perplexity per validator, against the base model's.
        validation_losses, artifacts = record_validation(
            model, validators, metrics, outcome, config.epochs, tokenizer.pad_token_id
        )
        for index, (old, new) in enumerate(zip(before, validation_losses, strict=True)):
            reporter.log(f"validator {index}: perplexity {math.exp(old):.2f} (base model) -> {math.exp(new):.2f}")
        reporter.stage("training", "Completed")

        # Save.
        full = hp["trainingMethod"] == "full"
        artifacts.update(save_trained_model(model, tokenizer, inputs, full=full, data_format=FORMAT_PRETRAINING))
        return RecipeResult(
            training_loss=outcome.final_loss,
            validation_losses=validation_losses,
            artifacts=artifacts,
        )
