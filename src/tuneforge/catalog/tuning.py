"""Automatic hyperparameter tuning: the request syntax, its refusals, and the data-adaptive defaults.

A customization job's ``hyperParameters`` value may ask for a search instead of a value, on the
hyperparameters in :data:`SEARCHABLE`:

- ``"auto"``: search the default range of that hyperparameter (:data:`SEARCHABLE`);
- ``"LOW..HIGH"``: search between two values, inclusive (log scale for ``learningRate``);
- ``"A,B,C"``: choose among two or more values.

Two budget keys bound the search: ``tuningTrials`` (trials, 1 to 100) and ``tuningTimeBudgetMinutes``
(wall time of the trials, 1 to 10080). Both are refused when nothing is searched, and zero trials is
refused outright: a search without a trial would silently train the defaults.

This module is control-plane safe (no torch, no optuna): the API refuses a bad request at create
time from it, and the worker's search (:mod:`tuneforge.recipes.tuning`) reads the same
:class:`TuningRequest` back from the job's stored string map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuneforge.catalog.hyperparameters import HyperParameterError, HyperParameterSpec, HyperParameterValue

AUTO = "auto"
TRIALS_KEY = "tuningTrials"
TIME_BUDGET_KEY = "tuningTimeBudgetMinutes"
DEFAULT_TRIALS = 8
MAX_TRIALS = 100
DEFAULT_TIME_BUDGET_MINUTES = 60
MAX_TIME_BUDGET_MINUTES = 10_080
HOLDOUT_FRACTION = 0.1
"""Share of the training records held out to score the trials when the request has no validation set."""
PRUNER_STARTUP_TRIALS = 2
"""Trials that always run to the end before pruning starts: the median needs something to compare with."""
LOG_SCALE = frozenset({"learningRate"})
"""Searched on a log scale: a learning rate matters by its order of magnitude."""


@dataclass(frozen=True)
class SearchSpace:
    """One searched hyperparameter: a range (``low``..``high``) or a list of ``choices``."""

    name: str
    kind: str
    """``int`` or ``float`` (the spec's kind)."""
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[HyperParameterValue, ...] = ()

    @property
    def upper(self) -> float:
        """The largest value the search can pick: the memory plan assumes it."""
        if self.choices:
            return max(float(c) for c in self.choices if not isinstance(c, bool))
        return self.high

    def describe(self) -> str:
        if self.choices:
            return ",".join(str(c) for c in self.choices)
        return f"{_number(self.low)}..{_number(self.high)}{' (log)' if self.log else ''}"


SEARCHABLE: dict[str, str] = {
    "learningRate": "1e-4..1e-2",
    "epochCount": "1..6",
    "batchSize": "4,8,16,32",
    "learningRateWarmupSteps": "0..20",
    "loraRank": "4,8,16,32,64",
    "loraAlpha": "8..64",
    "loraDropout": "0..0.2",
    "weightDecay": "0..0.1",
}
"""Searchable hyperparameter -> the range ``"auto"`` searches. The rest (the training method,
sequence length, precision, seed...) change what is trained or how, not how well: they cannot be
searched."""


@dataclass(frozen=True)
class TuningRequest:
    spaces: tuple[SearchSpace, ...]
    trials: int
    time_budget_minutes: int

    def as_strings(self) -> dict[str, str]:
        """The budget keys, defaults filled, as the job stores and returns them."""
        return {TRIALS_KEY: str(self.trials), TIME_BUDGET_KEY: str(self.time_budget_minutes)}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{value:g}"


def _is_search(text: str) -> bool:
    return text == AUTO or ".." in text


def split(specs: tuple[HyperParameterSpec, ...], raw: dict[str, str]) -> tuple[dict[str, str], TuningRequest | None]:
    """Separate the searched values and budget keys from the plain ones.

    Returns the map :func:`~tuneforge.catalog.hyperparameters.resolve` checks (searched names left
    out, so their defaults fill in) and the search, or None when nothing is searched. Raises
    :class:`HyperParameterError` naming the key for a search on a value that cannot be searched, a
    malformed or out-of-range search, or a bad budget.
    """
    by_name = {spec.name: spec for spec in specs}
    plain: dict[str, str] = {}
    spaces: list[SearchSpace] = []
    for name, value in raw.items():
        if name in (TRIALS_KEY, TIME_BUDGET_KEY):
            continue
        text = value.strip()
        spec = by_name.get(name)
        if spec is None:
            plain[name] = value  # resolve() names it as unknown
        elif name in SEARCHABLE and (_is_search(text) or "," in text):
            spaces.append(_space(spec, SEARCHABLE[name] if text == AUTO else text))
        elif _is_search(text) and AUTO not in spec.choices:
            raise HyperParameterError(
                f'Hyperparameter {name} cannot be searched: "auto" and search ranges are accepted only on '
                f"{', '.join(n for n in SEARCHABLE if n in by_name)}"
            )
        else:
            plain[name] = value
    budget = {key: raw[key] for key in (TRIALS_KEY, TIME_BUDGET_KEY) if key in raw}
    if not spaces:
        if budget:
            raise HyperParameterError(
                f"Hyperparameter {', '.join(budget)} is used only when a hyperparameter is searched: "
                'set one of them to "auto" or a search range (docs/hyperparameters.md, "Automatic tuning")'
            )
        return plain, None
    trials = _budget(budget, TRIALS_KEY, DEFAULT_TRIALS, MAX_TRIALS)
    minutes = _budget(budget, TIME_BUDGET_KEY, DEFAULT_TIME_BUDGET_MINUTES, MAX_TIME_BUDGET_MINUTES)
    return plain, TuningRequest(spaces=tuple(spaces), trials=trials, time_budget_minutes=minutes)


def _budget(budget: dict[str, str], key: str, default: int, maximum: int) -> int:
    if key not in budget:
        return default
    try:
        value = int(budget[key].strip())
    except ValueError:
        raise HyperParameterError(f"Hyperparameter {key} must be an integer, got '{budget[key]}'") from None
    if not 1 <= value <= maximum:
        raise HyperParameterError(
            f"Hyperparameter {key} value {budget[key]} is out of range: must be between 1 and {maximum}"
        )
    return value


def _space(spec: HyperParameterSpec, text: str) -> SearchSpace:
    """Parse ``LOW..HIGH`` or ``A,B,...`` for ``spec``; every bound or choice must be a valid value of it."""
    if ".." in text:
        low_text, _, high_text = text.partition("..")
        try:
            low, high = float(spec.parse(low_text)), float(spec.parse(high_text))
        except HyperParameterError as exc:
            raise HyperParameterError(f"Hyperparameter {spec.name} search range '{text}' is invalid: {exc}") from None
        if not low < high:
            raise HyperParameterError(
                f"Hyperparameter {spec.name} search range '{text}' is invalid: the low end must be below the high end"
            )
        # learningRate's spec keeps it above 0, so its log scale is always defined.
        return SearchSpace(spec.name, spec.kind, low=low, high=high, log=spec.name in LOG_SCALE)
    try:
        choices = tuple(dict.fromkeys(spec.parse(part) for part in text.split(",")))
    except HyperParameterError as exc:
        raise HyperParameterError(f"Hyperparameter {spec.name} choices '{text}' are invalid: {exc}") from None
    if len(choices) < 2:
        raise HyperParameterError(
            f"Hyperparameter {spec.name} choices '{text}' are invalid: give two or more different values"
        )
    return SearchSpace(spec.name, spec.kind, choices=choices)


def planning_values(request: TuningRequest) -> dict[str, HyperParameterValue]:
    """The values the memory plan assumes: the largest batch and rank the search can pick."""
    out: dict[str, HyperParameterValue] = {}
    for space in request.spaces:
        if space.name in ("batchSize", "loraRank"):
            out[space.name] = math.floor(space.upper)
    return out


TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_ADAPTIVE_EPOCHS = 25


def adaptive_epochs(examples: int) -> int:
    """``epochCount`` when the request leaves it out, scaled with the dataset as OpenAI's ``auto`` does.

    3 epochs, unless that shows the model fewer than 100 examples in all (then 100 // examples,
    at most 25) or more than 25,000 (then 25,000 // examples, at least 1): a tiny dataset gets
    enough steps to learn anything, a huge one is not passed over three times for nothing.
    """
    if examples <= 0:
        return TARGET_EPOCHS
    if examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_ADAPTIVE_EPOCHS, MIN_TARGET_EXAMPLES // examples)
    if examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // examples)
    return TARGET_EPOCHS


def render_docs() -> str:
    """The "Automatic tuning" and "Defaults that fit the data" sections of docs/hyperparameters.md."""
    ranges = "\n".join(
        f"| `{name}` | `{text}`{' (log scale)' if name in LOG_SCALE else ''} |" for name, text in SEARCHABLE.items()
    )
    return f"""## Automatic tuning

Any customization job's `hyperParameters` value may ask for a search instead of a value, on these
hyperparameters (the rest change what is trained or how, not how well, and cannot be searched):

| name | `"auto"` searches |
|---|---|
{ranges}

- `"auto"`: the range above; `"LOW..HIGH"`: between two values, inclusive (`learningRate` on a log
  scale, the others uniformly, integers as integers); `"A,B,C"`: one of two or more values. Every
  bound and choice must be a valid value of the hyperparameter.
- Budget: `{TRIALS_KEY}` (1 to {MAX_TRIALS}, default {DEFAULT_TRIALS}) trials, within
  `{TIME_BUDGET_KEY}` (1 to {MAX_TIME_BUDGET_MINUTES}, default {DEFAULT_TIME_BUDGET_MINUTES}) minutes of
  trials; the final run is not counted.
- Refused at create time with a ValidationException naming the key, nothing created: `"auto"` or a
  range on a hyperparameter that cannot be searched, a malformed or out-of-range search, `{TRIALS_KEY}`
  0, and a budget key when nothing is searched. (`"auto"` keeps its own meaning on
  `gradientCheckpointing` and `precision`.)

**How it runs.** In the job's worker, during its training stage: Optuna's TPE sampler seeded with the
job's `seed` (the same job searches the same way), in memory. Each trial is a real run of the job's
recipe on the job's data with one sampled configuration, scored by the validation loss after its last
epoch. FINE_TUNING trials report the validation loss after every epoch to a median pruner (after
{PRUNER_STARTUP_TRIALS} complete trials, a trial worse than the median of earlier trials at the same epoch ends there);
the other types' trials run to the end. A trial that cannot train (out of memory, say) is
`failed`, not the job. The validation loss is the first validator's; without a validation set,
{HOLDOUT_FRACTION:.0%} of the training records (at least one, seeded shuffle) are held out to score the trials and the
final run trains on all of them. Then the best trial's configuration trains to completion and is
registered as any job's model, with the chosen values as its `hyperParameters` (the job keeps the
search as asked). Stop ends the running trial and every later one; the job ends `Stopped`.

**Where the trials are.** GetModelCustomizationJob's `tuning` member (a tuneforge extension:
`searchedHyperParameters`, `trialsRequested`, `timeBudgetMinutes`, `trials` and `bestTrialNumber`),
each trial `{{"trialNumber", "hyperParameters", "state", "validationLoss", "durationSeconds"}}` with
state `complete`, `pruned`, `failed` or `stopped`; the job's events (kind `trial`, one as each ends);
and `tuning_artifacts/tuning_trials.csv` under the job's output folder (`trial_number, params,
validation_loss, state, duration_seconds`, params as a JSON object). botocore drops members its
service model does not know, so boto3's `get_model_customization_job` has no `tuning`: read the raw
response,

```
curl -s $TUNEFORGE_ENDPOINT/model-customization-jobs/<job name or ARN> | jq .tuning
```

or the events (`/model-customization-jobs/<job>/events`), or the CSV.

## Defaults that fit the data

- **Epochs.** A FINE_TUNING job whose request leaves `epochCount` out gets OpenAI's `auto` epochs
  rule for its training records: {TARGET_EPOCHS}, unless that shows the model fewer than
  {MIN_TARGET_EXAMPLES} examples in all (then {MIN_TARGET_EXAMPLES} // records, at most
  {MAX_ADAPTIVE_EPOCHS}) or more than {MAX_TARGET_EXAMPLES:,} (then {MAX_TARGET_EXAMPLES:,} // records, at
  least 1). 20 records train 5 epochs, 10,000 train 2. The job log says what was chosen and the Get
  response shows it.
- **Early stopping.** With a validation set, FINE_TUNING measures the first validator's loss after
  every epoch (the job log shows each) and ends training once it has not improved for
  `earlyStoppingPatience` epochs (default 2; 0 = off), putting back the weights of the best epoch;
  the log says when and why it stopped. It cannot trigger with the 3 default epochs (the last epoch
  is measured by the final validation instead), only in longer runs.

Measured on a generated four-topic task (`tuneforge.data.tasks.make_topic_task`, seed 11; forge-small,
LoRA, defaults otherwise, 1 CPU thread, exact match on 200 held-out texts): 600 records train
3 epochs either way and reach 86% (the rule changes nothing at that size); 12 records reach 0% in
3 epochs and 6% in the 8 the rule gives; 20 records 0% in 3 and in 5. Where the defaults underfit a
task, search instead: on the demo task (forge-micro, full, 5 epochs, 200 records), a pinned learning
rate of 1e-5 scores 0% held-out; `learningRate` "auto" with three trials picked 7.5e-4 and scored
80% (`tests/e2e/test_hyperparameter_tuning.py` runs two trials, which pick 3.6e-3).
"""
