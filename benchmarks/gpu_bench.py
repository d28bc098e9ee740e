"""GPU check: fine-tuning and batch-1 decoding of a random-init 1.1B Llama (TinyLlama's shape), bf16.

    bash benchmarks/gpu_check.sh                                   # a GPU box: the card, then this script
    PYTHONPATH=src python benchmarks/gpu_bench.py                  # the same without the wrapper
    PYTHONPATH=src python benchmarks/gpu_bench.py --tiny --device cpu --quick   # CPU smoke of every code path

Needs only torch, transformers and peft (no network, no downloads, nothing of tuneforge's web stack):
the model is built from a fixed ``LlamaConfig`` with a fixed seed, the tokenizer is a 32k-word
in-memory vocabulary and the data are random token ids. Method: ../shared/BENCHMARKING.md. Variants
are interleaved (A B C, A B C, ...) in this one process, each after its own warm-up; tables show
median [min, max] over the repeats. A card other than H100/H200/A100 gets no spec figures, only the
limits measured in the run.

**Training** (batch 8, full fine-tuning, fp32 master weights, bf16 autocast, sdpa attention). Rows
of random token ids whose lengths are spread evenly on a log scale over 64-2048 tokens (3-100% of
the context, many short rows and few long ones, as in real data), every token a target:

- ``tuneforge``   :func:`tuneforge.recipes.loop.train`, the loop a job runs (length-grouped
  batches, ``precision="bf16"``);
- ``hf_trainer``  HF ``Trainer``, ``bf16=True``, ordinary random batches padded by
  ``DataCollatorForSeq2Seq``;
- ``plain_full``  a plain PyTorch loop on rows that are all 2048 real tokens: the ceiling reference
  (BENCHMARKING.md's H200 row: 48.4k tokens/s).

Token rule, same on every side: real (non-padding) tokens. FLOPs per row of length T:
6·N·T + 12·L·H·T² (N = parameters without the input embedding, whose lookup is no matmul; the
attention term counts the full T-by-T score matrix, as BENCHMARKING.md does). MFU = those FLOPs per
second ÷ the card's dense bf16 spec, and ÷ a bf16 8192³ matmul measured in this run.

**Decoding** (batch 1, a 128-token prompt, 256 new tokens, greedy, bf16 weights, no end token):

- ``hf_default``        ``generate`` with its default (dynamic) cache, after two warm-up runs;
- ``hf_static``         ``generate(cache_implementation="static", disable_compile=True)``;
- ``hf_static_compiled`` the same with transformers' automatic compile (CUDA only);
- ``tuneforge_engine``  the serving engine's :class:`~tuneforge.engine.batching.ContinuousBatcher`
  driven in-process (one request, ``step()`` until done);
- ``tuneforge_static``  :class:`~tuneforge.engine.static_decode.StaticGreedyDecoder`, eager;
- ``tuneforge_graphs``  the same with the decode step compiled to CUDA graphs (CUDA only; on a CPU
  it is traced by dynamo with the eager backend, which checks the code path, not the speed).

Tokens/s counts new tokens over the whole call (prefill included). MBU = bytes read per token
(bf16 weights without the input embedding + the KV cache at the mean position) x tokens/s ÷ device
copy bandwidth measured in this run (bytes read + written), and ÷ the card's spec.

A variant that fails is reported as failed in the JSON (with its error) and the rest go on; a
variant that would start after ``--budget-s`` seconds is skipped and reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Rows of many lengths allocate many block sizes; expandable segments keep that from fragmenting the
# GPU memory between variants (set before torch is imported; an explicit setting wins).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from common import environment, final_json, fmt, stats

TUNEFORGE_MODULES = (
    "tuneforge.recipes.tokenising",
    "tuneforge.recipes.batching",
    "tuneforge.recipes.loop",
    "tuneforge.recipes.outputs",
    "tuneforge.recipes.performance",
    "tuneforge.engine.batching",
    "tuneforge.serving.protocol",
    "tuneforge.engine.static_decode",
)
"""Every tuneforge module this script imports: none may pull in the web stack (tests check)."""

SEED = 7
LR = 1e-4
PAD, BOS, EOS = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    context: int
    min_length: int
    batch: int
    prompt: int
    new_tokens: int


TINYLLAMA = Shape(2048, 5632, 22, 32, 4, 32000, 2048, 64, 8, 128, 256)
"""TinyLlama-1.1B's shape; rows of 64-2048 tokens, a 128-token prompt and 256 new tokens."""
TINY = Shape(128, 344, 2, 4, 2, 1024, 256, 8, 8, 16, 16)
"""A CPU smoke shape: every code path in seconds."""

