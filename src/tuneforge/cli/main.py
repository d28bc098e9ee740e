"""``tuneforge``: serve, demo, models, data, jobs, batch, deployments, throughput, invoke, usage and advise.

``models`` and ``data`` work on the local installation (same settings as the server); ``jobs``,
``batch``, ``deployments``, ``throughput``, ``invoke``, ``usage`` and ``models register`` (an import job)
talk to a running server through boto3, exactly as user code does. Output is for people by default
and JSON with ``--json``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tuneforge.settings import Settings, describe_settings_error

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
models_app = typer.Typer(no_args_is_help=True, help="Foundation models: built-in and registered.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: validate before training; copy to s3://.")
jobs_app = typer.Typer(no_args_is_help=True, help="Customization jobs on a running server.")
throughput_app = typer.Typer(no_args_is_help=True, help="Provisioned throughput: serve a model on a running server.")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(jobs_app, name="jobs")
deployments_app = typer.Typer(
    no_args_is_help=True, help="Custom model deployments: serve a custom model on demand, billed per token."
)
app.add_typer(throughput_app, name="throughput")
app.add_typer(deployments_app, name="deployments")
batch_app = typer.Typer(no_args_is_help=True, help="Batch inference jobs on a running server.")
app.add_typer(batch_app, name="batch")
db_app = typer.Typer(no_args_is_help=True, help="The database's schema: its revision and upgrades.")
app.add_typer(db_app, name="db")
graders_app = typer.Typer(
    no_args_is_help=True, help="Graders for reinforcement fine-tuning: register, list, delete (docs/graders.md)."
)
app.add_typer(graders_app, name="graders")

console = Console()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
EndpointOpt = Annotated[
    str | None, typer.Option("--endpoint-url", help="Server URL; default from TUNEFORGE_HOST/PORT.")
]


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] invalid settings: {describe_settings_error(exc)}", soft_wrap=True)
        raise typer.Exit(2) from None


def _services() -> Any:
    from tuneforge.services import Services

    settings = _settings()
    settings.make_state_private()
    with _database_errors():
        return Services.create(settings)


@contextmanager
def _database_errors() -> Iterator[None]:
    """An unreachable database or a schema of another version: one line and exit 2, no traceback."""
    from tuneforge.db.migrate import SchemaMismatch
    from tuneforge.db.session import DatabaseUnavailable

    try:
        yield
    except (DatabaseUnavailable, SchemaMismatch) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


# -- serve -----------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
) -> None:
    """Run the API server (Bedrock control plane) and its job supervisor."""
    import uvicorn

    from tuneforge.api.app import create_app

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = _settings(**overrides)
    try:
        settings.check_bind_is_safe()
        settings.check_replica_secret()
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    settings.make_state_private()
    with _database_errors():
        api = create_app(settings)
    err.print(f"tuneforge serving on http://{settings.host}:{settings.port} (data in {settings.data_dir})")
    uvicorn.run(api, host=settings.host, port=settings.port, log_level="warning")


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(".tuneforge/demo"),
) -> None:
    """Fine-tune, continue pre-training and distil built-in models on generated data, through boto3, and compare."""
    from tuneforge.demo import run_demo

    raise typer.Exit(run_demo(data_dir, console))


# -- models ----------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List foundation models."""
    services = _services()
    models = services.catalog.all()
    if as_json:
        from tuneforge.api.bedrock.schemas import foundation_model

        _print_json([foundation_model(m, services.arns) for m in models])
        return
    table = Table("model id", "provider", "parameters", "customizations", "source")
    for m in models:
        params = f"{m.parameter_count / 1e6:.1f}M" if m.parameter_count else "?"
        table.add_row(m.model_id, m.provider, params, ", ".join(m.customizations), m.source)
    console.print(table)


