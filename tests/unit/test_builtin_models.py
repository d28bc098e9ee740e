from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig

from tuneforge.catalog.folders import check_hf_folder
from tuneforge.catalog.models import BUILTIN_MODELS, BUILTIN_VOCAB_SIZE, FoundationModel
from tuneforge.model.builtin import ensure_builtin


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in ("forge-small", "forge-micro"):
        ensure_builtin(name, root)
    return root


def test_same_name_gives_bitwise_identical_files(models_dir: Path, tmp_path: Path) -> None:
    again = ensure_builtin("forge-micro", tmp_path)
    first = models_dir / "builtin" / "forge-micro"
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name


def test_sizes_have_different_weights(models_dir: Path) -> None:
    small = (models_dir / "builtin" / "forge-small" / "model.safetensors").read_bytes()
    micro = (models_dir / "builtin" / "forge-micro" / "model.safetensors").read_bytes()
    assert small != micro


@pytest.mark.parametrize(
    "text",
    [
        "Ticket: my card was charged twice\nCategory:",
        "  leading and trailing spaces  ",
        "tabs\tand\r\nwindows newlines",
        "naïve café, 日本語, emoji 🎉👩‍💻",
        "looks special: <eos><pad><bos><unk>",
        "\x00\x01 control bytes \x7f",
        "",
    ],
)
def test_tokenizer_round_trips_any_text(models_dir: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models_dir / "builtin" / "forge-small")
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == len(text.encode("utf-8")) + 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_has_the_catalog_vocabulary_and_special_tokens(models_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models_dir / "builtin" / "forge-micro")
    assert len(tokenizer) == BUILTIN_VOCAB_SIZE
    specials = (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token)
    assert specials == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert tokenizer.convert_tokens_to_ids(list(specials)) == [256, 257, 258, 259]


FORGE_MODELS = [m for m in BUILTIN_MODELS if m.family == "forge"]
"""SmolLM2 and its student are checked against their converted folders in test_smollm2_builtin.py."""


@pytest.mark.parametrize("model", FORGE_MODELS, ids=lambda m: m.model_id)
def test_parameter_count_matches_catalog(models_dir: Path, model: FoundationModel) -> None:
    name = model.source.removeprefix("builtin:")
    loaded = AutoModelForCausalLM.from_pretrained(models_dir / "builtin" / name)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.config.vocab_size == BUILTIN_VOCAB_SIZE
    assert sum(p.numel() for p in loaded.parameters()) == model.parameter_count


def test_micro_is_at_least_three_times_smaller_than_small() -> None:
    counts = {m.source: m.parameter_count for m in BUILTIN_MODELS}
    small, micro = counts["builtin:forge-small"], counts["builtin:forge-micro"]
    assert small is not None and micro is not None
    assert small >= 3 * micro


def test_concurrent_creation_yields_one_complete_model(tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_builtin("forge-micro", tmp_path))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1
    assert check_hf_folder(results[0]) is None
    leftovers = [p.name for p in (tmp_path / "builtin").iterdir() if p.is_dir() and p.name != "forge-micro"]
    assert leftovers == []


def test_incomplete_builtin_folder_is_recreated(models_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "builtin" / "forge-micro"
    shutil.copytree(models_dir / "builtin" / "forge-micro", broken)
    (broken / "model.safetensors").unlink()
    ensure_builtin("forge-micro", tmp_path)
    assert check_hf_folder(broken) is None


def test_unknown_builtin_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="forge-micro, forge-small"):
        ensure_builtin("forge-huge", tmp_path)


def test_check_accepts_builtin_folder(models_dir: Path) -> None:
    assert check_hf_folder(models_dir / "builtin" / "forge-small") is None


def test_check_refuses_folder_without_config(tmp_path: Path) -> None:
    assert check_hf_folder(tmp_path) == f"no config.json in {tmp_path}"


def test_check_refuses_non_causal_architecture(models_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(models_dir / "builtin" / "forge-micro", tmp_path, dirs_exist_ok=True)
    BertConfig(architectures=["BertModel"]).save_pretrained(tmp_path)
    reason = check_hf_folder(tmp_path)
    assert reason == "config.json architectures [BertModel] is not a causal language model"


def test_check_refuses_folder_without_weights(models_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(models_dir / "builtin" / "forge-micro", tmp_path, dirs_exist_ok=True)
    (tmp_path / "model.safetensors").unlink()
    reason = check_hf_folder(tmp_path)
    assert reason is not None and reason.startswith("no weights (*.safetensors or pytorch_model*.bin)")


def test_check_refuses_folder_without_tokenizer(models_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(models_dir / "builtin" / "forge-micro", tmp_path, dirs_exist_ok=True)
    (tmp_path / "tokenizer.json").unlink()
    reason = check_hf_folder(tmp_path)
    assert reason is not None and reason.startswith("no tokenizer files")
