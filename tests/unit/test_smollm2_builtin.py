"""The SmolLM2 built-ins: the catalog's figures against the converted folders, and the student's make-up.

The session's one conversion of the wheel's GGUF (tests/conftest.py's ``smollm2_converted``, about 20 s)
and one student made from it (a few seconds) through ``ensure_builtin``, as a worker makes it. The
teacher's own conversion through ``ensure_builtin`` runs in tests/e2e/test_smollm2.py's server.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from tuneforge.catalog.models import (
    BUILTIN_MODELS,
    DISTILLATION,
    FINE_TUNING,
    SMOLLM2,
    SMOLLM2_ARCHITECTURE,
    SMOLLM2_STUDENT,
    SMOLLM2_STUDENT_LAYERS,
    SMOLLM2_VOCAB_SIZE,
    FoundationModel,
)
from tuneforge.errors import ValidationException
from tuneforge.model.builtin import ensure_builtin
from tuneforge.services import Services
from tuneforge.settings import Settings

BY_SOURCE = {model.source: model for model in BUILTIN_MODELS}
TEACHER, STUDENT, FORGE_SMALL = (BY_SOURCE[f"builtin:{n}"] for n in (SMOLLM2, SMOLLM2_STUDENT, "forge-small"))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_converted: Path) -> Path:
    """A models folder holding the session's converted teacher (linked in) and a student made from it."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(smollm2_converted, root / "builtin" / SMOLLM2, copy_function=os.link)
    ensure_builtin(SMOLLM2_STUDENT, root)  # finds the teacher complete, as a worker does after its first use
    return root


@pytest.mark.parametrize("model", [TEACHER, STUDENT], ids=lambda m: m.model_id)
def test_catalog_figures_match_the_folder(models_dir: Path, model: FoundationModel) -> None:
    folder = models_dir / "builtin" / model.source.removeprefix("builtin:")
    config = AutoConfig.from_pretrained(str(folder))
    assert config.max_position_embeddings == model.limits.max_total_tokens == 8192
    assert model.limits.max_input_tokens + model.limits.max_output_tokens <= model.limits.max_total_tokens
    assert config.vocab_size == SMOLLM2_VOCAB_SIZE
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (
        SMOLLM2_ARCHITECTURE.hidden_size,
        SMOLLM2_ARCHITECTURE.intermediate_size,
        SMOLLM2_ARCHITECTURE.num_attention_heads,
        SMOLLM2_ARCHITECTURE.num_key_value_heads,
    )
    assert config.tie_word_embeddings is True
    weights = load_file(str(folder / "model.safetensors"))
    tied = {"lm_head.weight"}  # saved once, as the embedding matrix
    assert sum(t.numel() for name, t in weights.items() if name not in tied) == model.parameter_count


def test_student_is_every_kept_teacher_layer_with_the_teachers_embeddings_and_tokenizer(models_dir: Path) -> None:
    teacher_dir, student_dir = (models_dir / "builtin" / name for name in (SMOLLM2, SMOLLM2_STUDENT))
    teacher = load_file(str(teacher_dir / "model.safetensors"))
    student = load_file(str(student_dir / "model.safetensors"))
    assert AutoConfig.from_pretrained(str(student_dir)).num_hidden_layers == len(SMOLLM2_STUDENT_LAYERS) == 10
    for new, old in enumerate(SMOLLM2_STUDENT_LAYERS):
        for name, tensor in student.items():
            if name.startswith(f"model.layers.{new}."):
                assert torch.equal(tensor, teacher[name.replace(f".{new}.", f".{old}.", 1)]), name
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(student[name], teacher[name])
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (student_dir / name).read_bytes() == (teacher_dir / name).read_bytes()
    assert STUDENT.parameter_count is not None and TEACHER.parameter_count is not None
    assert STUDENT.parameter_count < 0.5 * TEACHER.parameter_count


def test_smollm2_teaches_its_student_and_no_other_pairing_is_allowed(tmp_path: Path) -> None:
    services = Services.create(Settings(data_dir=tmp_path))
    try:
        assert FINE_TUNING in TEACHER.customizations and DISTILLATION in STUDENT.customizations
        assert services.catalog.tokenizer_identity(TEACHER) == services.catalog.tokenizer_identity(STUDENT)

        def config(teacher: FoundationModel) -> dict[str, object]:
            model_config = {"teacherModelIdentifier": teacher.model_id, "maxResponseLengthForInference": 16}
            return {"distillationConfig": {"teacherModelConfig": model_config}}

        assert services.jobs.distillation_teacher(config(TEACHER), STUDENT).foundation == TEACHER
        with pytest.raises(ValidationException, match="family forge"):
            services.jobs.distillation_teacher(config(FORGE_SMALL), STUDENT)
        forge_micro = BY_SOURCE["builtin:forge-micro"]
        with pytest.raises(ValidationException, match="family smollm2"):
            services.jobs.distillation_teacher(config(TEACHER), forge_micro)
    finally:
        services.close()
