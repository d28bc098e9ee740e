"""Things that must not drift apart: generated docs, the recipe registry and the API enum."""

from __future__ import annotations

from pathlib import Path

from tuneforge.api.bedrock.schemas import REQUEST_TYPES
from tuneforge.catalog.hyperparameters import render_docs
from tuneforge.catalog.models import BUILTIN_MODELS, CUSTOMIZATION_TYPES
from tuneforge.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[2]


def test_hyperparameter_docs_are_generated_from_the_specs() -> None:
    assert (ROOT / "docs" / "hyperparameters.md").read_text() == render_docs(), (
        "regenerate with: python -m tuneforge.catalog.hyperparameters > docs/hyperparameters.md"
    )


def test_every_advertised_customization_has_a_recipe_and_specs() -> None:
    for model in BUILTIN_MODELS:
        for ctype in model.customizations:
            assert ctype in RECIPES, f"{model.model_id} advertises {ctype} but no recipe is registered"
            assert model.hyperparameter_specs(ctype), f"{model.model_id} has no {ctype} hyperparameters"


def test_recipe_registry_matches_the_api_enum() -> None:
    assert set(RECIPES) <= set(CUSTOMIZATION_TYPES) <= set(REQUEST_TYPES)
