"""Customization recipes, one per ``customizationType``, behind a registry kept as data.

Import-light on purpose: the API process imports this package (to list the supported types) and
must never import torch, so each registry entry is a small factory that imports its recipe module
only when called.
"""

from __future__ import annotations

from collections.abc import Callable

from tuneforge.recipes.base import Recipe


def _fine_tuning() -> Recipe:
    from tuneforge.recipes.fine_tuning import FineTuningRecipe

    return FineTuningRecipe()


def _continued_pretraining() -> Recipe:
    from tuneforge.recipes.continued_pretraining import ContinuedPretrainingRecipe

    return ContinuedPretrainingRecipe()


def _distillation() -> Recipe:
    from tuneforge.recipes.distillation import DistillationRecipe

    return DistillationRecipe()


def _reinforcement() -> Recipe:
    from tuneforge.recipes.reinforcement import ReinforcementFineTuningRecipe

    return ReinforcementFineTuningRecipe()


RECIPES: dict[str, Callable[[], Recipe]] = {
    "FINE_TUNING": _fine_tuning,
    "CONTINUED_PRE_TRAINING": _continued_pretraining,
    "DISTILLATION": _distillation,
    "REINFORCEMENT_FINE_TUNING": _reinforcement,
}
"""customizationType -> a factory for its recipe."""


def get_recipe(customization_type: str) -> Recipe:
    """A fresh recipe for ``customization_type``; KeyError names the supported types."""
    try:
        factory = RECIPES[customization_type]
    except KeyError:
        raise KeyError(
            f"no recipe for customization type {customization_type!r}; supported: {', '.join(sorted(RECIPES))}"
        ) from None
    return factory()