@models_app.command("show")
def models_show(model_id: str, as_json: JsonOpt = False) -> None:
    """Show a model, its token limits and its hyperparameter specs."""
    from tuneforge.errors import ServiceError

    services = _services()
    try:
        model = services.catalog.get(model_id)
    except ServiceError as exc:
        raise _fail(exc.message) from None
    specs = {
        ctype: [
            {
                "name": s.name,
                "type": s.kind,
                "default": s.default,
                "range": s.range_text,
                "bedrock": s.bedrock,
                "help": s.help,
            }
            for s in model.hyperparameter_specs(ctype)
        ]
        for ctype in model.customizations
    }
    if as_json:
        _print_json(
            {
                "modelId": model.model_id,
                "modelArn": services.arns.foundation_model(model.model_id),
                "provider": model.provider,
                "family": model.family,
                "parameters": model.parameter_count,
                "limits": vars(model.limits),
                "customizations": list(model.customizations),
                "hyperParameters": specs,
            }
        )
        return
    console.print(f"[bold]{model.model_id}[/bold]  ({model.provider}, family {model.family})")
    console.print(model.description)
    console.print(
        f"tokens: input ≤ {model.limits.max_input_tokens}, output ≤ {model.limits.max_output_tokens}, "
        f"total ≤ {model.limits.max_total_tokens}"
    )
    for ctype, rows in specs.items():
        table = Table("name", "type", "default", "range", "help", title=f"{ctype} hyperparameters")
        for row in rows:
            name = row["name"] + ("" if row["bedrock"] else " *")
            table.add_row(name, row["type"], str(row["default"]), row["range"], row["help"])
        console.print(table)
    console.print("* tuneforge extension (not a Bedrock hyperparameter)")


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Name of the imported model (letters, digits, '-', '_').")],
    source: Annotated[
        str, typer.Argument(help="Local folder or s3:// prefix of a HF-format causal LM, or one .gguf file.")
    ],
    job_name: Annotated[str | None, typer.Option("--job-name", help="Import job name; default from NAME.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the import to finish.")] = True,
    role_arn: Annotated[str, typer.Option("--role-arn")] = "arn:aws:iam::123456789012:role/tuneforge",
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import your own model on a running server (Bedrock's CreateModelImportJob), and wait for it.

    The server checks the model at once (architecture, tokenizer, dtype, weight files, size) and
    refuses it with the reason; a GGUF file is converted to a model folder on the server. The
    imported model is then a base for `jobs create --base-model ARN` and answers `invoke` by its ARN.
    """
    import time

    if not source.startswith("s3://"):
        source = str(Path(source).expanduser().resolve())
    job = job_name or f"import-{re.sub(r'[^a-zA-Z0-9]+', '-', name).strip('-')}-{int(time.time())}"
    client = _client(endpoint_url)
    arn = _call(
        client.create_model_import_job,
        jobName=job,
        importedModelName=name,
        roleArn=role_arn,
        modelDataSource={"s3DataSource": {"s3Uri": source}},
    )["jobArn"]
    details = _call(client.get_model_import_job, jobIdentifier=arn)
    with console.status(f"importing {name} ({job})", spinner="dots") as status:
        while wait and details["status"] == "InProgress":
            time.sleep(1)
            details = _call(client.get_model_import_job, jobIdentifier=arn)
            status.update(f"importing {name} ({job}): {details['status']}")
    if as_json:
        _print_json(details)
    if details["status"] == "Failed":
        raise _fail(str(details.get("failureMessage")))
    if not as_json:
        if details["status"] == "Completed":
            console.print(f"imported {name} ({details['importedModelArn']})")
        else:
            console.print(f"import job {arn} is {details['status']}")


@models_app.command("export")
def models_export(
    model: Annotated[str, typer.Argument(help="Custom model name or ARN.")],
    dest: Annotated[Path, typer.Argument(help="Local folder to write (absent or empty, unless --force).")],
    merged: Annotated[
        bool,
        typer.Option("--merged/--adapter", help="Full weights (default), or the LoRA adapter naming its base."),
    ] = True,
    include_base: Annotated[
        bool, typer.Option("--include-base", help="With --adapter: copy the base model into DEST/base/.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace DEST even when it is not empty.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a custom model as a Hugging Face folder that plain transformers (and peft) load.

    Reads the model from this installation's data directory (the server need not run). Merging
    an adapter-only model loads its base here, so this command imports torch.
    """
    from tuneforge.errors import ServiceError
    from tuneforge.model.folders import base_model_dir
    from tuneforge.storage import StorageError

    dest = dest.expanduser()
    services = _services()
    try:
        custom = services.custom_models.get(model)
        base = services.catalog.get(custom.base_model_id)
        base_dir = base_model_dir(services, base)
    except ServiceError as exc:
        raise _fail(exc.message) from None
    except StorageError as exc:
        raise _fail(f"the base model {custom.base_model_id} is not available: {exc}") from None

    from tuneforge.model.export import BaseModel, ExportError, export_model
    from tuneforge.model.folders import read_manifest

    weights = Path(custom.weights_path)
    manifest = read_manifest(weights)
    if manifest is None:
        raise _fail(f"the weights of {custom.name} are missing from {weights}")
    try:
        with err.status(f"exporting {custom.name}") as status:
            export = export_model(
                weights,
                manifest,
                BaseModel(model_id=base.model_id, builtin=base.builtin),
                base_dir,
                dest,
                form="merged" if merged else "adapter",
                include_base=include_base,
                force=force,
                protected=(services.settings.data_dir,),
                progress=lambda step: status.update(f"exporting {custom.name}: {step}"),
            )
    except (ExportError, OSError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _print_json({"modelArn": custom.arn, "baseModelId": base.model_id, "form": export.form, "files": export.files})
        return
    size = sum((dest / name).stat().st_size for name in export.files)
    console.print(f"exported {custom.name} ({export.form}, base {base.model_id}) to {dest}: ", end="")
    console.print(f"{len(export.files)} files, {size / 1e6:.1f} MB; see {dest / 'README.md'}")


# -- data ------------------------------------------------------------------------------------------


@data_app.command("validate")
def data_validate(
    file: Path,
    model: Annotated[str, typer.Option("--model", help="Base model id.")] = "tuneforge.forge-small-v1:0:512",
    customization_type: Annotated[str, typer.Option("--type")] = "FINE_TUNING",
    hyperparameters: Annotated[
        list[str] | None, typer.Option("--hp", help="NAME=VALUE, repeatable, for the estimate.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a JSONL dataset pre-flight: errors with line and field, counts and an estimate."""
    from tuneforge.data.preflight import preflight_report
    from tuneforge.errors import ServiceError
    from tuneforge.model.folders import base_model_dir
    from tuneforge.model.loading import token_counter

    services = _services()
    raw_hp = dict(item.split("=", 1) for item in hyperparameters or [] if "=" in item)
    try:
        result = preflight_report(
            services,
            file,
            model,
            customization_type,
            raw_hp,
            lambda found: base_model_dir(services, found),
            token_counter,
        )
    except ServiceError as exc:
        raise _fail(exc.message) from None
    if as_json:
        _print_json(result)
    else:
        report = result["report"]
        if report["ok"]:
            console.print(f"[green]OK[/green] {file}: {report['records']} records ({report['format']})")
        else:
            console.print(f"[red]INVALID[/red] {file}:")
            for error in report["errors"]:
                console.print(f"  {error['text']}")
        console.print(
            f"tokens: input {report['input_tokens']}, output {report['output_tokens']}, "
            f"total {report['total_tokens']}, longest record {report['max_record_tokens']}"
        )
        estimate = result.get("estimate")
        if estimate:
            console.print(
                f"estimate: {estimate['tokens_processed']} tokens processed, "
                f"~{estimate['seconds']:.0f} s on this machine, cost ~{estimate['cost']:.4f} "
                f"at {services.settings.price_per_compute_hour}/compute-hour"
            )
            console.print(f"[dim]{estimate['assumptions']}[/dim]")
        planned = result.get("memory")
        if planned:
            for line in planned.get("lines") or [f"memory: [red]{planned['message']}[/red]"]:
                console.print(line)
    if not result["report"]["ok"]:
        raise typer.Exit(1)


@data_app.command("cp")
def data_cp(source: str, destination: str) -> None:
    """Copy a file between a local path and s3:// (the object store: local root or S3), either way."""
    from tuneforge.storage import StorageError

    services = _services()
    try:
        if source.startswith("s3://") and destination.startswith("s3://"):
            services.store.write_bytes(destination, services.store.read_bytes(source))
        elif destination.startswith("s3://"):
            services.store.upload_file(Path(source), destination)
        elif source.startswith("s3://"):
            services.store.download_file(source, Path(destination))
        else:
            raise _fail("one side must be an s3:// URI")
    except (StorageError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"copied {source} -> {destination}")


# -- jobs ------------------------------------------------------------------------------------------


def _client(endpoint_url: str | None, service: str = "bedrock") -> Any:
    from tuneforge.client import bedrock_client

    settings = _settings()
    return bedrock_client(endpoint_url or settings.endpoint_url, settings.region, service)


def _call(fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = fn(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise _fail(f"{error.get('Code')}: {error.get('Message')}") from None
    except BotoCoreError as exc:
        raise _fail(f"cannot reach the server: {exc}") from None
    response.pop("ResponseMetadata", None)
    return response


@jobs_app.command("create")
def jobs_create(
    name: Annotated[str, typer.Option("--name", help="Job name.")],
    model_name: Annotated[str, typer.Option("--model-name", help="Name of the custom model it makes.")],
    base_model: Annotated[str, typer.Option("--base-model")],
    training: Annotated[str, typer.Option("--training", help="s3:// URI of the training JSONL.")],
    output: Annotated[str, typer.Option("--output", help="s3:// URI for outputs.")],
    validation: Annotated[list[str] | None, typer.Option("--validation", help="Repeatable.")] = None,
    customization_type: Annotated[str, typer.Option("--type")] = "FINE_TUNING",
    hyperparameters: Annotated[list[str] | None, typer.Option("--hp", help="NAME=VALUE, repeatable.")] = None,
    role_arn: Annotated[str, typer.Option("--role-arn")] = "arn:aws:iam::123456789012:role/tuneforge",
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a customization job."""
    hp = dict(item.split("=", 1) for item in hyperparameters or [] if "=" in item)
    response = _call(
        _client(endpoint_url).create_model_customization_job,
        jobName=name,
        customModelName=model_name,
        roleArn=role_arn,
        baseModelIdentifier=base_model,
        customizationType=customization_type,
        trainingDataConfig={"s3Uri": training},
        validationDataConfig={"validators": [{"s3Uri": uri} for uri in validation or []]},
        outputDataConfig={"s3Uri": output},
        hyperParameters=hp,
    )
    if as_json:
        _print_json(response)
    else:
        console.print(response["jobArn"])


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option("--status")] = None,
    name_contains: Annotated[str | None, typer.Option("--name-contains")] = None,
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List customization jobs, newest first."""
    client = _client(endpoint_url)
    kwargs: dict[str, Any] = {}
    if status:
        kwargs["statusEquals"] = status
    if name_contains:
        kwargs["nameContains"] = name_contains
    jobs: list[dict[str, Any]] = []
    for page in client.get_paginator("list_model_customization_jobs").paginate(**kwargs):
        jobs.extend(page["modelCustomizationJobSummaries"])
    if as_json:
        _print_json(jobs)
        return
    table = Table("name", "status", "type", "created", "custom model")
    for job in jobs:
        table.add_row(
            job["jobName"],
            job["status"],
            job.get("customizationType", ""),
            str(job["creationTime"])[:19],
            job.get("customModelName", ""),
        )
    console.print(table)


@jobs_app.command("get")
def jobs_get(job: str, endpoint_url: EndpointOpt = None, as_json: JsonOpt = False) -> None:
    """Show one job."""
    response = _call(_client(endpoint_url).get_model_customization_job, jobIdentifier=job)
    if as_json:
        _print_json(response)
        return
    console.print(f"[bold]{response['jobName']}[/bold] {response['status']}  {response['jobArn']}")
    for stage, detail in (response.get("statusDetails") or {}).items():
        console.print(f"  {stage}: {detail.get('status')}")
    if response.get("failureMessage"):
        console.print(f"[red]{response['failureMessage']}[/red]")
    if response.get("trainingMetrics"):
        console.print(f"  training loss {response['trainingMetrics']['trainingLoss']:.4f}")
    for i, metric in enumerate(response.get("validationMetrics") or []):
        console.print(f"  validation loss [{i}] {metric['validationLoss']:.4f}")
    if response.get("outputModelArn"):
        console.print(f"  custom model {response['outputModelArn']}")


@jobs_app.command("stop")
def jobs_stop(job: str, endpoint_url: EndpointOpt = None) -> None:
    """Stop a running job."""
    _call(_client(endpoint_url).stop_model_customization_job, jobIdentifier=job)
    console.print(f"stopping {job}")


@jobs_app.command("wait")
def jobs_wait(
    job: str,
    endpoint_url: EndpointOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 3600.0,
    as_json: JsonOpt = False,
) -> None:
    """Wait for a job to finish, with a live progress bar showing the loss."""
    from tuneforge.progress import wait_for_job

    settings = _settings()
    final = wait_for_job(
        _client(endpoint_url), endpoint_url or settings.endpoint_url, job, console, timeout, quiet=as_json
    )
    if as_json:
        _print_json(final)
    elif final["status"] != "Completed":
        console.print(f"[red]{final['status']}[/red] {final.get('failureMessage', '')}")
    if final["status"] != "Completed":
        raise typer.Exit(1)


# -- batch inference -------------------------------------------------------------------------------


@batch_app.command("create")
def batch_create(
    name: Annotated[str, typer.Option("--name", help="Job name.")],
    model: Annotated[str, typer.Option("--model", help="Foundation, imported or custom model id or ARN.")],
    input_uri: Annotated[str, typer.Option("--input", help="s3:// URI of a JSONL file or a prefix of them.")],
    output: Annotated[str, typer.Option("--output", help="s3:// URI for the output records.")],
    converse: Annotated[bool, typer.Option("--converse", help="Records hold Converse bodies.")] = False,
    role_arn: Annotated[str, typer.Option("--role-arn")] = "arn:aws:iam::123456789012:role/tuneforge",
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a batch inference job: every record of the input answered by the model."""
    response = _call(
        _client(endpoint_url).create_model_invocation_job,
        jobName=name,
        roleArn=role_arn,
        modelId=model,
        modelInvocationType="Converse" if converse else "InvokeModel",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": output}},
    )
    if as_json:
        _print_json(response)
    else:
        console.print(response["jobArn"])


@batch_app.command("list")
def batch_list(
    status: Annotated[str | None, typer.Option("--status")] = None,
    name_contains: Annotated[str | None, typer.Option("--name-contains")] = None,
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List batch inference jobs, newest first."""
    kwargs: dict[str, Any] = {}
    if status:
        kwargs["statusEquals"] = status
    if name_contains:
        kwargs["nameContains"] = name_contains
    jobs: list[dict[str, Any]] = []
    for page in _client(endpoint_url).get_paginator("list_model_invocation_jobs").paginate(**kwargs):
        jobs.extend(page["invocationJobSummaries"])
    if as_json:
        _print_json(jobs)
        return
    table = Table("name", "status", "records done", "errors", "submitted", "model")
    for job in jobs:
        done = f"{job.get('processedRecordCount', 0)}/{job.get('totalRecordCount', '?')}"
        table.add_row(
            job["jobName"],
            job["status"],
            done,
            str(job.get("errorRecordCount", 0)),
            str(job["submitTime"])[:19],
            job["modelId"],
        )
    console.print(table)


@batch_app.command("get")
def batch_get(job: str, endpoint_url: EndpointOpt = None, as_json: JsonOpt = False) -> None:
    """Show one batch inference job (by id or ARN)."""
    response = _call(_client(endpoint_url).get_model_invocation_job, jobIdentifier=job)
    if as_json:
        _print_json(response)
        return
    console.print(f"[bold]{response['jobName']}[/bold] {response['status']}  {response['jobArn']}")
    console.print(
        f"  records {response.get('processedRecordCount', 0)}/{response.get('totalRecordCount', '?')} processed, "
        f"{response.get('successRecordCount', 0)} answered, {response.get('errorRecordCount', 0)} failed"
    )
    console.print(f"  output {response['outputDataConfig']['s3OutputDataConfig']['s3Uri']}")
    if response.get("message"):
        console.print(f"  {response['message']}")


@batch_app.command("stop")
def batch_stop(job: str, endpoint_url: EndpointOpt = None) -> None:
    """Stop a batch inference job; the records answered so far are written."""
    _call(_client(endpoint_url).stop_model_invocation_job, jobIdentifier=job)
    console.print(f"stopping {job}")


# -- throughput ------------------------------------------------------------------------------------


def _raw_bodies(client: Any, operation: str) -> list[dict[str, Any]]:
    """Collect the raw JSON bodies of an operation's responses: they hold tuneforge's ``tuneforge``
    extension block (the meter), which botocore's parser leaves out."""
    bodies: list[dict[str, Any]] = []

    def keep(http_response: Any, **_: Any) -> None:
        if http_response.status_code < 300:
            bodies.append(json.loads(http_response.content or b"{}"))

    client.meta.events.register(f"after-call.bedrock.{operation}", keep)
    return bodies


def _wait_in_service(client: Any, arn: str, timeout: float) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    with console.status("starting replicas..."):
        while True:
            response: dict[str, Any] = _call(client.get_provisioned_model_throughput, provisionedModelId=arn)
            if response["status"] not in ("Creating", "Updating") or time.monotonic() > deadline:
                return response
            time.sleep(0.5)


@throughput_app.command("create")
def throughput_create(
    name: str,
    model: Annotated[str, typer.Option("--model", help="Custom model name/ARN or foundation model id.")],
    model_units: Annotated[int, typer.Option("--model-units", min=1, help="Replicas (engine processes).")] = 1,
    commitment: Annotated[
        str | None, typer.Option("--commitment", help="OneMonth or SixMonths: no delete until it expires.")
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option("--idle-timeout", help="Minutes without requests before it is deleted (0 = never)."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is InService (or Failed).")] = False,
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a provisioned throughput: MODEL_UNITS replicas serving MODEL."""
    from tuneforge.serving.throughput import IDLE_TIMEOUT_TAG

    client = _client(endpoint_url)
    kwargs: dict[str, Any] = {"provisionedModelName": name, "modelId": model, "modelUnits": model_units}
    if commitment:
        kwargs["commitmentDuration"] = commitment
    if idle_timeout is not None:
        kwargs["tags"] = [{"key": IDLE_TIMEOUT_TAG, "value": f"{idle_timeout:g}"}]
    arn = _call(client.create_provisioned_model_throughput, **kwargs)["provisionedModelArn"]
    final = _wait_in_service(client, arn, 600) if wait else {"provisionedModelArn": arn}
    if as_json:
        _print_json(final)
        return
    console.print(arn)
    if wait:
        console.print(f"{final['status']} {final.get('failureMessage', '')}")
        if final["status"] != "InService":
            raise typer.Exit(1)


@throughput_app.command("list")
def throughput_list(
    status: Annotated[str | None, typer.Option("--status", help="Creating, InService, Updating or Failed.")] = None,
    deleted: Annotated[bool, typer.Option("--deleted", help="Show deleted deployments (history).")] = False,
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List provisioned throughputs with their meters."""
    client = _client(endpoint_url)
    bodies = _raw_bodies(client, "ListProvisionedModelThroughputs")
    kwargs: dict[str, Any] = {}
    if deleted or status:
        kwargs["statusEquals"] = "Deleted" if deleted else status
    try:
        for _ in client.get_paginator("list_provisioned_model_throughputs").paginate(**kwargs):
            pass
    except Exception as exc:
        raise _fail(str(exc)) from None
    items = [item for body in bodies for item in body.get("provisionedModelSummaries", [])]
    if as_json:
        _print_json(items)
        return
    table = Table("name", "status", "model", "units", "MU-hours", "cost", "created", "deleted")
    for item in items:
        meter = item.get("tuneforge", {})
        table.add_row(
            item["provisionedModelName"],
            item["status"],
            item["modelArn"].rsplit("/", 1)[-1],
            str(item["modelUnits"]),
            f"{meter.get('modelUnitHours', 0):.4f}",
            f"{meter.get('cost', 0):.4f}",
            item["creationTime"][:19],
            (meter.get("deletionTime") or "")[:19],
        )
    console.print(table)


@throughput_app.command("get")
def throughput_get(provisioned_model: str, endpoint_url: EndpointOpt = None, as_json: JsonOpt = False) -> None:
    """Show one provisioned throughput, its meter (model-unit-hours, cost, tokens) and replicas."""
    client = _client(endpoint_url)
    bodies = _raw_bodies(client, "GetProvisionedModelThroughput")
    _call(client.get_provisioned_model_throughput, provisionedModelId=provisioned_model)
    body = bodies[-1]
    if as_json:
        _print_json(body)
        return
    meter = body.get("tuneforge", {})
    console.print(f"[bold]{body['provisionedModelName']}[/bold] {body['status']}  {body['provisionedModelArn']}")
    console.print(f"  model       {body['modelArn']}")
    if body["desiredModelArn"] != body["modelArn"]:
        console.print(f"  switching to {body['desiredModelArn']}")
    console.print(f"  model units {body['modelUnits']}  replicas {meter.get('replicas') or {}}")
    if body.get("commitmentDuration"):
        console.print(f"  commitment  {body['commitmentDuration']} until {body['commitmentExpirationTime']}")
    idle = meter.get("idleTimeoutMinutes")
    console.print(f"  idle timeout {f'{idle:g} min' if idle is not None else 'off'}")
    console.print(
        f"  meter       {meter.get('modelUnitHours', 0):.4f} MU-hours x {meter.get('pricePerModelUnitHour', 0):g}"
        f" = {meter.get('cost', 0):.4f}; {meter.get('invocations', 0)} invocations, "
        f"{meter.get('inputTokens', 0)} input / {meter.get('outputTokens', 0)} output tokens"
    )
    if body.get("failureMessage"):
        console.print(f"[red]{body['failureMessage']}[/red]")


@throughput_app.command("update")
def throughput_update(
    provisioned_model: str,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Sibling custom model to switch to.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the switch is done.")] = False,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Rename, or switch to another custom model of the same base without downtime."""
    client = _client(endpoint_url)
    kwargs: dict[str, Any] = {"provisionedModelId": provisioned_model}
    if name:
        kwargs["desiredProvisionedModelName"] = name
    if model:
        kwargs["desiredModelId"] = model
    _call(client.update_provisioned_model_throughput, **kwargs)
    if wait:
        final = _wait_in_service(client, name or provisioned_model, 600)
        console.print(f"{final['status']} serving {final['modelArn']} {final.get('failureMessage', '')}")
    else:
        console.print(f"updating {provisioned_model}")


@throughput_app.command("delete")
def throughput_delete(provisioned_model: str, endpoint_url: EndpointOpt = None) -> None:
    """Delete a provisioned throughput (refused while a commitment runs)."""
    _call(_client(endpoint_url).delete_provisioned_model_throughput, provisionedModelId=provisioned_model)
    console.print(f"deleted {provisioned_model}")


# -- custom model deployments ----------------------------------------------------------------------


@deployments_app.command("create")
def deployments_create(
    name: str,
    model: Annotated[str, typer.Option("--model", help="Custom model ARN.")],
    description: Annotated[str | None, typer.Option("--description")] = None,
    budget: Annotated[
        float | None, typer.Option("--monthly-budget", min=0, help="US dollars a month; refused past it.")
    ] = None,
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy a custom model on demand: no engine until the first request, billed per token."""
    from tuneforge.serving.deployments import BUDGET_TAG

    client = _client(endpoint_url)
    kwargs: dict[str, Any] = {"modelDeploymentName": name, "modelArn": model}
    if description:
        kwargs["description"] = description
    if budget is not None:
        kwargs["tags"] = [{"key": BUDGET_TAG, "value": f"{budget:g}"}]
    arn = _call(client.create_custom_model_deployment, **kwargs)["customModelDeploymentArn"]
    final = _call(client.get_custom_model_deployment, customModelDeploymentIdentifier=arn)
    if as_json:
        _print_json(final)
        return
    console.print(arn)
    console.print(f"{final['status']} {final.get('failureMessage', '')}".strip())
    if final["status"] == "Failed":
        raise typer.Exit(1)


@deployments_app.command("list")
def deployments_list(
    status: Annotated[str | None, typer.Option("--status", help="Creating, Active or Failed.")] = None,
    name_contains: Annotated[str | None, typer.Option("--name-contains")] = None,
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List custom model deployments, newest first."""
    client = _client(endpoint_url)
    kwargs: dict[str, Any] = {}
    if status:
        kwargs["statusEquals"] = status
    if name_contains:
        kwargs["nameContains"] = name_contains
    items: list[dict[str, Any]] = []
    try:
        for page in client.get_paginator("list_custom_model_deployments").paginate(**kwargs):
            items += page.get("modelDeploymentSummaries", [])
    except Exception as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _print_json(items)
        return
    table = Table("name", "status", "model", "created", "failure")
    for item in items:
        table.add_row(
            item["customModelDeploymentName"],
            item["status"],
            item["modelArn"].rsplit("/", 1)[-1],
            str(item["createdAt"])[:19],
            item.get("failureMessage", ""),
        )
    console.print(table)


@deployments_app.command("get")
def deployments_get(deployment: str, endpoint_url: EndpointOpt = None, as_json: JsonOpt = False) -> None:
    """Show one deployment: its model, how it is served, its tokens, cost and budget."""
    client = _client(endpoint_url)
    bodies = _raw_bodies(client, "GetCustomModelDeployment")
    _call(client.get_custom_model_deployment, customModelDeploymentIdentifier=deployment)
    body = bodies[-1]
    if as_json:
        _print_json(body)
        return
    meter = body.get("tuneforge", {})
    console.print(f"[bold]{body['modelDeploymentName']}[/bold] {body['status']}  {body['customModelDeploymentArn']}")
    console.print(f"  model    {body['modelArn']}")
    console.print(f"  serving  {meter.get('serving')} on engine group {meter.get('engineGroup')}")
    if update := body.get("updateDetails"):
        console.print(f"  update   {update['updateStatus']} to {update['modelArn']}")
    budget = meter.get("monthlyBudgetUsd")
    console.print(
        f"  meter    {meter.get('invocations', 0)} invocations, {meter.get('inputTokens', 0)} input / "
        f"{meter.get('outputTokens', 0)} output tokens, cost {meter.get('cost', 0):.6f}; this month "
        f"{meter.get('monthToDateCost', 0):.6f}" + (f" of a {budget:g} USD budget" if budget is not None else "")
    )
    if body.get("failureMessage"):
        console.print(f"[red]{body['failureMessage']}[/red]")


@deployments_app.command("update")
def deployments_update(
    deployment: str,
    model: Annotated[str, typer.Option("--model", help="Custom model ARN of the same base to serve instead.")],
    endpoint_url: EndpointOpt = None,
) -> None:
    """Swap the custom model a deployment serves."""
    client = _client(endpoint_url)
    _call(client.update_custom_model_deployment, customModelDeploymentIdentifier=deployment, modelArn=model)
    final = _call(client.get_custom_model_deployment, customModelDeploymentIdentifier=deployment)
    update = final.get("updateDetails", {})
    console.print(f"{update.get('updateStatus')}: serving {final['modelArn']} {final.get('failureMessage', '')}")
    if update.get("updateStatus") == "UpdateFailed":
        raise typer.Exit(1)


@deployments_app.command("delete")
def deployments_delete(deployment: str, endpoint_url: EndpointOpt = None) -> None:
    """Delete a deployment (its engine stops after the on-demand idle time if nothing else uses it)."""
    _call(_client(endpoint_url).delete_custom_model_deployment, customModelDeploymentIdentifier=deployment)
    console.print(f"deleted {deployment}")


# -- invoke and usage --------------------------------------------------------------------------------


@app.command()
def invoke(
    model: Annotated[
        str,
        typer.Argument(help="Custom model deployment or provisioned throughput name/ARN, or a foundation model id."),
    ],
    prompt: str,
    system: Annotated[str | None, typer.Option("--system", help="System prompt (chat only).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0, max=1)] = 0.0,
    raw: Annotated[
        bool, typer.Option("--raw", help="Continue PROMPT verbatim (InvokeModel) instead of chatting (Converse).")
    ] = False,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Stream a model's answer to the terminal as it is generated."""
    from botocore.exceptions import BotoCoreError, ClientError, EventStreamError

    client = _client(endpoint_url, "bedrock-runtime")
    usage_line = ""
    try:
        if raw:
            body: dict[str, Any] = {"prompt": prompt, "temperature": temperature}
            if max_tokens:
                body["max_gen_len"] = max_tokens
            response = client.invoke_model_with_response_stream(modelId=model, body=json.dumps(body))
            for event in response["body"]:
                chunk = json.loads(event["chunk"]["bytes"])
                sys.stdout.write(chunk["generation"])
                sys.stdout.flush()
                if metrics := chunk.get("amazon-bedrock-invocationMetrics"):
                    usage_line = f"{metrics['inputTokenCount']} input / {metrics['outputTokenCount']} output tokens"
        else:
            config: dict[str, Any] = {"temperature": temperature}
            if max_tokens:
                config["maxTokens"] = max_tokens
            kwargs: dict[str, Any] = {
                "modelId": model,
                "messages": [{"role": "user", "content": [{"text": prompt}]}],
                "inferenceConfig": config,
            }
            if system:
                kwargs["system"] = [{"text": system}]
            stream = client.converse_stream(**kwargs)["stream"]
            for event in stream:
                if "contentBlockDelta" in event:
                    sys.stdout.write(event["contentBlockDelta"]["delta"].get("text", ""))
                    sys.stdout.flush()
                elif "metadata" in event:
                    used = event["metadata"]["usage"]
                    usage_line = f"{used['inputTokens']} input / {used['outputTokens']} output tokens"
    except (ClientError, EventStreamError) as exc:
        error = exc.response.get("Error", {})
        raise _fail(f"{error.get('Code')}: {error.get('Message')}") from None
    except BotoCoreError as exc:
        raise _fail(f"cannot reach the server: {exc}") from None
    sys.stdout.write("\n")
    err.print(f"[dim]{usage_line}[/dim]")


@app.command()
def usage(endpoint_url: EndpointOpt = None, as_json: JsonOpt = False) -> None:
    """Provisioned model-unit-hours, on-demand tokens, batch inference jobs' tokens and their cost per
    deployment (deleted ones included), per batch job and per model."""
    from tuneforge.client import ExtensionError, extension_get

    settings = _settings()
    try:
        report = extension_get(endpoint_url or settings.endpoint_url, settings.region, "/usage")
    except (ExtensionError, OSError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _print_json(report)
        return
    deployments = Table(
        "deployment", "status", "units", "MU-hours", "cost", "calls", "in tokens", "out tokens", "ended"
    )
    for d in report["deployments"]:
        ended = f"{(d['deletionTime'] or '')[:19]} {d['deletionReason'] or ''}".strip()
        deployments.add_row(
            d["provisionedModelName"],
            d["status"],
            str(d["modelUnits"]),
            f"{d['modelUnitHours']:.4f}",
            f"{d['cost']:.4f}",
            str(d["invocations"]),
            str(d["inputTokens"]),
            str(d["outputTokens"]),
            ended,
        )
    console.print(deployments)
    models = Table("model", "MU-hours", "cost", "calls", "in tokens", "out tokens")
    for m in report["models"]:
        models.add_row(
            m["modelName"],
            f"{m['modelUnitHours']:.4f}",
            f"{m['cost']:.4f}",
            str(m["invocations"]),
            str(m["inputTokens"]),
            str(m["outputTokens"]),
        )
    on_demand = Table(
        "on-demand deployment", "status", "calls", "in tokens", "out tokens", "cost", "this month", "budget"
    )
    for d in report.get("customModelDeployments", []):
        budget = d["monthlyBudgetUsd"]
        on_demand.add_row(
            d["modelDeploymentName"],
            d["status"],
            str(d["invocations"]),
            str(d["inputTokens"]),
            str(d["outputTokens"]),
            f"{d['cost']:.6f}",
            f"{d['monthToDateCost']:.6f}",
            "" if budget is None else f"{budget:g}",
        )
    console.print(on_demand)
    batch = Table("batch job", "status", "records", "in tokens", "out tokens", "price in/out per 1k", "cost")
    for b in report.get("batchJobs", []):
        batch.add_row(
            b["jobName"] or b["jobArn"] or "",
            b["status"] or "",
            str(b["records"]),
            str(b["inputTokens"]),
            str(b["outputTokens"]),
            f"{b['pricePer1kInputTokens'] or 0:g} / {b['pricePer1kOutputTokens'] or 0:g}",
            f"{b['cost']:.6f}",
        )
    console.print(batch)
    console.print(models)
    total = report["total"]
    console.print(
        f"total: {total['modelUnitHours']:.4f} MU-hours (cost {total.get('provisionedCost', 0):.4f}) + on-demand "
        f"tokens (cost {total.get('onDemandCost', 0):.6f}) + batch tokens (cost {total.get('batchCost', 0):.6f}) "
        f"= {total['cost']:.4f}; {total['invocations']} calls, "
        f"{total['inputTokens']} input / {total['outputTokens']} output tokens"
    )


# -- advise ----------------------------------------------------------------------------------------


@app.command()
def advise(
    data: Annotated[str, typer.Argument(help="Labeled (or unlabeled) JSONL: a local file or folder, or s3://.")],
    documents: Annotated[
        str | None, typer.Option("--documents", help='Your documents ({"input"} JSONL): a file, folder or s3://.')
    ] = None,
    goal: Annotated[
        list[str] | None,
        typer.Option(
            "--goal",
            help="quality=0.9, latency-ms=300, cost=2 (per 1,000 requests), knowledge-changes, cite, teacher=MODEL; "
            "repeat for several.",
        ),
    ] = None,
    try_: Annotated[bool, typer.Option("--try", help="Run a small bake-off on a running server.")] = False,
    budget_minutes: Annotated[float, typer.Option("--budget-minutes", help="The bake-off's time budget.")] = 10,
    updated_documents: Annotated[
        str | None,
        typer.Option(
            "--updated-documents",
            help="The documents after the facts changed: RAG indexes these, continued pre-training trains on "
            "--documents.",
        ),
    ] = None,
    base_model: Annotated[str, typer.Option("--base-model")] = "tuneforge.forge-small-v1:0:512",
    student_model: Annotated[str, typer.Option("--student-model")] = "tuneforge.forge-micro-v1:0:512",
    generator: Annotated[
        str | None, typer.Option("--generator", help="RAG's generator model (default: the base model).")
    ] = None,
    task_type: Annotated[str, typer.Option("--task-type", help="Evaluation task type.")] = "QuestionAndAnswer",
    rag_results: Annotated[int, typer.Option("--rag-results", help="Passages RAG retrieves per prompt.")] = 5,
    held_out: Annotated[
        int | None, typer.Option("--held-out", help="Labeled records held out for scoring (default: a fifth).")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the bake-off's models, knowledge base and jobs.")] = False,
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recommend a customization approach for your data and goals; with --try, measure the candidates."""
    from tuneforge.advisor.profile import profile
    from tuneforge.advisor.rules import advise as advise_on
    from tuneforge.advisor.rules import arms, goals_from_options
    from tuneforge.advisor.sources import read_source
    from tuneforge.errors import ValidationException
    from tuneforge.storage import ObjectStore

    settings = _settings()
    store = ObjectStore.from_settings(settings)
    try:
        goals = goals_from_options(goal or [])
        examples = read_source(store, data, local_files=True)
        corpus = read_source(store, documents, local_files=True) if documents else []
        updated = read_source(store, updated_documents, local_files=True) if updated_documents else None
        advice = advise_on(profile(examples), goals, profile(corpus) if corpus else None)
        chosen_arms = arms(advice, bool(corpus))
    except ValidationException as exc:
        raise _fail(exc.message) from None
    result: dict[str, Any] = {**advice.to_dict(), "bakeOffArms": chosen_arms}
    if not as_json:
        _print_advice(result)
    if try_:
        result["bakeOff"] = _bake_off(
            settings,
            store,
            examples,
            corpus,
            updated,
            chosen_arms,
            goals,
            dict(
                budget_minutes=budget_minutes,
                base_model=base_model,
                student_model=student_model,
                generator=generator,
                task_type=task_type,
                held_out=held_out,
                rag_results=rag_results,
            ),
            endpoint_url,
            keep=keep,
            quiet=as_json,
        )
    if as_json:
        _print_json(result)


def _print_advice(result: dict[str, Any]) -> None:
    data = result["profile"]
    table = Table("", "records", "distinct", "kind", "prompt tokens p50 / max", "answer tokens p50", "distinct pairs")
    for label, row in (("data", data), ("documents", result["documentsProfile"])):
        if row:
            table.add_row(
                label,
                str(row["records"]),
                str(row["distinctRecords"]),
                row["kind"],
                f"{row['prompt_tokens_p50']} / {row['prompt_tokens_max']}",
                str(row["answer_tokens_p50"]),
                f"{row['distinct_bigram_ratio']:.0%}",
            )
    console.print(table)
    console.print(f"[bold]recommended: {result['approach']}[/bold]")
    for reason in result["reasons"]:
        console.print(f"  - {reason}")
    for alternative in result["alternatives"]:
        console.print(f"  also measure {alternative['approach']}: {alternative['why']}")
    for note in result["notes"]:
        console.print(f"  [dim]note: {note}[/dim]")


def _bake_off(
    settings: Any,
    store: Any,
    examples: Any,
    corpus: Any,
    updated: Any,
    chosen_arms: list[str],
    goals: Any,
    sizes: dict[str, Any],
    endpoint_url: str | None,
    *,
    keep: bool,
    quiet: bool,
) -> dict[str, Any]:
    from tuneforge.advisor.bakeoff import BakeOff, Clients, make_plan
    from tuneforge.errors import ValidationException

    try:
        plan = make_plan(examples, corpus, chosen_arms, goals, updated_documents=updated, **sizes)
    except ValidationException as exc:
        raise _fail(exc.message) from None
    say = err.print if quiet else console.print
    say("[bold]bake-off[/bold]")
    for line in plan.describe():
        say(line)
    clients = Clients(
        _client(endpoint_url), _client(endpoint_url, "bedrock-agent"), _client(endpoint_url, "bedrock-agent-runtime")
    )
    result = BakeOff(plan, clients, store, settings, say, goals).run(keep=keep)
    if not quiet:
        table = Table(
            "approach",
            "status",
            "quality",
            "p50 latency",
            "training time",
            "serving $/1k requests",
            "total $",
            title=f"bake-off on {result['heldOut']} held-out records ({result['elapsedSeconds']:.0f} s of a "
            f"{result['budgetSeconds']:.0f} s budget)",
        )
        for arm in result["arms"]:
            quality = "" if arm["quality"] is None else f"{arm['quality']:.2f}"
            if arm["qualityByCategory"]:
                quality += " (" + ", ".join(f"{k} {v:.2f}" for k, v in arm["qualityByCategory"].items()) + ")"
            table.add_row(
                arm["approach"],
                arm["status"],
                quality,
                "" if arm["latencyP50Ms"] is None else f"{arm['latencyP50Ms']:.0f} ms",
                f"{arm['trainingSeconds']:.0f} s",
                "" if arm["servingCostPer1kRequests"] is None else f"{arm['servingCostPer1kRequests']:.4f}",
                "" if arm["totalCost"] is None else f"{arm['totalCost']:.4f}",
            )
        console.print(table)
        chosen = result["recommendation"]
        console.print(f"[bold]measured recommendation: {chosen['approach']}[/bold] ({chosen['why']})")
        if result["kept"]:
            console.print(f"kept: {', '.join(result['kept'])}")
    return result


def main() -> None:
    app()


# -- db --------------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate TUNEFORGE_DATABASE_URL's schema to this release's (PostgreSQL needs this after an upgrade)."""
    from sqlalchemy.exc import OperationalError

    from tuneforge.db import migrate
    from tuneforge.db.session import DatabaseUnavailable, connect, unreachable_message

    engine = connect(_settings())
    try:
        with _database_errors():
            try:
                before = migrate.current(engine)
                migrate.check_known(before)
                migrate.upgrade(engine)
            except OperationalError as exc:
                raise DatabaseUnavailable(unreachable_message(engine.url, exc)) from None
        console.print(f"database schema: {before or 'none'} -> {migrate.head()}", markup=False, highlight=False)
    finally:
        engine.dispose()


@db_app.command("current")
def db_current(as_json: JsonOpt = False) -> None:
    """The database's schema revision and this release's; exit 1 when they differ."""
    from sqlalchemy.exc import OperationalError

    from tuneforge.db import migrate
    from tuneforge.db.session import DatabaseUnavailable, connect, unreachable_message

    engine = connect(_settings())
    try:
        with _database_errors():
            try:
                found = migrate.current(engine)
            except OperationalError as exc:
                raise DatabaseUnavailable(unreachable_message(engine.url, exc)) from None
    finally:
        engine.dispose()
    expected = migrate.head()
    if as_json:
        _print_json({"current": found, "head": expected, "upToDate": found == expected})
    else:
        console.print(f"current: {found or 'none'}\nhead:    {expected}", markup=False, highlight=False)
    if found != expected:
        raise typer.Exit(1)


# -- graders ---------------------------------------------------------------------------------------


def _grader_registry() -> Any:
    from tuneforge.graders import GraderRegistry
    from tuneforge.storage import ObjectStore

    settings = _settings()
    settings.make_state_private()
    return GraderRegistry(ObjectStore.from_settings(settings), settings.grader_registry_uri)


@graders_app.command("register")
def graders_register(
    name: Annotated[str, typer.Argument(help="The function name a lambdaArn gives: ...:function:NAME")],
    file: Annotated[Path, typer.Argument(help="A .py Lambda grader (lambda_grader) or a .json grader object")],
) -> None:
    """Store a grader in the object store; jobs name it as arn:aws:lambda:REGION:ACCOUNT:function:NAME."""
    from tuneforge.graders import GraderConfigError
    from tuneforge.storage import StorageError

    try:
        uri = _grader_registry().register(name, file.name, file.read_bytes())
    except (GraderConfigError, StorageError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"registered grader {name} at {uri}")


@graders_app.command("list")
def graders_list(as_json: JsonOpt = False) -> None:
    """Registered graders (the built-in ones are always there too)."""
    from tuneforge.graders.registry import BUILTIN

    entries = [{"name": n, "kind": "built-in"} for n in sorted(BUILTIN)]
    entries += [
        {"name": n, "kind": {"py": "lambda", "json": "grader object"}[k]} for n, k in _grader_registry().names()
    ]
    if as_json:
        _print_json(entries)
        return
    for entry in entries:
        console.print(f"{entry['name']}\t{entry['kind']}", markup=False, highlight=False)


@graders_app.command("delete")
def graders_delete(name: str) -> None:
    """Remove a registered grader; jobs that name it afterwards are refused."""
    from tuneforge.graders import GraderConfigError

    try:
        found = _grader_registry().delete(name)
    except GraderConfigError as exc:
        raise _fail(str(exc)) from None
    if not found:
        raise _fail(f"no registered grader named {name!r}")
    console.print(f"deleted grader {name}")


if __name__ == "__main__":
    main()
