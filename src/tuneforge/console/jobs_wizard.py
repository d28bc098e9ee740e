"""The job wizard's state and the work behind its steps: pairing, pre-flight, upload, the request.

The wizard keeps no server-side state: every step is a form that carries the answers so far as
hidden fields (``WizardState``), so a step can be reloaded, bookmarked or gone back to, and nothing
is lost when the API refuses the final request. What each step checks is what the API checks
(the job service's pairing rule, ``data.preflight``, the hyperparameter specs), never a copy.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode

from tokenizers import Tokenizer

from tuneforge.catalog.folders import check_hf_folder
from tuneforge.catalog.hyperparameters import HyperParameterSpec
from tuneforge.catalog.models import CONTINUED_PRE_TRAINING, DISTILLATION, FINE_TUNING, FoundationModel
from tuneforge.data.preflight import preflight_report
from tuneforge.errors import ServiceError, ValidationException
from tuneforge.services import Services
from tuneforge.settings import child_environment

STEPS = ("approach", "models", "data", "validate", "hyperparameters", "output", "review")
STEP_TITLES = {
    "approach": "Approach",
    "models": "Models",
    "data": "Data",
    "validate": "Validation",
    "hyperparameters": "Hyperparameters",
    "output": "Output",
    "review": "Review",
}

APPROACHES = (
    (
        FINE_TUNING,
        "Fine-tuning",
        "labeled examples: prompt → wanted answer",
        "you can show the behaviour you want with a few hundred examples",
    ),
    (
        CONTINUED_PRE_TRAINING,
        "Continued pre-training",
        "unlabeled text from your domain",
        "the model lacks knowledge that is stable and broad, and you have much more text than labels",
    ),
    (
        DISTILLATION,
        "Distillation",
        "prompts (answers optional) and a large teacher",
        "the teacher does the job but is too slow or costly to serve",
    ),
)
"""(type, name, you bring, choose it when), as docs/customization-approaches.md words them."""

UPLOAD_BUCKET = "tuneforge"
UPLOAD_PREFIX = "console-uploads"
UPLOAD_CHUNK = 1 << 20
PREVIEW_LINES = 5
PREVIEW_CHARS = 400
PREFLIGHT_TIMEOUT_S = 600
HP_PREFIX = "hp_"


class UploadTooLarge(ValidationException):
    pass


@dataclass(frozen=True)
class WizardState:
    """The answers so far, as the strings the forms carry."""

    values: Mapping[str, str]

    @classmethod
    def of(cls, items: Mapping[str, Any]) -> WizardState:
        keep = {k: v for k, v in items.items() if isinstance(v, str) and k not in ("step", "csrf_token")}
        return cls(keep)

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    @property
    def customization_type(self) -> str:
        chosen = self.get("type")
        return chosen if chosen in (t for t, *_ in APPROACHES) else ""

    def hyperparameters(self) -> dict[str, str]:
        return {k[len(HP_PREFIX) :]: v for k, v in self.values.items() if k.startswith(HP_PREFIX)}

    def hidden(self, *editing: str) -> list[tuple[str, str]]:
        """The hidden fields a step's form carries: every answer but those the step itself asks."""
        return sorted(
            (k, v)
            for k, v in self.values.items()
            if k not in editing and not (HP_PREFIX in editing and k.startswith(HP_PREFIX))
        )

    def query(self, **changes: str) -> str:
        return urlencode({**self.values, **changes})


@dataclass(frozen=True)
class TeacherChoice:
    model: FoundationModel
    arn: str
    refusal: str | None


def students(services: Services, customization_type: str) -> list[FoundationModel]:
    """The models that take this customization type (for distillation: the students)."""
    return [m for m in services.catalog.all() if customization_type in m.customizations]


def teacher_choices(services: Services, student: FoundationModel) -> list[TeacherChoice]:
    """Every catalog model as a candidate teacher, with the API's own reason when it cannot teach."""
    choices = []
    for model in services.catalog.all():
        if model.model_id == student.model_id:
            continue
        arn = services.catalog.arn(model)
        choices.append(TeacherChoice(model, arn, services.jobs.teaching_refusal(model, student, arn)))
    return sorted(choices, key=lambda c: (c.refusal is not None, c.model.model_id))


