"""Portable model folders: the tokenizer class, the adapter's base reference, READMEs and exports.

Everything here runs on forge-micro with an untrained LoRA adapter whose weights are set at random
(so merging changes the model): no training, a few seconds in all. The end-to-end check (a real
job, a real server, and a fresh process with plain transformers/peft) is tests/e2e/test_export.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from tuneforge.catalog.hyperparameters import fine_tuning_specs, resolve
from tuneforge.catalog.models import BUILTIN_MODELS
from tuneforge.data.formats import FORMAT_PROMPT_COMPLETION
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.export import BaseModel, ExportError, export_model
from tuneforge.model.folders import load_for_inference, read_manifest
from tuneforge.model.loading import PORTABLE_TOKENIZER_CLASS, load_model_and_tokenizer, load_tokenizer, quiet_peft
from tuneforge.model.prompts import encode_prompt
from tuneforge.recipes.base import RecipeInputs
from tuneforge.recipes.outputs import save_trained_model

MICRO = next(model for model in BUILTIN_MODELS if model.source == "builtin:forge-micro")
BASE = BaseModel(model_id=MICRO.model_id, builtin=True)
PROMPT = "User: my parcel is late\nAssistant:"
PEFT_0_11_LORA_FIELDS = {
    *("alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode"),
    *("init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config"),
    *("lora_alpha", "lora_dropout", "megatron_config", "megatron_core", "modules_to_save", "peft_type", "r"),
    *("rank_pattern", "revision", "target_modules", "task_type", "use_dora", "use_rslora"),
}
"""``LoraConfig``'s fields in peft 0.11.1 (May 2024), which refuses any other key in adapter_config.json."""


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    ensure_builtin("forge-micro", root)
    return root


@pytest.fixture(scope="module")
def saved(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A custom model folder as a LoRA job saves it (adapter + merged), with non-zero adapter weights."""
    root = tmp_path_factory.mktemp("job")
    model, tokenizer = load_model_and_tokenizer(models_dir / "builtin" / "forge-micro")
    torch.manual_seed(0)
    with quiet_peft():
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    inputs = RecipeInputs(
        job_id="a1b2c3d4e5f6",
        customization_type="FINE_TUNING",
        base_model=MICRO,
        base_model_dir=models_dir / "builtin" / "forge-micro",
        training_file=root / "train.jsonl",
        validation_files=(),
        output_dir=root / "output",
        model_dir=root / "model",
        checkpoint_dir=root / "checkpoints",
        hyperparameters=resolve(fine_tuning_specs(), {"saveMergedModel": "true"}),
    )
    save_trained_model(peft_model, tokenizer, inputs, full=False, data_format=FORMAT_PROMPT_COMPLETION)
    return inputs.model_dir


def adapter_only(saved: Path, where: Path) -> Path:
    """A copy of ``saved`` without its merged weights, as a job with saveMergedModel=false leaves it."""
    shutil.copytree(saved / "adapter", where / "adapter")
    manifest = {**json.loads((saved / "tuneforge-model.json").read_text()), "merged_dir": None}
    (where / "tuneforge-model.json").write_text(json.dumps(manifest))
    return where


def tokenizer_class(folder: Path) -> str:
    return str(json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"])


def logits(model: Any, tokenizer: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([encode_prompt(tokenizer, PROMPT)])).logits


def assert_portable_tokenizer(folder: Path) -> None:
    """Named by a class transformers 4.x has, and that class (not AutoTokenizer) loads it as tuneforge does."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS == "PreTrainedTokenizerFast"
    assert config["model_input_names"] == ["input_ids", "attention_mask"]  # 4.x would add token_type_ids
    assert "is_local" not in config and "local_files_only" not in config
    explicit = PreTrainedTokenizerFast.from_pretrained(str(folder))
    ours = load_tokenizer(folder)
    text = "Ticket: naïve café <eos>\n"
    assert explicit.encode(text) == ours.encode(text) == encode_prompt(ours, text)
    assert (explicit.bos_token_id, explicit.eos_token_id, explicit.pad_token_id) == (257, 258, 256)


def test_builtin_tokenizer_names_a_class_transformers_4_loads(models_dir: Path) -> None:
    assert_portable_tokenizer(models_dir / "builtin" / "forge-micro")


def test_saved_adapter_and_merged_folders_have_portable_tokenizers(saved: Path) -> None:
    assert_portable_tokenizer(saved / "adapter")
    assert_portable_tokenizer(saved / "merged")


def test_saved_adapter_names_its_base_by_catalog_id_not_by_path(saved: Path, models_dir: Path) -> None:
    config = json.loads((saved / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tuneforge.forge-micro-v1:0:512"
    assert set(config) <= PEFT_0_11_LORA_FIELDS, "older peft releases refuse these keys"
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 8, "LORA")
    for folder in (saved / "adapter", saved / "merged"):
        for path in folder.iterdir():
            if path.suffix in (".json", ".md"):
                assert str(models_dir) not in path.read_text(), f"{path} names a local path"


def test_saved_folders_have_a_readme_naming_the_base_and_how_to_load_it(saved: Path) -> None:
    adapter = (saved / "adapter" / "README.md").read_text()
    assert "`tuneforge.forge-micro-v1:0:512`" in adapter
    assert 'PeftModel.from_pretrained(base, "path/to/this/folder")' in adapter
    assert "--include-base" in adapter
    merged = (saved / "merged" / "README.md").read_text()
    assert 'AutoModelForCausalLM.from_pretrained("path/to/this/folder")' in merged and "peft" in merged


def test_tuneforge_loads_the_adapter_without_its_config_naming_a_path(
    saved: Path, models_dir: Path, tmp_path: Path
) -> None:
    merged, tokenizer = load_for_inference(saved, models_dir)
    merged_at_load, _ = load_for_inference(adapter_only(saved, tmp_path), models_dir)
    torch.testing.assert_close(logits(merged_at_load, tokenizer), logits(merged, tokenizer), atol=1e-5, rtol=1e-5)


def test_merged_export_of_an_adapter_only_model_equals_the_served_model(
    saved: Path, models_dir: Path, tmp_path: Path
) -> None:
    model_dir = adapter_only(saved, tmp_path / "model")
    manifest = read_manifest(model_dir)
    assert manifest is not None
    dest = tmp_path / "export"
    export = export_model(model_dir, manifest, BASE, models_dir / "builtin" / "forge-micro", dest, form="merged")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= set(
        export.files
    )
    assert not any(name.startswith("adapter") for name in export.files)
    assert_portable_tokenizer(dest)
    served, tokenizer = load_for_inference(model_dir, models_dir)
    exported = AutoModelForCausalLM.from_pretrained(str(dest)).eval()
    torch.testing.assert_close(logits(exported, tokenizer), logits(served, tokenizer), atol=1e-5, rtol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")], "staging folder left behind"


def test_adapter_export_with_base_loads_with_plain_peft(saved: Path, models_dir: Path, tmp_path: Path) -> None:
    manifest = read_manifest(saved)
    assert manifest is not None
    dest = tmp_path / "export"
    export = export_model(
        saved, manifest, BASE, models_dir / "builtin" / "forge-micro", dest, form="adapter", include_base=True
    )
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"} <= set(export.files)
    assert {"base/model.safetensors", "base/config.json", "base/tokenizer.json"} <= set(export.files)
    assert json.loads((dest / "adapter_config.json").read_text())["base_model_name_or_path"] == MICRO.model_id
    assert 'from_pretrained("path/to/this/folder/base")' in (dest / "README.md").read_text()
    assert_portable_tokenizer(dest)
    assert_portable_tokenizer(dest / "base")
    served, tokenizer = load_for_inference(saved, models_dir)
    with quiet_peft():
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(dest / "base")), str(dest)).eval()
    torch.testing.assert_close(logits(plain, tokenizer), logits(served, tokenizer), atol=1e-4, rtol=1e-4)


def test_export_makes_folders_saved_before_the_fix_portable(saved: Path, models_dir: Path, tmp_path: Path) -> None:
    """A model saved by an older tuneforge: TokenizersBackend, and the base's local path in the adapter."""
    old = tmp_path / "old"
    shutil.copytree(saved, old)
    for folder in ("adapter", "merged"):
        path = old / folder / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "tokenizer_class": "TokenizersBackend"}))
    path = old / "adapter" / "adapter_config.json"
    base_path = str(models_dir / "builtin" / "forge-micro")
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": base_path}))
    manifest = read_manifest(old)
    assert manifest is not None
    base_dir = models_dir / "builtin" / "forge-micro"
    for form in ("adapter", "merged"):
        dest = tmp_path / form
        export_model(old, manifest, BASE, base_dir, dest, form=form)  # type: ignore[arg-type]
        assert tokenizer_class(dest) == "PreTrainedTokenizerFast"
    assert base_path not in (tmp_path / "adapter" / "adapter_config.json").read_text()


