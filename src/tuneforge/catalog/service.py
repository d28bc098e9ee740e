"""The catalog: built-in models plus registered ones, looked up by id or ARN. No torch here."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import select

from tuneforge.arns import ArnFactory, is_arn, resource_path, resource_type
from tuneforge.catalog.folders import check_hf_folder, tokenizer_digest
from tuneforge.catalog.models import (
    BUILTIN_MODELS,
    CUSTOMIZATION_TYPES,
    FoundationModel,
    TokenLimits,
    all_specs,
)
from tuneforge.db.session import Database
from tuneforge.db.tables import RegisteredModel
from tuneforge.errors import ResourceNotFoundException, ValidationException
from tuneforge.storage import ObjectMissing, ObjectStore, StorageError

MODEL_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9.\-]{0,62}(:[a-z0-9]{1,32}){0,3}")
"""Matched whole (``fullmatch``): with ``match`` and ``$``, an id ending in a newline registered."""


class Catalog:
    def __init__(self, db: Database, store: ObjectStore, arns: ArnFactory) -> None:
        self.db = db
        self.store = store
        self.arns = arns

    def all(self) -> list[FoundationModel]:
        """Every model a job can start from: built-in, registered and imported."""
        with self.db.session() as session:
            rows = session.scalars(select(RegisteredModel).order_by(RegisteredModel.model_id)).all()
            registered = [_from_row(row) for row in rows]
        return [*BUILTIN_MODELS, *registered]

    def foundation_models(self) -> list[FoundationModel]:
        """What ListFoundationModels shows: imported models are listed by ListImportedModels instead."""
        return [model for model in self.all() if model.arn is None]

    def get(self, identifier: str) -> FoundationModel:
        """A model by id, foundation-model ARN or imported-model ARN."""
        model_id = identifier
        if is_arn(identifier):
            kind = resource_type(identifier)
            if kind == "imported-model":
                for model in self.all():
                    if model.arn == identifier:
                        return model
                raise ResourceNotFoundException(f"The model {identifier} does not exist.")
            if kind != "foundation-model":
                raise ValidationException(f"{identifier} is not a foundation model ARN")
            model_id = resource_path(identifier)
        for model in self.all():
            if model.model_id == model_id:
                return model
        raise ResourceNotFoundException(f"The model {identifier} does not exist.")

    def arn(self, model: FoundationModel) -> str:
        return model.arn or self.arns.foundation_model(model.model_id)

    def register(self, model_id: str, source: str, provider: str = "custom") -> FoundationModel:
        """Add a user's HF-format causal LM from a local folder or an s3:// prefix.

        The folder is checked cheaply (config, weights and tokenizer files present, a causal LM
        architecture) without loading weights; a folder that is not one is refused with the reason.
        """
        if not MODEL_ID_PATTERN.fullmatch(model_id):
            raise ValidationException(
                f"model id '{model_id}' must match {MODEL_ID_PATTERN.pattern} "
                "(lower case, digits, '.', '-', optional ':' suffixes)"
            )
        if any(m.model_id == model_id for m in BUILTIN_MODELS):
            raise ValidationException(f"{model_id} is a built-in model id")
        shown = source.rstrip("/") or source
        try:
            self.store.check(shown)
            folder = self.store.cached(source)
        except ObjectMissing:
            raise ValidationException(
                f"{source} is not a Hugging Face causal language model: {shown} is not a folder"
            ) from None
        except StorageError as exc:
            raise ValidationException(str(exc)) from None
        reason = check_hf_folder(folder)
        if reason:
            reason = reason.replace(str(folder), shown)  # name the source, not the staged copy
            raise ValidationException(f"{source} is not a Hugging Face causal language model: {reason}")
        config = json.loads((folder / "config.json").read_text())
        raw_context = config.get("max_position_embeddings") or config.get("n_positions") or 2048
        if not isinstance(raw_context, int) or raw_context < 1:
            raise ValidationException(
                f"{source}: config.json max_position_embeddings must be a positive integer, got {raw_context!r}"
            )
        context = raw_context
        family = str(config.get("model_type", "unknown"))
        with self.db.session() as session:
            if session.get(RegisteredModel, model_id) is not None:
                raise ValidationException(f"A model with id {model_id} is already registered")
            session.add(
                RegisteredModel(
                    model_id=model_id,
                    provider=provider,
                    source=source,
                    family=family,
                    context_length=context,
                    parameter_count=None,
                )
            )
        return self.get(model_id)

    def local_folder(self, model: FoundationModel) -> Path:
        """A local copy of a registered model's folder, staged from the store into its cache and made
        again when the source changed (built-in folders are made by workers)."""
        return self.store.cached(model.source)

    def tokenizer_identity(self, model: FoundationModel) -> str:
        """What two models must share for one to distil into the other: the same token ids.

        A built-in model's tokenizer is named by its catalog entry (its folder may not exist yet in
        the API process, which never creates it): the forge family shares one, SmolLM2 and its student
        another. A registered model's identity is a digest of
        its tokenizer files, read without loading anything: two folders whose tokenizer files
        differ in any byte are treated as different tokenizers, which errs on the safe side.
        """
        if model.builtin:
            return model.tokenizer
        return tokenizer_digest(self.local_folder(model))


def _from_row(row: RegisteredModel) -> FoundationModel:
    """A registered model, or an imported one (with an ARN, its own copy of the weights, and
    on-demand inference, as Bedrock serves imported models)."""
    context = row.context_length
    limits = TokenLimits(
        max_input_tokens=max(1, context * 3 // 4),
        max_output_tokens=max(1, context // 2),
        max_total_tokens=context,
    )
    imported = row.arn is not None
    return FoundationModel(
        model_id=row.model_id,
        name=row.name or row.model_id,
        provider=row.provider,
        family=row.family,
        source=row.weights_path or row.source,
        limits=limits,
        parameter_count=row.parameter_count,
        customizations=CUSTOMIZATION_TYPES,
        inference_types=("ON_DEMAND", "PROVISIONED") if imported else ("PROVISIONED",),
        description=f"Imported from {row.source}" if imported else f"Registered from {row.source}",
        specs=all_specs(pretrained=True),
        arn=row.arn,
    )
