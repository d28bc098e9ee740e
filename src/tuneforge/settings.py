"""The one settings object. Nothing else in tuneforge reads ``os.environ``.

Values come, highest priority first, from keyword arguments, ``TUNEFORGE_*`` environment
variables, and an optional TOML or JSON file named by ``TUNEFORGE_CONFIG_FILE``. Every default
is the zero-setup single-machine mode: a SQLite file, an object root and worker processes,
all under one data directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
PRIVATE_UMASK = 0o077
STATE_FOLDERS = ("objects", "models", "logs", "engines", "jobs")


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the optional file named by TUNEFORGE_CONFIG_FILE (TOML or JSON)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        name = os.environ.get("TUNEFORGE_CONFIG_FILE")
        if not name:
            return {}
        path = Path(name).expanduser()
        text = path.read_text(encoding="utf-8")
        data: dict[str, Any] = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return data


class TokenPrice(BaseModel):
    """On-demand prices of one base model, per 1,000 tokens (frozen: the meter keys counts by it)."""

    model_config = ConfigDict(frozen=True)

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", frozen=True)

    data_dir: Path = Field(
        default=Path(".tuneforge"),
        description="Root of all local state: database, object root, built-in models, logs.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file in the data directory."
    )
    object_root: Path | None = Field(
        default=None,
        description="Where s3://bucket/key lives in embedded mode; default <data_dir>/objects.",
    )
    local_roots: list[Path] = Field(
        default_factory=list,
        description="Extra local folders that absolute paths in requests may point into "
        "(the data directory is always allowed).",
    )
    object_store: Literal["local", "s3"] = Field(
        default="local",
        description="Where s3:// URIs live: 'local' (the object root) or 's3' (a real S3 endpoint through boto3, "
        "configured by the AWS chain: AWS_ENDPOINT_URL_S3, AWS_REGION, credentials).",
    )
    s3_max_attempts: int = Field(
        default=5, ge=1, le=20, description="botocore's total attempts per S3 request (standard retry mode)."
    )
    s3_timeout_seconds: float = Field(default=30.0, gt=0, description="S3 connect and read timeout per attempt.")
    s3_multipart_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        description="Files at least this large go to and from S3 in parts of this size (boto3's TransferConfig).",
    )
    host: str = Field(default="127.0.0.1", description="Bind address. Loopback by default.")
    port: int = Field(default=8080, ge=0, le=65535)
    region: str = Field(
        default="us-east-1", description="Region written into ARNs; SigV4 signatures must be scoped to it."
    )
    account_id: str = Field(default="123456789012", pattern=r"^[0-9]{12}$")
    worker_concurrency: int = Field(default=1, ge=1, le=64, description="Jobs that train at once.")
    worker_threads: int = Field(
        default=0,
        ge=0,
        description="torch threads per worker; 0 = the CPUs this process may run on (its affinity: a container's "
        "cpuset, taskset) / concurrency. Never more than those CPUs.",
    )
    fork_server: bool = Field(
        default=True,
        description="Fork workers and engines from a process that has imported torch once (tuneforge/launcher.py) "
        "instead of starting each with python -m: seconds off every job's start and engine's cold start.",
    )
    heartbeat_timeout_s: float = Field(
        default=60.0, gt=0, description="A running job whose worker is silent this long is failed."
    )
    access_keys: dict[str, str] = Field(
        default_factory=dict,
        description="SigV4 access key id -> secret. Required when binding to a non-loopback address.",
    )
    allow_anonymous: bool = Field(
        default=True, description="Allow unsigned requests. Honoured only on a loopback bind."
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Bearer API keys accepted on the OpenAI-compatible routes (/v1/...).",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (scheme://host:port) allowed to call the API besides the server's own; "
        "requests with any other Origin header are refused.",
    )
    max_request_body_bytes: int = Field(
        default=1 << 20, ge=1, description="Largest request body the control plane reads; larger ones get 413."
    )
    max_inference_body_bytes: int = Field(
        default=10 << 20,
        ge=1,
        description="Largest request body the inference routes (/model/.../converse, invoke, /v1/...) read.",
    )
    price_per_model_unit_hour: float = Field(
        default=1.0,
        ge=0,
        description="Price of one model unit (one serving replica) per hour, for the provisioned-throughput meter.",
    )
    idle_timeout_minutes: float = Field(
        default=60.0,
        ge=0,
        le=525_600,
        allow_inf_nan=False,
        description="Delete a provisioned throughput after this many minutes without requests; 0 turns it off. "
        "A deployment's tuneforge:idle-timeout-minutes tag overrides it.",
    )
    price_per_1k_input_tokens: float = Field(
        default=0.0005,
        ge=0,
        allow_inf_nan=False,
        description="On-demand price per 1,000 input tokens (foundation models and custom model deployments) of "
        "base models that token_prices does not name.",
    )
    price_per_1k_output_tokens: float = Field(
        default=0.0015,
        ge=0,
        allow_inf_nan=False,
        description="On-demand price per 1,000 output tokens of base models that token_prices does not name.",
    )
    token_prices: dict[str, TokenPrice] = Field(
        default_factory=dict,
        description='On-demand prices per base model id, e.g. {"tuneforge.forge-small-v1:0:512": '
        '{"input": 0.001, "output": 0.002}} (per 1,000 tokens); a custom model is billed at its base\'s price.',
    )
    batch_price_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="What a batch inference job's tokens cost, as a fraction of the base model's on-demand token "
        "prices (a batch job trades latency for throughput, so it is billed less, as on Bedrock).",
    )
    max_model_units: int = Field(
        default=8, ge=1, description="Model units (engine processes) all provisioned throughputs may hold at once."
    )
    engine_threads: int = Field(
        default=0,
        ge=0,
        description="torch threads per engine process; 0 = half the CPUs it may run on (at least 1), leaving the "
        "rest to the API process and other engines (on 2 cores, 2 engine threads measured slower than 1 under load). "
        "Never more than those CPUs.",
    )
    engine_max_batch: int = Field(
        default=16, ge=1, le=512, description="Sequences one engine decodes together (continuous batching)."
    )
    batch_max_rows: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Most rows a batch inference job decodes together; fewer when the memory budget holds fewer "
        "(see jobs/memory.inference_rows).",
    )
    engine_compiled_decode_tokens: int = Field(
        default=512,
        ge=0,
        le=32_768,
        description="A request decoding alone, with prompt plus maxTokens up to this many tokens, uses a static KV "
        "cache of this length and a decoding step compiled with torch.compile (1.09-1.16x generate's tokens/s on "
        "SmolLM2, CPU). It compiles in the background once the engine serves (tens of seconds of CPU; eager "
        "until then). 0 turns it off.",
    )
    max_prompt_chars: int = Field(
        default=2_000_000,
        ge=1,
        description="Characters a prompt (all its messages together) may hold; longer ones are refused before "
        "tokenizing. The default is about four times a 128k-token context at four characters a token.",
    )
    engine_start_timeout_s: float = Field(
        default=300.0, gt=0, description="An engine that has not loaded its model by then counts as failed."
    )
    on_demand_idle_minutes: float = Field(
        default=15.0,
        gt=0,
        le=525_600,
        allow_inf_nan=False,
        description="An on-demand engine (a foundation or imported model, with the adapters of its custom models) "
        "without requests this long exits: on-demand serving scales to zero, and the next request starts it again.",
    )
    adapter_cache_bytes: int = Field(
        default=1 << 30,
        ge=1,
        description="Bytes of LoRA adapter weights one multi-adapter engine keeps loaded; past it the least recently "
        "used adapters that no request is using are evicted (and reloaded from disk when asked for again).",
    )
    max_training_records: int = Field(default=20_000, ge=1)
    max_training_file_bytes: int = Field(default=1 << 30, ge=1)
    max_validation_records: int = Field(default=1_000, ge=1)
    max_validation_file_bytes: int = Field(default=100 << 20, ge=1)
    price_per_compute_hour: float = Field(default=1.0, ge=0, description="Used for cost estimates in the data report.")
    import_memory_limit_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Largest float32 weight size CreateModelImportJob accepts; unset: this machine's available memory.",
    )
    training_memory_bytes: int = Field(
        default=0,
        ge=0,
        description="Memory one training job may use, in bytes, for the memory plan at job creation; "
        "0 = detect it (80% of RAM, or 90% of the GPU's memory, divided by worker_concurrency).",
    )
    secure_cookies: bool = Field(
        default=False,
        description="Mark the console's session cookie Secure (sent over HTTPS only). Set it behind a TLS proxy; "
        "a request that reaches the server as https (direct TLS, or a trusted proxy's X-Forwarded-Proto) gets "
        "a Secure cookie either way.",
    )
    replica_url: str | None = Field(
        default=None,
        description="The URL the other API replicas sharing this database use to reach this one (forwarded "
        "inference); unset: this server's own endpoint (http://host:port). Behind TLS, its https:// address.",
    )
    replica_secret: str | None = Field(
        default=None,
        min_length=16,
        description="Shared secret every API replica sends on and requires of replica-to-replica calls. Required "
        "when replica_url is not a loopback address; unset on loopback, each replica uses a random token it "
        "registers in the database.",
    )
    replica_lease_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="A replica whose heartbeat is older than this is dead: the others take over its jobs and "
        "engine groups. Replicas heartbeat three times per lease.",
    )
    data_parallel_nodes: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Machines a data-parallel job (hyperparameter dataParallelProcesses > 1) trains on; above 1, "
        "torchrun waits at data_parallel_rendezvous for the others (docs/architecture.md, Distributed training).",
    )
    data_parallel_rendezvous: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$",
        description="host:port of torchrun's c10d rendezvous; unset: 127.0.0.1 and a free port (one machine).",
    )
    data_parallel_max_restarts: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Times torchrun restarts a data-parallel job's ranks (from the last checkpoint) after one is "
        "lost, before the job fails naming the lost rank.",
    )
    executor: Literal["local", "ray"] = Field(
        default="local",
        description="Where job workers run: local = a process on this machine; ray = a Ray cluster's nodes, "
        "one placement group per job (jobs/executors.py).",
    )
    ray_address: str | None = Field(
        default=None, description="The Ray cluster the ray executor joins (ray://... or host:port); unset: auto."
    )
    grader_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=900,
        allow_inf_nan=False,
        description="Wall-clock seconds a user-supplied grader may spend on one sample (graders/sandbox.py).",
    )
    grader_cpu_s: int = Field(
        default=10, ge=1, le=900, description="CPU seconds a user-supplied grader may spend per sample."
    )
    grader_memory_bytes: int = Field(
        default=1 << 30, ge=64 << 20, description="Address space of a user-supplied grader's process (RLIMIT_AS)."
    )
    grader_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Grader runs (`/v1/fine_tuning/alpha/graders/run`) the API process works on at once; "
        "more wait their turn, so a burst of requests cannot start a sandbox process each.",
    )
    grader_registry_uri: str = Field(
        default="s3://tuneforge/graders",
        pattern=r"^s3://[^/]+(/.*)?$",
        description="Where registered graders live in the object store (`tuneforge graders register`).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    @field_validator("data_dir", "object_root")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("local_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in value]

    @cached_property
    def objects_dir(self) -> Path:
        return self.object_root or self.data_dir / "objects"

    @cached_property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @cached_property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @cached_property
    def engines_dir(self) -> Path:
        """Sockets and status files of engine processes."""
        return self.data_dir / "engines"

    @cached_property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tuneforge.db'}"

    @property
    def allowed_local_roots(self) -> list[Path]:
        return [self.data_dir, *self.local_roots]

    @property
    def binds_loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def anonymous_allowed(self) -> bool:
        return self.allow_anonymous and self.binds_loopback

    @property
    def endpoint_url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def advertised_url(self) -> str:
        """Where the other replicas reach this one."""
        return (self.replica_url or self.endpoint_url).rstrip("/")

    def check_replica_secret(self) -> None:
        """Forwarded requests cross the network when the advertised URL is not loopback: they need the secret."""
        host = urlsplit(self.advertised_url).hostname or ""
        if not is_loopback(host) and not self.replica_secret:
            raise ValueError(
                f"the replica URL {self.advertised_url} is not a loopback address: set TUNEFORGE_REPLICA_SECRET "
                "(the same value on every replica) so replica-to-replica calls are authenticated"
            )

    def token_price(self, base_model_id: str) -> TokenPrice:
        """What 1,000 input and output tokens of ``base_model_id`` (or a model customized from it) cost."""
        return self.token_prices.get(base_model_id) or TokenPrice(
            input=self.price_per_1k_input_tokens, output=self.price_per_1k_output_tokens
        )

    def batch_token_price(self, base_model_id: str) -> TokenPrice:
        """What a batch inference job pays per 1,000 tokens: the on-demand price times batch_price_fraction."""
        on_demand = self.token_price(base_model_id)
        return TokenPrice(
            input=on_demand.input * self.batch_price_fraction, output=on_demand.output * self.batch_price_fraction
        )

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.objects_dir, self.models_dir, self.logs_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def make_state_private(self) -> None:
        """Keep the database, WAL, objects, models and logs readable by their owner only.

        The umask makes every file this process creates 0600 and every folder 0700, and the workers
        and engines it starts inherit it. What an older version or another umask left open is
        tightened too, but only in tuneforge's own entries of the data directory (the folder itself
        may be one the user shares with other things). Symbolic links are left alone: chmod would
        follow them.
        """
        os.umask(PRIVATE_UMASK)
        self.ensure_dirs()
        _make_private(self.data_dir)
        owned = [self.data_dir / name for name in STATE_FOLDERS] + list(self.data_dir.glob("tuneforge.db*"))
        for top in owned:
            for root, dirs, files in os.walk(top):
                _make_private(Path(root))
                for name in (*dirs, *files):
                    _make_private(Path(root) / name)
            if top.is_file():
                _make_private(top)

    def check_bind_is_safe(self) -> None:
        """A server reachable from other machines must authenticate every request."""
        if not self.binds_loopback and not self.access_keys:
            raise ValueError(
                f"refusing to bind to {self.host}: a non-loopback bind needs access keys "
                '(set TUNEFORGE_ACCESS_KEYS=\'{"AKID": "secret"}\')'
            )


def _make_private(path: Path) -> None:
    mode = path.lstat().st_mode
    if not stat.S_ISLNK(mode) and mode & PRIVATE_UMASK:
        path.chmod(stat.S_IMODE(mode) & ~PRIVATE_UMASK)


def describe_settings_error(exc: Exception) -> str:
    """One line that names the offending setting, for ``serve`` and the CLI instead of a traceback.

    Values are left out: they may be secrets (access keys, API keys).
    """
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"TUNEFORGE_{'_'.join(str(part) for part in error['loc'][:1]).upper()}: {error['msg']}"
            for error in exc.errors()
        )
    if isinstance(exc, SettingsError):
        field = re.search(r'field "(\w+)"', str(exc))
        if field is not None:
            return f"TUNEFORGE_{field[1].upper()}: not valid JSON"
    if isinstance(exc, (OSError, ValueError)) and os.environ.get("TUNEFORGE_CONFIG_FILE"):
        return f"TUNEFORGE_CONFIG_FILE: {exc}"
    return str(exc)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (a container's cpuset, ``taskset``), not the
    machine's count. More torch threads than these CPUs spin against each other and run several times
    slower than fewer threads would."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def child_environment(settings: Settings) -> dict[str, str]:
    """Environment for processes tuneforge spawns, so they see exactly these settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        key = f"TUNEFORGE_{name.upper()}"
        if value is None:
            env.pop(key, None)
        elif isinstance(value, (dict, list)):
            env[key] = json.dumps(value)
        else:
            env[key] = str(value)
    env.pop("TUNEFORGE_CONFIG_FILE", None)
    return env
