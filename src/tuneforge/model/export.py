"""Portable model folders: what tuneforge hands out loads anywhere with plain transformers and peft.

Three things make a saved folder portable, and both the recipes (when a job saves its model) and
``tuneforge models export`` apply them:

- **Tokenizer**: named by a class every transformers release loads
  (:func:`tuneforge.model.builtin.save_tokenizer`).
- **Adapter**: peft writes the base model's local path into ``adapter_config.json`` (and into its
  model card). That path means nothing on another machine, so it is replaced by the base model's
  catalog id (``tuneforge.forge-small-v1:0:512``, or the id a user registered their own model under).
  tuneforge itself never reads that field: it finds an adapter's base through its manifest.
  Settings at peft's defaults are left out, because older peft releases refuse keys they do not know.
- **README.md**: which base to load, and the few lines of transformers + peft code that load it.

:func:`export_model` writes one self-contained folder from a custom model: the merged model (full
weights), or the adapter with its base named (and copied next to it on request). Merging needs
torch, so this module runs in the CLI or worker process, never in the API server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from peft import LoraConfig, PeftModel

from tuneforge.model.loading import load_model_and_tokenizer, make_tokenizer_config_portable

ExportForm = Literal["merged", "adapter"]

ADAPTER_CONFIG = "adapter_config.json"
README = "README.md"
BASE_SUBFOLDER = "base"
"""Where ``--include-base`` puts a copy of the base model inside an adapter export."""
ADAPTER_ONLY_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", README)
"""Files of an adapter folder that are not part of the tokenizer (the rest is)."""


@dataclass(frozen=True)
class BaseModel:
    """The base model of a custom model, as a reader of the exported folder must find it."""

    model_id: str
    """Catalog id, written into ``adapter_config.json`` and the README."""
    builtin: bool
    """A tuneforge built-in model: obtainable only from tuneforge (``--include-base``)."""


@dataclass(frozen=True)
class Export:
    form: ExportForm
    files: list[str]
    """Every file written, relative to the export folder."""


LORA_KEYS_ALWAYS_KEPT = frozenset(
    {
        "peft_type",
        "task_type",
        "base_model_name_or_path",
        "inference_mode",
        "r",
        "lora_alpha",
        "lora_dropout",
        "bias",
        "fan_in_fan_out",
        "use_rslora",
        "use_dora",
        "target_modules",
        "modules_to_save",
    }
)
"""LoRA settings that shape the forward pass, kept even at their defaults so no peft release has to
agree with today's defaults on them."""


def make_adapter_portable(adapter_dir: Path, base: BaseModel, *, base_copied: bool = False) -> None:
    """Name the base by its catalog id in ``adapter_config.json``, leave out what older peft releases
    cannot read, and write the adapter README (over peft's model card, which names the local path too).

    peft builds the config with ``LoraConfig(**adapter_config)``, and older releases (0.11, for one)
    refuse any key they do not know: peft 0.21 writes some 20 newer ones (``alora_invocation_tokens``,
    ``qalora_group_size``, ``peft_version``...), nearly all at their defaults. A setting at its default
    means the feature is off, which is also what an older peft does without the key, so those keys
    are dropped (checked with peft 0.11.1 and transformers 4.40.2); a non-default one stays, and a
    peft too old for it then says so.
    """
    path = adapter_dir / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base.model_id
    if config.get("peft_type") == "LORA":
        config = _without_defaults(config)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (adapter_dir / README).write_text(adapter_readme(base, base_copied=base_copied), encoding="utf-8")


def write_merged_readme(folder: Path, base: BaseModel) -> None:
    (folder / README).write_text(merged_readme(base), encoding="utf-8")


_PROMPTS = """\
## Prompts

tuneforge feeds a model `<bos>` followed by the prompt's tokens when its tokenizer starts encodings
with `<bos>` (`tokenizer(prompt)` does the same). It renders a chat with the model's chat template
when the tokenizer has one (`tokenizer.apply_chat_template(messages, add_generation_prompt=True)`),
else as `User: {text}\\nAssistant:`, after `System: {text}\\n` when there is a system prompt.
Greedy decoding up to `<eos>` (or the template's end-of-turn token) then gives what the tuneforge
server answers for the same prompt at temperature 0 (`InvokeModel` continues the prompt as given;
`Converse` renders the chat first, and gives a model fine-tuned on prompt/completion records a
single-turn chat as its bare prompt).

```python
inputs = tokenizer("User: my invoice is wrong\\nAssistant:", return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""


def _where_base(base: BaseModel) -> str:
    if base.builtin:
        return (
            f"`{base.model_id}` is a tuneforge built-in model: `tuneforge models export MODEL DEST --adapter "
            f"--include-base` copies it into `DEST/{BASE_SUBFOLDER}/`, and on the machine that trained this "
            "adapter it is under `<data dir>/models/builtin/`."
        )
    return f"`{base.model_id}` is the id the base model was registered under (`tuneforge models register`)."


def _without_defaults(config: dict[str, Any]) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for spec in dataclasses.fields(LoraConfig):
        if spec.default is not dataclasses.MISSING:
            defaults[spec.name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            defaults[spec.name] = spec.default_factory()
    defaults["peft_version"] = config.get("peft_version")  # which peft wrote it, not how it runs
    return {
        key: value
        for key, value in config.items()
        if key in LORA_KEYS_ALWAYS_KEPT or key not in defaults or value != defaults[key]
    }


def adapter_readme(base: BaseModel, *, base_copied: bool) -> str:
    """What an adapter folder's README says: the base to load and how (transformers + peft)."""
    base_path = f"path/to/this/folder/{BASE_SUBFOLDER}" if base_copied else "path/to/the/base/model"
    where = (
        f"A copy of the base model is in `{BASE_SUBFOLDER}/` next to these files." if base_copied else _where_base(base)
    )
    return f"""\
# LoRA adapter for `{base.model_id}`

A LoRA adapter trained by tuneforge. It loads on top of the base model **`{base.model_id}`**, which
`adapter_config.json` names by that id (`base_model_name_or_path`). That is a tuneforge catalog id,
not a Hugging Face Hub id: load the base from a local folder and pass it to peft explicitly.
{where}

```python
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_path}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
model = model.merge_and_unload()  # optional: tuneforge serves adapters merged into the base weights
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```

The tokenizer is the base model's (`tokenizer.json`, class `PreTrainedTokenizerFast` where
transformers 5 would write `TokenizersBackend`), and `adapter_config.json` leaves out settings at
peft's defaults, so the folder loads with transformers 4.40 and peft 0.11 as well as newer releases.

{_PROMPTS}"""


