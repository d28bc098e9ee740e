"""What CreateModelImportJob checks before it accepts a model, without torch and without loading weights.

An import is refused at create time, with a reason that names the problem, whenever the problem can
be seen from files' headers: the architecture (an allowlist of families tuneforge trains and serves),
the tokenizer files, the dtype, safetensors files that are empty or cut short, a GGUF file that does
not parse or holds a tensor type the loader cannot dequantize, and a model whose float32 weights do
not fit this machine's memory. Everything here reads headers only: a safetensors file is an 8-byte
length, a JSON header and the tensor data the header points into, so a truncated file shows as
offsets past its end; a GGUF header is read with the ``gguf`` package (numpy only), in a child process
under memory and CPU limits (:mod:`tuneforge.catalog.gguf_inspect`). A folder must hold its files
itself: symbolic links, and index entries naming files outside it, are refused.

What is found (architecture, parameter count, context length, whether a chat template exists) is
returned as :class:`ImportFacts` and kept with the job.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gguf import GGUFReader

SUPPORTED_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "Llama"),
    "mistral": ("MistralForCausalLM", "Mistral"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3"),
    "gemma": ("GemmaForCausalLM", "Gemma"),
    "gemma2": ("Gemma2ForCausalLM", "Gemma 2"),
    "gemma3_text": ("Gemma3ForCausalLM", "Gemma 3"),
    "phi3": ("Phi3ForCausalLM", "Phi-3"),
    "gpt2": ("GPT2LMHeadModel", "GPT-2"),
}
"""``model_type`` -> (the transformers class its ``architectures`` must name, the family's name).
These are the families whose models tuneforge's training (LoRA targets), serving and GGUF conversion
handle; anything else is refused by name rather than failing inside a worker later."""

GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma"}
GGUF_ARCHITECTURES |= {"gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3", "gpt2": "gpt2"}
"""GGUF ``general.architecture`` -> the ``model_type`` transformers' GGUF loader turns it into."""

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
MAX_SAFETENSORS_HEADER = 100 << 20
"""safetensors' own limit on the JSON header; a larger length field means a corrupt file."""
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1}
SAFETENSORS_DTYPE_BYTES |= {"U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "C64": 8}
SAFETENSORS_DTYPE_BYTES |= {"F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
GIB = 1 << 30
GGUF_INSPECT_MEMORY_BYTES = 2 * GIB
"""Address space the GGUF inspector may use beyond the file itself (which it maps whole)."""
GGUF_INSPECT_CPU_SECONDS = 60
GGUF_INSPECT_TIMEOUT_SECONDS = 120


class ImportCheckError(ValueError):
    """A model that cannot be imported; the message says what is wrong, naming the file."""


@dataclass(frozen=True)
class ImportFacts:
    kind: str
    """'folder' (a Hugging Face folder) or 'gguf' (one GGUF file, converted on import)."""
    architecture: str
    """The ``model_type``, e.g. 'llama' (Bedrock's ``modelArchitecture``)."""
    parameter_count: int
    context_length: int
    instruct_supported: bool
    """A chat template is present. Missing is allowed: conversations then use the plain template."""
    dtype: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_memory_bytes() -> int:
    """What this machine can still give a model: ``MemAvailable``, else physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def inspect_source(path: Path, memory_limit_bytes: int | None = None) -> ImportFacts:
    """The facts of the model at ``path`` (a folder, or one ``.gguf`` file), or :class:`ImportCheckError`.

    A folder without ``config.json`` that holds exactly one ``.gguf`` file is that file, so an
    ``s3://`` prefix with a GGUF in it works like the file's own URI.
    """
    path = resolve_source(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ImportCheckError(
                f"{path.name} is a file but not a GGUF file (.gguf); "
                "import a Hugging Face model folder or one .gguf file"
            )
        facts = inspect_gguf_isolated(path)
    elif path.is_dir():
        facts = inspect_folder(path)
    else:
        raise ImportCheckError("the source does not exist")
    check_memory(facts, available_memory_bytes() if memory_limit_bytes is None else memory_limit_bytes)
    return facts


def resolve_source(path: Path) -> Path:
    """``path`` itself, or the one ``.gguf`` file in a folder that has no ``config.json``.

    A chosen ``.gguf`` that is a symbolic link is refused: the object store confines the URI's own
    path to its roots, and a link inside it would lead the import to a file outside them.
    """
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            if ggufs[0].is_symlink():
                raise ImportCheckError(f"{ggufs[0].name} is a symbolic link; import the file itself")
            return ggufs[0]
    return path


def check_confined(root: Path) -> None:
    """Refuse a folder holding a symbolic link, or anything whose resolved path leaves the folder.

    The object store checks only the source URI's own path; what is inside the folder is read
    (tokenizer files, weights) and copied into the data directory, so a link to ``/etc/...`` in it
    would read or copy a file from outside the confined roots.
    """
    top = root.resolve()
    for directory, subdirs, files in os.walk(root, followlinks=False):
        for name in sorted(subdirs + files):
            entry = Path(directory) / name
            relative = entry.relative_to(root)
            if entry.is_symlink():
                raise ImportCheckError(
                    f"{relative} is a symbolic link; the folder must hold its files themselves "
                    "(a Hugging Face cache snapshot is links: copy it with `cp -rL` first)"
                )
            if not entry.resolve().is_relative_to(top):
                raise ImportCheckError(f"{relative} resolves outside the model folder")


def check_memory(facts: ImportFacts, limit_bytes: int) -> None:
    """Refuse a model whose float32 weights alone exceed ``limit_bytes``: training and serving run
    float32 on CPU, and a model that cannot be loaded would only fail later, in a worker."""
    need = facts.parameter_count * 4
    if need > limit_bytes:
        raise ImportCheckError(
            f"the model is too large for this machine: {facts.parameter_count:,} parameters need "
            f"{need / GIB:.2f} GiB as float32 weights, and {limit_bytes / GIB:.2f} GiB of memory is available "
            "(TUNEFORGE_IMPORT_MEMORY_LIMIT_BYTES, default this machine's available memory)"
        )


# -- Hugging Face folders ---------------------------------------------------------------------------


def inspect_folder(folder: Path) -> ImportFacts:
    check_confined(folder)
    config = _read_config(folder)
    model_type = str(config.get("model_type", ""))
    architectures = [str(a) for a in config.get("architectures") or []]
    _check_architecture(model_type, architectures)
    if "quantization_config" in config:
        method = (config["quantization_config"] or {}).get("quant_method", "unknown")
        raise ImportCheckError(
            f"config.json has a quantization_config ({method}): quantized checkpoints are not supported; "
            "import the float32, float16 or bfloat16 weights"
        )
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    if dtype not in SUPPORTED_DTYPES:
        raise ImportCheckError(
            f"config.json torch_dtype {dtype} is not supported; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ImportCheckError(
            "no tokenizer files: the folder needs tokenizer.json, tokenizer.model or vocab.json (with merges.txt)"
        )
    vocab_only = (folder / "vocab.json").is_file() and not (folder / "tokenizer.json").is_file()
    if vocab_only and not (folder / "merges.txt").is_file():
        raise ImportCheckError("no tokenizer files: vocab.json needs merges.txt beside it")
    parameters = sum(_safetensors_parameters(path) for path in _weight_files(folder))
    raw_context = config.get("max_position_embeddings") or config.get("n_positions") or 2048
    if not isinstance(raw_context, int) or raw_context < 1:
        raise ImportCheckError(f"config.json max_position_embeddings must be a positive integer, got {raw_context!r}")
    return ImportFacts(
        kind="folder",
        architecture=model_type,
        parameter_count=parameters,
        context_length=raw_context,
        instruct_supported=has_chat_template(folder),
        dtype=dtype,
    )


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ImportCheckError("no config.json: a Hugging Face model folder needs one")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImportCheckError(f"config.json does not parse: {exc}") from None
    if not isinstance(config, dict):
        raise ImportCheckError("config.json is not a JSON object")
    return config


def _supported_list() -> str:
    return ", ".join(f"{name} ({model_type})" for model_type, (_, name) in SUPPORTED_ARCHITECTURES.items())


def _check_architecture(model_type: str, architectures: list[str]) -> None:
    expected = SUPPORTED_ARCHITECTURES.get(model_type)
    if expected is None or expected[0] not in architectures:
        raise ImportCheckError(
            f"config.json architectures [{', '.join(architectures)}] (model_type {model_type or 'missing'}) "
            f"is not a supported architecture; supported: {_supported_list()}"
        )


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError) as exc:
            raise ImportCheckError(f"model.safetensors.index.json does not parse: {exc}") from None
        if not isinstance(weight_map, dict):
            raise ImportCheckError("model.safetensors.index.json weight_map is not a JSON object")
        names = sorted({str(name) for name in weight_map.values()})
        for name in names:
            if not _plain_name_inside(folder, name):
                raise ImportCheckError(
                    f"model.safetensors.index.json names {name!r}, which is not a file name inside the model folder"
                )
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise ImportCheckError(f"model.safetensors.index.json names missing files: {', '.join(missing)}")
        return [folder / name for name in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ImportCheckError("no weights: the folder needs *.safetensors files (pytorch_model.bin is not imported)")
    return files


def _plain_name_inside(folder: Path, name: str) -> bool:
    """A relative name without ``..`` whose resolved path stays inside ``folder``."""
    relative = Path(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        return False
    return (folder / relative).resolve().is_relative_to(folder.resolve())


def _safetensors_parameters(path: Path) -> int:
    """The number of parameters in one safetensors file, after checking it is complete.

    The format: an unsigned 64-bit little-endian header length, a JSON header mapping each tensor to
    its dtype, shape and ``data_offsets`` (relative to the end of the header), then the data. A file
    whose last tensor ends past the end of the file was cut short.
    """
    size = path.stat().st_size
    if size == 0:
        raise ImportCheckError(f"{path.name} is empty (0 bytes)")
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ImportCheckError(f"{path.name} is truncated: {size} bytes, shorter than its 8-byte header length")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > MAX_SAFETENSORS_HEADER or 8 + header_length > size:
            raise ImportCheckError(
                f"{path.name} is truncated or not a safetensors file: its header length field points past "
                f"the end of the file ({size} bytes)"
            )
        try:
            header = json.loads(handle.read(header_length))
        except ValueError as exc:
            raise ImportCheckError(f"{path.name} has an unreadable safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise ImportCheckError(f"{path.name} has an unreadable safetensors header: not a JSON object")
    data_size = size - 8 - header_length
    parameters = 0
    needed = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (_whole(x) for x in entry["data_offsets"])
            dims = [_whole(d) for d in entry["shape"]]
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ImportCheckError(f"{path.name}: tensor {name!r} has a malformed header entry") from None
        if begin > end:
            raise ImportCheckError(
                f"{path.name}: tensor {name!r} has a malformed header entry (data ends before it begins)"
            )
        width = SAFETENSORS_DTYPE_BYTES.get(dtype)
        if width is None:
            raise ImportCheckError(
                f"{path.name}: tensor {name!r} has dtype {dtype}, whose byte width the import does not know"
            )
        count = math.prod(dims)
        if end - begin != count * width:
            raise ImportCheckError(
                f"{path.name}: tensor {name!r} spans {end - begin} bytes but its shape and dtype need {count * width}"
            )
        parameters += count
        needed = max(needed, end)
    if needed > data_size:
        raise ImportCheckError(
            f"{path.name} is truncated: its tensors need {needed} bytes of data, the file holds {data_size}"
        )
    return parameters


def _whole(value: object) -> int:
    """A header number: a JSON integer, not negative. Anything else (a negative offset or dimension, a
    float, a string) is malformed; accepting it could shrink the parameter count below the truth and
    let a large model past :func:`check_memory`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(value)
    return value


# -- GGUF files -------------------------------------------------------------------------------------


def inspect_gguf_isolated(path: Path) -> ImportFacts:
    """:func:`inspect_gguf` run by :mod:`tuneforge.catalog.gguf_inspect` in a child process with memory
    and CPU limits, so that a crafted header cannot exhaust, crash or stall the API process."""
    size = path.stat().st_size
    if size == 0:
        raise ImportCheckError(f"{path.name} is empty (0 bytes)")
    memory = size + GGUF_INSPECT_MEMORY_BYTES
    command = [sys.executable, "-m", "tuneforge.catalog.gguf_inspect", str(path), str(memory)]
    command.append(str(GGUF_INSPECT_CPU_SECONDS))
    limits = f"{memory / GIB:.1f} GiB of memory, {GGUF_INSPECT_CPU_SECONDS} s of CPU"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    try:
        done = subprocess.run(
            command, capture_output=True, stdin=subprocess.DEVNULL, env=env, timeout=GGUF_INSPECT_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise ImportCheckError(
            f"{path.name} ({size} bytes): reading its GGUF header took over {GGUF_INSPECT_TIMEOUT_SECONDS} s; "
            "it may be corrupt"
        ) from None
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if isinstance(result, dict) and isinstance(result.get("facts"), dict):
        return ImportFacts(**result["facts"])
    if isinstance(result, dict) and "error" in result:
        raise ImportCheckError(str(result["error"]))
    ended = f"was killed by signal {-done.returncode}" if done.returncode < 0 else f"exited {done.returncode}"
    raise ImportCheckError(
        f"{path.name} ({size} bytes) is not a GGUF file that can be read within the inspection's limits "
        f"({limits}): the inspecting process {ended}; it may be corrupt or crafted"
    )


def inspect_gguf(path: Path) -> ImportFacts:
    """Checks a GGUF the way the worker will read it: transformers' GGUF loader dequantizes every
    tensor with the ``gguf`` package's ``dequantize``, so each tensor type is tried on one row here.

    ``gguf`` (and numpy) are imported here, on the first GGUF, not when the API process starts.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, dequantize

    size = path.stat().st_size
    if size == 0:
        raise ImportCheckError(f"{path.name} is empty (0 bytes)")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, struct.error) as exc:
        raise ImportCheckError(
            f"{path.name} ({size} bytes) is not a readable GGUF file; it may be truncated or corrupt: {exc}"
        ) from None
    except RecursionError:
        raise ImportCheckError(
            f"{path.name} ({size} bytes) is not a readable GGUF file: its arrays nest too deeply"
        ) from None
    except MemoryError:
        raise ImportCheckError(
            f"{path.name} ({size} bytes) is not a readable GGUF file within the inspection's memory limit: "
            "its metadata arrays are too large"
        ) from None
    arch = _gguf_string(reader, "general.architecture")
    model_type = GGUF_ARCHITECTURES.get(arch or "")
    if model_type is None:
        raise ImportCheckError(
            f"{path.name}: GGUF architecture {arch or 'missing'} is not a supported architecture; "
            f"supported: {', '.join(sorted(GGUF_ARCHITECTURES))}"
        )
    probed: set[GGMLQuantizationType] = set()
    parameters = 0
    for tensor in reader.tensors:
        parameters += int(tensor.n_elements)
        if tensor.tensor_type in probed:
            continue
        try:
            dequantize(np.asarray(tensor.data[:1]), tensor.tensor_type)
        except NotImplementedError:
            raise ImportCheckError(
                f"{path.name}: tensor {tensor.name!r} has quantization type {tensor.tensor_type.name}, which the "
                "GGUF loader cannot dequantize; re-export the model with a supported type "
                "(e.g. F16, BF16, Q8_0, Q4_K) or as a safetensors folder"
            ) from None
        probed.add(tensor.tensor_type)
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise ImportCheckError(f"{path.name} has no tokenizer (no tokenizer.ggml.tokens in its metadata)")
    context = _gguf_int(reader, f"{arch}.context_length") or 2048
    return ImportFacts(
        kind="gguf",
        architecture=model_type,
        parameter_count=parameters,
        context_length=context,
        instruct_supported="tokenizer.chat_template" in reader.fields,
        dtype="+".join(sorted(t.name for t in probed)),
    )


def _gguf_string(reader: GGUFReader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def _gguf_int(reader: GGUFReader, key: str) -> int | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return int(field.parts[field.data[0]][0])