def test_export_refuses_a_non_empty_folder_unless_forced(saved: Path, models_dir: Path, tmp_path: Path) -> None:
    manifest = read_manifest(saved)
    assert manifest is not None
    dest = tmp_path / "export"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    base_dir = models_dir / "builtin" / "forge-micro"
    with pytest.raises(ExportError, match="is not empty: choose an empty folder, or pass --force"):
        export_model(saved, manifest, BASE, base_dir, dest, form="adapter")
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    export_model(saved, manifest, BASE, base_dir, dest, form="adapter", force=True)
    assert not (dest / "notes.txt").exists() and (dest / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.parametrize("where", ["model", "inside model", "holds data", "base"])
def test_export_refuses_folders_that_replacing_would_delete(
    saved: Path, models_dir: Path, tmp_path: Path, where: str
) -> None:
    manifest = read_manifest(saved)
    assert manifest is not None
    base_dir = models_dir / "builtin" / "forge-micro"
    data_dir = tmp_path / "data"
    dest = {
        "model": saved,
        "inside model": saved / "adapter" / "export",
        "holds data": tmp_path,
        "base": base_dir,
    }[where]
    with pytest.raises(ExportError, match=r"overlaps the model folder|which replacing it would delete"):
        export_model(saved, manifest, BASE, base_dir, dest, form="adapter", force=True, protected=(data_dir,))
    assert (saved / "adapter" / "adapter_model.safetensors").is_file()


def test_fully_trained_model_has_no_adapter_to_export(saved: Path, models_dir: Path, tmp_path: Path) -> None:
    manifest = {**(read_manifest(saved) or {}), "adapter_dir": None, "format": "full"}
    with pytest.raises(ExportError, match="fully trained, so it has no adapter: export it --merged"):
        export_model(saved, manifest, BASE, models_dir, tmp_path / "x", form="adapter")
    with pytest.raises(ExportError, match="--include-base goes with --adapter"):
        export_model(saved, manifest, BASE, models_dir, tmp_path / "x", form="merged", include_base=True)