# name fragment -> (dense bf16 FLOP/s, memory bandwidth B/s), vendor spec sheets; first match wins.
CARD_SPECS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 4.8e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100 NVL", 835e12, 3.9e12),
    ("H100", 989e12, 3.35e12),  # SXM
    ("A100-SXM4-80GB", 312e12, 2.039e12),
    ("A100 80GB PCIe", 312e12, 1.935e12),
    ("A100", 312e12, 1.555e12),
)

TRAIN_TARGETS = {"mfu_spec": 0.45, "vs_hf_trainer": 3.0}
DECODE_TARGETS = {"mbu": 0.25, "vs_hf_static": 2.0, "vs_hf_default": 8.0}
TUNEFORGE_DECODERS = ("tuneforge_engine", "tuneforge_static", "tuneforge_graphs")


def card_spec(name: str | None) -> tuple[float, float] | None:
    if not name:
        return None
    for fragment, flops, bandwidth in CARD_SPECS:
        if fragment.lower() in name.lower():
            return flops, bandwidth
    return None


# -- model, tokenizer, data ----------------------------------------------------------------------


def llama_config(shape: Shape) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.context,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        attn_implementation="sdpa",
    )


def build_model(shape: Shape, device: Any, dtype: Any) -> Any:
    """The same random weights every time (fixed seed), created directly on ``device``."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    with device:
        model = LlamaForCausalLM(llama_config(shape))
    model.to(dtype)
    model.generation_config.eos_token_id = None  # time a fixed amount of work: no early end
    model.generation_config.pad_token_id = PAD
    return model


def parameter_counts(shape: Shape) -> dict[str, int]:
    """Total parameters and those without the input embedding (its lookup reads one row, no matmul)."""
    head_dim = shape.hidden // shape.heads
    attention = shape.hidden * head_dim * (2 * shape.heads + 2 * shape.kv_heads)
    layer = attention + 3 * shape.hidden * shape.intermediate + 2 * shape.hidden
    embedding = shape.vocab * shape.hidden
    total = 2 * embedding + shape.layers * layer + shape.hidden
    return {"total": total, "non_embedding": total - embedding}


def make_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer over ``vocab`` ids (``<pad>``, ``<bos>``, ``<eos>``, ``t3`` ...): decodes anything."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, **{f"t{i}": i for i in range(3, vocab)}}
    core = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<pad>"
    )


def row_lengths(count: int, shape: Shape, seed: int = SEED) -> list[int]:
    """Lengths spread evenly on a log scale over [min_length, context]."""
    rng = random.Random(seed)
    low, high = math.log(shape.min_length), math.log(shape.context)
    return [min(shape.context, round(math.exp(rng.uniform(low, high)))) for _ in range(count)]


def make_examples(lengths: list[int], vocab: int, seed: int = SEED) -> list[Any]:
    from tuneforge.recipes.tokenising import Example

    rng = random.Random(seed + 1)
    examples = []
    for n in lengths:
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        examples.append(Example(input_ids=ids, labels=list(ids)))
    return examples


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - real / padded


def random_batches(count: int, batch: int, seed: int = SEED) -> list[list[int]]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch] for i in range(0, count, batch)]


# -- limits measured in the run ------------------------------------------------------------------


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: Any, seconds: float = 1.5) -> float:
    """Best FLOP/s of a square matmul: bf16 8192³ on a GPU, float32 1024³ on a CPU."""
    from tuneforge.recipes.performance import measured_peak_flops

    return measured_peak_flops(device.type, "bf16" if device.type == "cuda" else "fp32", seconds=seconds)


def copy_bandwidth(device: Any, seconds: float = 1.0) -> float:
    """Best bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    import torch

    nbytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    calls = 4
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            dst.copy_(src)
        synchronize(device)
        best = max(best, calls * 2 * nbytes / (time.perf_counter() - start))
    return best


# -- harness -------------------------------------------------------------------------------------


class Budget:
    def __init__(self, seconds: float) -> None:
        self.started = time.perf_counter()
        self.seconds = seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def exceeded(self) -> bool:
        return self.elapsed > self.seconds