def merged_readme(base: BaseModel) -> str:
    """What a merged folder's README says: full weights, transformers alone loads them."""
    return f"""\
# Fine-tuned `{base.model_id}` (full weights)

A model customized by tuneforge from the base model `{base.model_id}`, with every change folded into
the weights: transformers alone loads it, no base model or peft needed.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```

The tokenizer is `tokenizer.json` with class `PreTrainedTokenizerFast` (transformers 5 would write
`TokenizersBackend`), so it loads with transformers 4.40 and later.

{_PROMPTS}"""


class ExportError(ValueError):
    """An export the user asked for that cannot be done as asked; the message says what to change."""


def export_model(
    model_dir: Path,
    manifest: dict[str, Any],
    base: BaseModel,
    base_dir: Path,
    dest: Path,
    *,
    form: ExportForm,
    include_base: bool = False,
    force: bool = False,
    protected: Sequence[Path] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> Export:
    """Write custom model ``model_dir`` (with its tuneforge ``manifest``) to ``dest`` as a plain HF folder.

    ``merged`` copies the job's merged weights when it saved them, else merges the adapter into
    ``base_dir`` here (the same fp32 merge an engine does at load, so the export answers as the
    server does). ``adapter`` copies the adapter, and ``include_base`` copies ``base_dir`` into
    ``base/``. Folders saved before tuneforge made them portable are made portable on the way out.

    ``dest`` must be absent or empty unless ``force``; it may never hold (or be inside) the model's
    own folders or a ``protected`` one, since replacing it would delete them. The export is written
    into a sibling staging folder and renamed into place, so a failure never leaves half an export.
    """
    if form == "adapter" and not manifest.get("adapter_dir"):
        raise ExportError("this custom model was fully trained, so it has no adapter: export it --merged")
    if include_base and form != "adapter":
        raise ExportError("--include-base goes with --adapter: a merged export needs no base model")
    dest = dest.expanduser().absolute()
    target = dest.resolve()
    for keep in (model_dir.resolve(), base_dir.resolve()):
        if keep == target or keep in target.parents or target in keep.parents:
            raise ExportError(f"{dest} overlaps the model folder {keep}: choose a folder outside it")
    for keep in (path.resolve() for path in protected):
        if keep == target or target in keep.parents:
            raise ExportError(f"{dest} holds {keep}, which replacing it would delete: choose another folder")
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"{dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise ExportError(f"{dest} is not empty: choose an empty folder, or pass --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.export-", dir=dest.parent))
    try:
        _write(model_dir, manifest, base, base_dir, staging, form, include_base, progress)
        files = sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file())
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Export(form=form, files=files)


def _write(
    model_dir: Path,
    manifest: dict[str, Any],
    base: BaseModel,
    base_dir: Path,
    staging: Path,
    form: ExportForm,
    include_base: bool,
    progress: Callable[[str], None],
) -> None:
    if form == "adapter":
        progress("copying the adapter")
        shutil.copytree(model_dir / manifest["adapter_dir"], staging, dirs_exist_ok=True)
        make_adapter_portable(staging, base, base_copied=include_base)
        if include_base:
            progress("copying the base model")
            shutil.copytree(base_dir, staging / BASE_SUBFOLDER)
            make_tokenizer_config_portable(staging / BASE_SUBFOLDER)
    elif manifest.get("merged_dir"):
        progress("copying the merged model")
        shutil.copytree(model_dir / manifest["merged_dir"], staging, dirs_exist_ok=True)
        write_merged_readme(staging, base)
    else:
        _merge(model_dir / manifest["adapter_dir"], base_dir, staging, progress)
        write_merged_readme(staging, base)
    make_tokenizer_config_portable(staging)


def _merge(adapter_dir: Path, base_dir: Path, staging: Path, progress: Callable[[str], None]) -> None:
    # Imported here: model.folders imports this module to make the folders it saves portable.
    from tuneforge.model.loading import quiet_peft

    progress("loading the base model")
    base_model, _ = load_model_and_tokenizer(base_dir)
    progress("merging the adapter into the base weights")
    with quiet_peft():
        merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    progress("writing safetensors")
    merged.save_pretrained(str(staging), safe_serialization=True)
    for path in adapter_dir.iterdir():
        if path.is_file() and path.name not in ADAPTER_ONLY_FILES:
            shutil.copy2(path, staging / path.name)