def hyperparameter_fields(specs: tuple[HyperParameterSpec, ...], state: WizardState) -> list[dict[str, Any]]:
    """One form field per spec: HTML type, bounds and step, so the page checks what the spec says."""
    fields = []
    for spec in specs:
        value = state.get(HP_PREFIX + spec.name, _text(spec.default))
        field: dict[str, Any] = {"spec": spec, "name": HP_PREFIX + spec.name, "id": f"hp-{spec.name}", "value": value}
        if spec.kind in ("int", "float"):
            field.update(
                input="number",
                step="1" if spec.kind == "int" else "any",
                min=_text(spec.minimum) if spec.minimum is not None else None,
                max=_text(spec.maximum) if spec.maximum is not None else None,
            )
        elif spec.kind == "bool":
            field.update(input="select", options=("true", "false"))
        elif spec.kind == "choice":
            field.update(input="select", options=spec.choices)
        else:
            field.update(input="text")
        fields.append(field)
    return fields


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def changed_hyperparameters(specs: tuple[HyperParameterSpec, ...], state: WizardState) -> dict[str, str]:
    """The values the user changed from the spec's defaults: what the request sends."""
    given = state.hyperparameters()
    out = {}
    for spec in specs:
        raw = given.get(spec.name)
        if raw is not None and raw.strip() != "" and raw.strip() != _text(spec.default):
            out[spec.name] = raw.strip()
    return out


def request_body(services: Services, state: WizardState, base: FoundationModel) -> dict[str, Any]:
    """The exact ``CreateModelCustomizationJob`` request the review page shows and Create sends."""
    ctype = state.customization_type
    body: dict[str, Any] = {
        "jobName": state.get("job_name"),
        "customModelName": state.get("model_name"),
        "roleArn": state.get("role_arn") or default_role(services),
        "baseModelIdentifier": base.model_id,
        "customizationType": ctype,
        "trainingDataConfig": {"s3Uri": state.get("training_uri")},
        "outputDataConfig": {"s3Uri": state.get("output_uri")},
    }
    hyper = changed_hyperparameters(base.hyperparameter_specs(ctype), state)
    if hyper:
        body["hyperParameters"] = hyper
    if ctype == DISTILLATION:
        teacher: dict[str, Any] = {"teacherModelIdentifier": state.get("teacher")}
        if state.get("max_response").strip():
            try:
                teacher["maxResponseLengthForInference"] = int(state.get("max_response"))
            except ValueError:
                teacher["maxResponseLengthForInference"] = state.get("max_response")
        body["customizationConfig"] = {"distillationConfig": {"teacherModelConfig": teacher}}
    if state.get("tag_key"):
        body["jobTags"] = [{"key": state.get("tag_key"), "value": state.get("tag_value")}]
    return body


def default_role(services: Services) -> str:
    return f"arn:aws:iam::{services.arns.account_id}:role/tuneforge"


def boto3_code(body: Mapping[str, Any]) -> str:
    arguments = ",\n".join(
        f"    {key}={json.dumps(value, indent=4)}".replace("\n", "\n    ") for key, value in body.items()
    )
    return (
        "import boto3\n\n"
        'bedrock = boto3.client("bedrock", endpoint_url="http://127.0.0.1:8000", region_name="us-east-1")\n'
        f"response = bedrock.create_model_customization_job(\n{arguments},\n)\n"
        'print(response["jobArn"])\n'
    )


def cli_code(body: Mapping[str, Any]) -> str:
    """``tuneforge jobs create`` with the flags it has (cli/main.py); it has none for a teacher or tags."""
    parts = [
        "tuneforge jobs create",
        f"--name {_shell(body['jobName'])}",
        f"--model-name {_shell(body['customModelName'])}",
        f"--base-model {_shell(body['baseModelIdentifier'])}",
        f"--type {_shell(body['customizationType'])}",
        f"--training {_shell(body['trainingDataConfig']['s3Uri'])}",
        f"--output {_shell(body['outputDataConfig']['s3Uri'])}",
        f"--role-arn {_shell(body['roleArn'])}",
        *(f"--hp {_shell(f'{k}={v}')}" for k, v in body.get("hyperParameters", {}).items()),
    ]
    code = " \\\n  ".join(parts) + "\n"
    missing = [member for member in ("customizationConfig", "jobTags") if member in body]
    if missing:
        code = f"# The CLI has no flags for {' and '.join(missing)}: use the boto3 code for this request.\n" + code
    return code


def _shell(value: Any) -> str:
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./:=,+@%-]+", text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


# -- data ------------------------------------------------------------------------------------------


def upload_uri(filename: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename or "data.jsonl").name).strip(".-") or "data.jsonl"
    return f"s3://{UPLOAD_BUCKET}/{UPLOAD_PREFIX}/{uuid.uuid4().hex[:12]}/{stem}"