def free_memory(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def run_interleaved(
    variants: dict[str, Callable[[int], dict[str, Any]]], repeats: int, budget: Budget, label: str
) -> dict[str, list[dict[str, Any]]]:
    """Run A B C, A B C, ...; a failure or the time budget ends a variant, never the script."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name, run in variants.items():
            runs = results[name]
            if runs and "error" in runs[-1]:
                continue
            if budget.exceeded:
                if not runs:
                    runs.append({"error": f"skipped: time budget of {budget.seconds:.0f} s used up"})
                continue
            started = time.perf_counter()
            try:
                outcome = run(repeat)
            except Exception as exc:  # fail soft: report it, go on with the other variants
                outcome = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-4000:]}
            outcome["wall_s"] = time.perf_counter() - started
            runs.append(outcome)
            shown = "FAILED " + outcome["error"][:200] if "error" in outcome else _brief(outcome)
            print(f"  {label} repeat {repeat + 1}/{repeats} {name:<20} {shown}", flush=True)
    return results


def _brief(outcome: dict[str, Any]) -> str:
    keys = ("tokens_per_s", "loss_last", "peak_memory_gb", "wall_s")
    return "  ".join(f"{k}={outcome[k]:.4g}" for k in keys if isinstance(outcome.get(k), (int, float)))


def good_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if "error" not in r]


# -- training ------------------------------------------------------------------------------------


class Clock:
    """Per-step timestamps with real tokens and the FLOPs they cost; time counts after ``warmup`` steps."""

    def __init__(self, device: Any, warmup: int, shape: Shape, n_params: int) -> None:
        self.device = device
        self.warmup = warmup
        self.shape = shape
        self.n_params = n_params
        self.marks: list[tuple[float, int, int, float]] = []  # time, real tokens, padded tokens, FLOPs
        self.losses: list[float] = []
        self.real = self.padded = 0
        self.flops = 0.0

    @property
    def steps(self) -> int:
        return len(self.marks)

    def step(self, row_lengths: list[int], padded_tokens: int, loss: float) -> None:
        synchronize(self.device)
        attention = 12 * self.shape.layers * self.shape.hidden
        self.real += sum(row_lengths)
        self.padded += padded_tokens
        self.flops += sum(6 * self.n_params * t + attention * t * t for t in row_lengths)
        self.marks.append((time.perf_counter(), self.real, self.padded, self.flops))
        self.losses.append(loss)

    def result(self) -> dict[str, Any]:
        if self.steps <= self.warmup:
            raise RuntimeError(f"only {self.steps} steps ran, not more than the {self.warmup} warm-up steps")
        (t0, r0, p0, f0), (t1, r1, p1, f1) = self.marks[self.warmup - 1], self.marks[-1]
        seconds = t1 - t0
        return {
            "tokens_per_s": (r1 - r0) / seconds,
            "flops_per_s": (f1 - f0) / seconds,
            "padding_fraction": 1 - (r1 - r0) / (p1 - p0),
            "steps_timed": self.steps - self.warmup,
            "seconds_timed": seconds,
            "loss_first": self.losses[0],
            "loss_last": self.losses[-1],
            "peak_memory_gb": peak_memory_gb(self.device),
        }


@dataclasses.dataclass
class TrainContext:
    shape: Shape
    device: Any
    n_params: int
    warmup: int
    timed: int
    examples: list[Any]
    tokenizer: Any

    @property
    def steps(self) -> int:
        return self.warmup + self.timed


def _autocast(device: Any) -> Any:
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_tuneforge(ctx: TrainContext, repeat: int) -> dict[str, Any]:
    """``recipes.loop.train`` on the variable-length rows, stopped (via the reporter) after ``steps`` steps.

    The data hold one batch more than the run takes: ``train`` checkpoints after its last step
    whatever ``checkpoint_every_steps`` says, and a full 1.1B checkpoint (weights + AdamW state,
    ~13 GB) would cost more time than the run; a stop requested before a step returns without one.
    """
    import torch

    from tuneforge.recipes.batching import collate, length_grouped_batches
    from tuneforge.recipes.loop import TrainingConfig, train
    from tuneforge.recipes.outputs import MetricsWriter

    free_memory(ctx.device)
    examples = ctx.examples[: ctx.shape.batch * (ctx.steps + 1)]
    lengths = [len(e.input_ids) for e in examples]
    batches = length_grouped_batches(lengths, ctx.shape.batch, SEED, 0)  # epoch 0's order, as train() builds it
    model = build_model(ctx.shape, ctx.device, torch.float32)
    clock = Clock(ctx.device, ctx.warmup, ctx.shape, ctx.n_params)

    parity: float | None = None
    if repeat == 0:  # the first step's loss, computed outside train(): same batch, same weights
        inputs = {k: v.to(ctx.device) for k, v in collate([examples[i] for i in batches[0]], PAD).items()}
        with torch.no_grad(), _autocast(ctx.device):
            parity = float(model(**inputs, use_cache=False).loss)
        del inputs

    class Reporter:
        def stage(self, stage: str, status: str) -> None: ...

        def log(self, message: str) -> None: ...

        def should_stop(self) -> bool:
            return clock.steps >= ctx.steps

        def progress(self, *, step: int, tokens_seen: int, loss: float, **_: Any) -> None:
            rows = [lengths[i] for i in batches[step - 1]]
            clock.step(rows, max(rows) * len(rows), loss)
            if tokens_seen != clock.real:
                raise RuntimeError(f"train() saw {tokens_seen} tokens, this script counted {clock.real}")

    config = TrainingConfig(
        epochs=1,
        batch_size=ctx.shape.batch,
        learning_rate=LR,
        warmup_steps=0,
        weight_decay=0.0,
        gradient_accumulation_steps=1,
        seed=SEED,
        checkpoint_every_steps=10**9,
        checkpoint_on_stop=False,
        length_grouping=True,
        precision="bf16",
        full_training=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        outcome = train(
            model,
            examples,
            config,
            Reporter(),  # type: ignore[arg-type]
            MetricsWriter(Path(tmp), "gpucheck0000"),
            Path(tmp) / "checkpoint",
            PAD,
        )
        if (Path(tmp) / "checkpoint").exists():
            raise RuntimeError("train() wrote a checkpoint inside the timed run")
    if not outcome.stopped:
        raise RuntimeError("train() ran to its end instead of stopping after the timed steps")
    result = clock.result()
    result["precision"] = config.precision
    if parity is not None:
        result["loss_parity_abs_diff"] = abs(parity - clock.losses[0])
    del model
    return result


def train_hf_trainer(ctx: TrainContext, repeat: int) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

    free_memory(ctx.device)
    model = build_model(ctx.shape, ctx.device, torch.float32)
    clock = Clock(ctx.device, ctx.warmup, ctx.shape, ctx.n_params)
    pending: dict[str, Any] = {}

    class TimedTrainer(Trainer):
        def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> torch.Tensor:
            mask = inputs["attention_mask"]
            pending["rows"] = [int(n) for n in mask.sum(dim=1).tolist()]
            pending["padded"] = int(mask.numel())
            loss: torch.Tensor = super().training_step(model, inputs, *rest, **kw)
            clock.step(pending["rows"], pending["padded"], float(loss.detach()))
            return loss

    data = [{"input_ids": e.input_ids, "labels": e.labels} for e in ctx.examples[: ctx.shape.batch * ctx.steps]]
    with tempfile.TemporaryDirectory() as tmp:
        arguments = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=ctx.shape.batch,
            max_steps=ctx.steps,
            learning_rate=LR,
            warmup_steps=0,
            lr_scheduler_type="cosine",
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=True,
            logging_steps=1_000_000,
            save_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            seed=SEED + repeat,
            use_cpu=ctx.device.type == "cpu",
            disable_tqdm=True,
        )
        trainer = TimedTrainer(
            model=model,
            args=arguments,
            train_dataset=data,
            data_collator=DataCollatorForSeq2Seq(ctx.tokenizer, padding=True, label_pad_token_id=-100),
        )
        trainer.remove_callback(PrinterCallback)  # its end-of-run dict would clutter the report
        trainer.train()
        result = clock.result()
        result["optimizer"] = str(getattr(arguments.optim, "value", arguments.optim))
    del trainer, model
    return result


def train_plain_full(ctx: TrainContext, repeat: int) -> dict[str, Any]:
    """A plain loop on rows of ``context`` real tokens each: the ceiling, no padding, no framework."""
    import torch

    free_memory(ctx.device)
    model = build_model(ctx.shape, ctx.device, torch.float32)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, fused=ctx.device.type == "cuda")
    generator = torch.Generator().manual_seed(SEED + repeat)
    clock = Clock(ctx.device, ctx.warmup, ctx.shape, ctx.n_params)
    rows = [ctx.shape.context] * ctx.shape.batch
    for _ in range(ctx.steps):
        ids = torch.randint(3, ctx.shape.vocab, (ctx.shape.batch, ctx.shape.context), generator=generator)
        ids = ids.to(ctx.device, non_blocking=True)
        with _autocast(ctx.device):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step(rows, sum(rows), float(loss.detach()))
    result = clock.result()
    del optimizer, model, params
    return result


# -- decoding ------------------------------------------------------------------------------------


@dataclasses.dataclass
class DecodeContext:
    shape: Shape
    device: Any
    model: Any
    tokenizer: Any
    prompt: list[int]
    new_tokens: int
    warmup: int


def _timed(device: Any, call: Callable[[], int]) -> tuple[float, int]:
    synchronize(device)
    start = time.perf_counter()
    produced = call()
    synchronize(device)
    return time.perf_counter() - start, produced


class DecodeVariant:
    """Set up lazily on its first run (after ``warmup`` untimed calls); each later run times one call."""

    def __init__(self, ctx: DecodeContext, setup: Callable[[], Callable[[], list[int]]]) -> None:
        self.ctx = ctx
        self.setup = setup
        self.call: Callable[[], list[int]] | None = None
        self.tokens: list[int] = []
        self.warmup_s = 0.0

    def __call__(self, repeat: int) -> dict[str, Any]:
        if self.call is None:
            started = time.perf_counter()
            self.call = self.setup()
            for _ in range(self.ctx.warmup):
                self.call()
            synchronize(self.ctx.device)
            self.warmup_s = time.perf_counter() - started
        call = self.call
        holder: dict[str, list[int]] = {}

        def run() -> int:
            holder["tokens"] = call()
            return len(holder["tokens"])

        seconds, produced = _timed(self.ctx.device, run)
        if produced != self.ctx.new_tokens:
            raise RuntimeError(f"produced {produced} tokens, not {self.ctx.new_tokens}")
        self.tokens = holder["tokens"]
        return {"tokens_per_s": produced / seconds, "seconds": seconds, "warmup_s": self.warmup_s}


def hf_generate(ctx: DecodeContext, **options: Any) -> Callable[[], Callable[[], list[int]]]:
    import torch

    def setup() -> Callable[[], list[int]]:
        ids = torch.tensor([ctx.prompt], device=ctx.device)

        def call() -> list[int]:
            out = ctx.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=ctx.new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=PAD,
                **options,
            )
            return [int(t) for t in out[0, ids.shape[1] :].tolist()]

        return call

    return setup


def engine_batcher(ctx: DecodeContext) -> Callable[[], Callable[[], list[int]]]:
    def setup() -> Callable[[], list[int]]:
        from tuneforge.engine.batching import ContinuousBatcher, Sequence
        from tuneforge.serving.protocol import GenerationRequest

        batcher = ContinuousBatcher(ctx.model, ctx.tokenizer, max_batch=1)
        batcher.eos_ids = set()  # a random model may emit <eos>: time the full length, like the others

        def call() -> list[int]:
            request = GenerationRequest(max_tokens=ctx.new_tokens, prompt="benchmark")
            sequence = Sequence(request, list(ctx.prompt), lambda _event: None)
            batcher.submit(sequence)
            while not sequence.cancelled.is_set():
                batcher.step()
            while batcher.running:  # retire the finished row, as the engine's loop does
                batcher.step()
            return list(sequence.generated)

        return call

    return setup


def static_decoder(ctx: DecodeContext, graphs: bool) -> Callable[[], Callable[[], list[int]]]:
    def setup() -> Callable[[], list[int]]:
        from tuneforge.engine.static_decode import StaticGreedyDecoder

        length = len(ctx.prompt) + ctx.new_tokens
        if not graphs:
            decoder = StaticGreedyDecoder(ctx.model, length)
        elif ctx.device.type == "cuda":
            decoder = StaticGreedyDecoder(ctx.model, length, compile_mode="reduce-overhead")
        else:  # no CUDA graphs on a CPU: trace the same step with dynamo, run it eagerly
            decoder = StaticGreedyDecoder(ctx.model, length, backend="eager")
        return lambda: decoder.generate(ctx.prompt, ctx.new_tokens)

    return setup


def mbu_bytes_per_token(shape: Shape, counts: dict[str, int], prompt: int, new_tokens: int) -> float:
    """bf16 weights read once per token (input embedding: one row) + the KV cache at the mean position."""
    head_dim = shape.hidden // shape.heads
    kv_per_position = 2 * shape.layers * shape.kv_heads * head_dim * 2
    mean_position = prompt + new_tokens / 2
    return 2 * counts["non_embedding"] + 2 * shape.hidden + kv_per_position * mean_position


# -- report --------------------------------------------------------------------------------------


MIN_EQUAL_PREFIX = 32
"""Greedy tokens a tuneforge decoder must share with HF ``generate`` before its speed counts."""


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "PASS" if value >= target else "FAIL"


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, runs in results.items():
        good = good_runs(runs)
        if not good:
            failed = runs[-1] if runs else {"error": "not run"}
            rows[name] = {"error": failed["error"], "traceback": failed.get("traceback")}
            continue
        row: dict[str, Any] = {"repeats": len(good)}
        for key in ("tokens_per_s", "flops_per_s", "padding_fraction", "peak_memory_gb", "loss_last", "seconds"):
            values = [r[key] for r in good if isinstance(r.get(key), (int, float))]
            if values:
                row[key] = stats(values)
        for key in ("loss_first", "loss_parity_abs_diff", "precision", "optimizer", "warmup_s", "steps_timed"):
            if key in good[0]:
                row[key] = good[0][key]
        rows[name] = row
    return rows


def ratio(rows: dict[str, Any], a: str, b: str) -> float | None:
    if "tokens_per_s" not in rows.get(a, {}) or "tokens_per_s" not in rows.get(b, {}):
        return None
    return float(rows[a]["tokens_per_s"]["median"] / rows[b]["tokens_per_s"]["median"])


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def print_report(train_rows: dict[str, Any], decode_rows: dict[str, Any], targets: dict[str, Any]) -> None:
    """The human tables: one row per variant (n = repeats that ran), then every target with its verdict."""
    header = f"{'n':>2} {'real tokens/s median [min, max]':<38}{'MFU spec':>9}{'MFU meas':>9}{'padding':>9}"
    print(f"\n{'training row':<20}{header}{'peak GB':>9}{'loss':>8}")
    for name, row in train_rows.items():
        if "error" in row:
            print(f"{name:<20}FAILED: {row['error'][:300]}")
            continue
        memory = row.get("peak_memory_gb", {}).get("median")
        shown_memory = "n/a" if memory is None else f"{memory:.1f}"
        print(
            f"{name:<20}{row['repeats']:>2} {fmt(row['tokens_per_s']):<38}{pct(row['mfu_spec']):>9}"
            f"{pct(row['mfu_measured_peak']):>9}{row['padding_fraction']['median']:>9.0%}{shown_memory:>9}"
            f"{row['loss_last']['median']:>8.3f}"
        )
    parity = train_rows.get("tuneforge", {}).get("loss_parity_abs_diff")
    if parity is not None:
        print(f"loss parity: tuneforge's first step vs a plain forward on the same batch: |diff| = {parity:.2e}")

    header = f"{'n':>2} {'tokens/s median [min, max]':<34}{'MBU':>8}{'MBU spec':>10}{'warm-up s':>11}"
    print(f"\n{'decoding row':<20}{header}")
    for name, row in decode_rows.items():
        if "error" in row:
            print(f"{name:<20}FAILED: {row['error'][:300]}")
            continue
        print(
            f"{name:<20}{row['repeats']:>2} {fmt(row['tokens_per_s'], precision=1):<34}{pct(row['mbu']):>8}"
            f"{pct(row['mbu_spec']):>10}{row.get('warmup_s', 0.0):>11.1f}"
        )

    print(f"\n{'target':<34}{'value':>10}{'target':>9}  status")
    for name, entry in targets.items():
        value, target = entry["value"], entry["target"]
        shown = "n/a" if value is None else (pct(value) if target < 1 else times(value))
        wanted = pct(target) if target < 1 else times(target)
        print(f"{name:<34}{shown:>10}{'>= ' + wanted:>9}  {entry['status']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--tiny", action="store_true", help="a small shape for a CPU smoke run")
    parser.add_argument("--quick", action="store_true", help="fewest steps and one repeat (smoke)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: min(8, cores); 2 on CPU)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="start no variant after this many seconds")
    parser.add_argument("--skip", default="", help="comma-separated variant names to leave out")
    args = parser.parse_args()

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = args.threads or (min(8, os.cpu_count() or 1) if device.type == "cuda" else 2)
    torch.set_num_threads(threads)
    shape = TINY if args.tiny else TINYLLAMA
    if device.type == "cpu" and not args.tiny:
        parser.error("the 1.1B shape needs a GPU (hours on a CPU); use --tiny --device cpu for a CPU smoke run")
    repeats = args.repeats or (1 if args.quick else 3)
    train_warmup, train_timed = (1, 2) if args.quick else (3, 12)
    decode_warmup = 1 if args.quick else 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    budget = Budget(args.budget_s)

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    spec = card_spec(card)
    counts = parameter_counts(shape)
    print(
        f"gpu check on {card or 'CPU'} ({device}), {threads} threads, "
        f"{'tiny shape' if args.tiny else 'TinyLlama-1.1B shape'}: {counts['total'] / 1e6:,.1f}M parameters, "
        f"{repeats} repeat(s) interleaved, budget {args.budget_s:.0f} s"
    )
    peak = matmul_peak(device)
    bandwidth = copy_bandwidth(device)
    spec_flops, spec_bandwidth = spec if spec else (None, None)
    spec_text = f"{spec[0] / 1e12:,.0f} TFLOP/s, {spec[1] / 1e12:.2f} TB/s" if spec else "none"
    print(f"measured: matmul {peak / 1e12:,.2f} TFLOP/s, copy bandwidth {bandwidth / 1e9:,.0f} GB/s; spec: {spec_text}")

    # ---- training
    tokenizer = make_tokenizer(shape.vocab)
    steps = train_warmup + train_timed
    lengths = row_lengths(shape.batch * (steps + 1), shape)
    from tuneforge.recipes.batching import length_grouped_batches

    grouped = length_grouped_batches(lengths, shape.batch, SEED, 0)
    ctx = TrainContext(shape, device, counts["non_embedding"], train_warmup, train_timed, [], tokenizer)
    ctx.examples = make_examples(lengths, shape.vocab)
    pad_random = padding_fraction(random_batches(len(lengths), shape.batch), lengths)
    pad_grouped = padding_fraction(grouped, lengths)
    print(
        f"\ntraining: batch {shape.batch}, rows of {shape.min_length}-{shape.context} tokens (log-uniform, mean "
        f"{sum(lengths) / len(lengths):.0f}), {train_warmup} warm-up + {train_timed} timed steps; padding: random "
        f"batches {pad_random:.0%}, length-grouped {pad_grouped:.0%}"
    )
    train_variants = {
        "tuneforge": lambda r: train_tuneforge(ctx, r),
        "hf_trainer": lambda r: train_hf_trainer(ctx, r),
        "plain_full": lambda r: train_plain_full(ctx, r),
    }
    train_results = run_interleaved(
        {k: v for k, v in train_variants.items() if k not in skip}, repeats, budget, "train"
    )
    free_memory(device)
    train_rows = summarize(train_results)
    for row in train_rows.values():
        if "flops_per_s" in row:
            achieved = row["flops_per_s"]["median"]
            row["mfu_measured_peak"] = achieved / peak
            row["mfu_spec"] = achieved / spec_flops if spec_flops else None

    # ---- decoding
    model = build_model(shape, device, torch.bfloat16).eval()
    prompt = [random.Random(SEED + 2).randrange(3, shape.vocab) for _ in range(shape.prompt)]
    dctx = DecodeContext(shape, device, model, tokenizer, prompt, shape.new_tokens, decode_warmup)
    decode_setups: dict[str, Callable[[], Callable[[], list[int]]]] = {
        "hf_default": hf_generate(dctx),
        "hf_static": hf_generate(dctx, cache_implementation="static", disable_compile=True),
        "tuneforge_engine": engine_batcher(dctx),
        "tuneforge_static": static_decoder(dctx, graphs=False),
        "tuneforge_graphs": static_decoder(dctx, graphs=True),
    }
    if device.type == "cuda":  # transformers compiles a static-cache generate by itself on CUDA only
        decode_setups["hf_static_compiled"] = hf_generate(dctx, cache_implementation="static")
    decoders = {name: DecodeVariant(dctx, setup) for name, setup in decode_setups.items() if name not in skip}
    bytes_per_token = mbu_bytes_per_token(shape, counts, shape.prompt, shape.new_tokens)
    print(
        f"\ndecoding: batch 1, {shape.prompt}-token prompt, {shape.new_tokens} new tokens, greedy, bf16; "
        f"{bytes_per_token / 1e9:.3f} GB read per token -> bound {bandwidth / bytes_per_token:,.0f} tokens/s "
        f"at the measured bandwidth"
    )
    decode_results = run_interleaved(dict(decoders), repeats, budget, "decode")
    decode_rows = summarize(decode_results)
    reference = decoders["hf_default"].tokens if "hf_default" in decoders else []
    for name, row in decode_rows.items():
        if "tokens_per_s" in row:
            tps = row["tokens_per_s"]["median"]
            row["mbu"] = tps * bytes_per_token / bandwidth
            row["mbu_spec"] = tps * bytes_per_token / spec_bandwidth if spec_bandwidth else None
            tokens = decoders[name].tokens
            same = next((i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b), len(tokens))
            row["tokens_equal_to_hf_default"] = same  # a prefix length: bf16 kernels may differ in rounding
    if device.type != "cuda" and "tuneforge_graphs" in decode_rows:
        decode_rows["tuneforge_graphs"]["note"] = "CPU: dynamo-traced step, eager backend, no CUDA graphs"

    # ---- targets
    targets: dict[str, Any] = {}
    tf = train_rows.get("tuneforge", {})
    targets["train_mfu_spec"] = {"value": tf.get("mfu_spec"), "target": TRAIN_TARGETS["mfu_spec"]}
    targets["train_vs_hf_trainer"] = {
        "value": ratio(train_rows, "tuneforge", "hf_trainer"),
        "target": TRAIN_TARGETS["vs_hf_trainer"],
    }
    for name in TUNEFORGE_DECODERS:
        row = decode_rows.get(name, {})
        targets[f"{name}_mbu"] = {"value": row.get("mbu"), "target": DECODE_TARGETS["mbu"]}
        targets[f"{name}_vs_hf_static"] = {
            "value": ratio(decode_rows, name, "hf_static"),
            "target": DECODE_TARGETS["vs_hf_static"],
        }
        targets[f"{name}_vs_hf_default"] = {
            "value": ratio(decode_rows, name, "hf_default"),
            "target": DECODE_TARGETS["vs_hf_default"],
        }
    for entry in targets.values():
        entry["status"] = verdict(entry["value"], entry["target"])
    # A fast decoder that writes the wrong tokens fails whatever its speed: greedy answers must agree
    # with HF generate's for at least MIN_EQUAL_PREFIX tokens (bf16 kernels may round apart later).
    for name in TUNEFORGE_DECODERS:
        row = decode_rows.get(name, {})
        equal = row.get("tokens_equal_to_hf_default")
        if equal is not None and equal < min(MIN_EQUAL_PREFIX, len(reference)):
            for key in (f"{name}_mbu", f"{name}_vs_hf_static", f"{name}_vs_hf_default"):
                targets[key]["status"] = f"FAIL (tokens differ from HF generate after {equal})"
    if device.type != "cuda":
        for entry in targets.values():
            entry["status"] += " (CPU run: targets are for H100/H200)"

    print_report(train_rows, decode_rows, targets)
    print(f"\nwall time {budget.elapsed:.0f} s")

    env = environment(threads)
    env.update(
        {
            "device": str(device),
            "card": card,
            "cuda_version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "driver": _driver_version() if device.type == "cuda" else None,
            "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        }
    )
    final_json(
        {
            "benchmark": "gpu_check",
            "env": env,
            "shape": dataclasses.asdict(shape),
            "tiny": args.tiny,
            "quick": args.quick,
            "parameters": counts,
            "repeats": repeats,
            "limits": {
                "matmul_flops_measured": peak,
                "copy_bandwidth_measured": bandwidth,
                "spec_flops": spec_flops,
                "spec_bandwidth": spec_bandwidth,
            },
            "training": {
                "warmup_steps": train_warmup,
                "timed_steps": train_timed,
                "padding_random_batches": pad_random,
                "padding_length_grouped": pad_grouped,
                "rows": train_rows,
            },
            "decoding": {"bytes_per_token": bytes_per_token, "rows": decode_rows},
            "targets": targets,
            "wall_s": budget.elapsed,
        }
    )


def _driver_version() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip() or None
    return None


if __name__ == "__main__":
    main()