def store_upload(services: Services, source: BinaryIO, filename: str) -> str:
    """Copy an uploaded file to the object store in chunks, refusing it past the training file cap.

    The cap is ``TUNEFORGE_MAX_TRAINING_FILE_BYTES``, the largest training file a job accepts, so
    nothing the API would refuse is kept; a file over it is deleted as soon as it crosses the cap.
    """
    limit = services.settings.max_training_file_bytes
    uri = upload_uri(filename)
    written = 0
    with services.store.open_write(uri) as out:
        while chunk := source.read(UPLOAD_CHUNK):
            written += len(chunk)
            if written > limit:
                out.abort()
                raise UploadTooLarge(too_large_message(limit))
            out.write(chunk)
    return uri


def too_large_message(limit: int) -> str:
    return (
        f"The file is larger than {limit:,} bytes, the most a training file may have "
        "(TUNEFORGE_MAX_TRAINING_FILE_BYTES): split it or raise the setting"
    )


def server_file(services: Services, uri: str) -> bool:
    """A file of the server's own (signing keys, database, logs, weights): in the data dir, not an object.

    The API accepts any absolute path under the data dir as training data, so the wizard validates
    such a file like any other; but it never shows its lines, or a signed-in user could read the
    console's signing key (and forge another key's session) or the database.
    """
    if not services.store.is_local_file(uri):
        return False
    data_dir, objects = services.settings.data_dir.resolve(), services.settings.objects_dir.resolve()
    resolved = Path(uri).resolve()
    inside = resolved == data_dir or data_dir in resolved.parents
    return inside and objects not in resolved.parents


def preview(services: Services, uri: str) -> list[tuple[int, str]] | None:
    """The first lines of a data file, each cut short, for the validation page; None for a server file."""
    lines: list[tuple[int, str]] = []
    services.store.check(uri)
    if server_file(services, uri):
        return None
    with services.store.open_read(uri) as handle:
        for number in range(1, PREVIEW_LINES + 1):
            raw = handle.readline(PREVIEW_CHARS * 4)
            if not raw:
                break
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append((number, text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"))
            if not raw.endswith(b"\n"):
                handle.readline()
    return lines


def builtin_folder(services: Services, model: FoundationModel) -> Path:
    return services.settings.models_dir / "builtin" / model.source.split(":", 1)[1]


def model_folder(services: Services, model: FoundationModel) -> Path | None:
    """The model's local folder when it is complete here, else None (a built-in not yet created)."""
    folder = builtin_folder(services, model) if model.builtin else services.catalog.local_folder(model)
    if check_hf_folder(folder) is not None or not (folder / "tokenizer.json").is_file():
        return None
    return folder


def tokenizers_counter(folder: Path) -> Callable[[str], int]:
    """Count tokens with the ``tokenizers`` library: transformers would import torch into the API process."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


def run_preflight(
    services: Services, uri: str, model: FoundationModel, ctype: str, hyper: dict[str, str]
) -> dict[str, Any]:
    """Pre-flight validation as ``tuneforge data validate`` runs it: report, estimate, memory plan.

    In the API process when the model's folder is here (its tokenizer read by ``tokenizers``);
    otherwise, for a built-in model no job has created yet, in a ``tuneforge data validate``
    child process, which may import torch to create it.
    """
    if not services.store.exists(uri):
        raise ValidationException(f"The training data {uri} does not exist")
    cache = services.settings.data_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="preflight-", dir=cache) as staging:
        path = Path(staging) / (uri.rsplit("/", 1)[-1] or "data.jsonl")
        services.store.download_file(uri, path)
        return _preflight_staged(services, path, model, ctype, hyper)


def _preflight_staged(
    services: Services, path: Path, model: FoundationModel, ctype: str, hyper: dict[str, str]
) -> dict[str, Any]:
    """:func:`run_preflight` on the data's copy in a staging folder of its own."""
    folder = model_folder(services, model)
    if folder is not None:
        return preflight_report(services, path, model.model_id, ctype, hyper, lambda _: folder, tokenizers_counter)
    command = [
        sys.executable,
        "-c",
        "from tuneforge.cli.main import app; app()",
        "data",
        "validate",
        str(path),
        "--model",
        model.model_id,
        "--type",
        ctype,
        *[arg for name, value in hyper.items() for arg in ("--hp", f"{name}={value}")],
        "--json",
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=child_environment(services.settings),
        timeout=PREFLIGHT_TIMEOUT_S,
        check=False,
    )
    # Exit status 1 with a JSON report on stdout is invalid data; without one, the command failed.
    if done.stdout.lstrip().startswith("{"):
        report: dict[str, Any] = json.loads(done.stdout)
        return report
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    message = lines[-1].removeprefix("error:").strip() if lines else "pre-flight validation failed"
    raise ValidationException(message)


def resolve_model(services: Services, identifier: str) -> FoundationModel | None:
    if not identifier:
        return None
    try:
        return services.catalog.get(identifier)
    except ServiceError:
        return None
