"""Where a job's outputs go under its output location: Bedrock's layout, plus distillation's files.

Torch-free, because the API uses it too: GetModelCustomizationJob and GetCustomModel point users to
these files (the ``outputArtifacts`` extension), and the recipes write them here.

```
<outputDataConfig.s3Uri>/model-customization-job-<job-id>/
  training_artifacts/step_wise_training_metrics.csv
  training_artifacts/step_wise_performance_metrics.csv   (tuneforge: loss, tokens/s and MFU per step)
  validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv   (validator 0)
  validation_artifacts/post_fine_tuning_validation/validation_<i>/validation_metrics.csv  (i >= 1)
  distillation_artifacts/distillation_report.json        (DISTILLATION)
  distillation_artifacts/prompt_insights.json            (DISTILLATION)
  distillation_artifacts/synthetic_data_sample.jsonl     (DISTILLATION)
  tuning_artifacts/tuning_trials.csv                     (automatic tuning: one row a trial)
  training_artifacts/step_wise_preference_metrics.csv    (FINE_TUNING on preference data: DPO per step)
  validation_artifacts/post_fine_tuning_validation/validation[_<i>]/preference_metrics.csv  (DPO, held out)
  rft_artifacts/step_wise_reward_metrics.csv             (REINFORCEMENT_FINE_TUNING: reward, grader failures, KL, loss)
  rft_artifacts/reward_by_reference.csv                  (REINFORCEMENT_FINE_TUNING: mean reward per reference answer)
  rft_artifacts/validation_rewards.csv                   (REINFORCEMENT_FINE_TUNING with a validation set)
  rft_artifacts/rft_report.json                          (REINFORCEMENT_FINE_TUNING: reward at the start and the end)
```
"""

from __future__ import annotations

from tuneforge.catalog.models import DISTILLATION, REINFORCEMENT_FINE_TUNING

TRAINING_METRICS = "training_artifacts/step_wise_training_metrics.csv"
PERFORMANCE_METRICS = "training_artifacts/step_wise_performance_metrics.csv"
DISTILLATION_REPORT = "distillation_artifacts/distillation_report.json"
PROMPT_INSIGHTS = "distillation_artifacts/prompt_insights.json"
SYNTHETIC_DATA_SAMPLE = "distillation_artifacts/synthetic_data_sample.jsonl"
TUNING_TRIALS = "tuning_artifacts/tuning_trials.csv"
PREFERENCE_TRAINING_METRICS = "training_artifacts/step_wise_preference_metrics.csv"
RFT_REWARD_METRICS = "rft_artifacts/step_wise_reward_metrics.csv"
RFT_REWARD_BY_REFERENCE = "rft_artifacts/reward_by_reference.csv"
RFT_VALIDATION_REWARDS = "rft_artifacts/validation_rewards.csv"
RFT_REPORT = "rft_artifacts/rft_report.json"


def job_folder(job_id: str) -> str:
    """The folder of one job's outputs, named as Bedrock names it."""
    return f"model-customization-job-{job_id}"


def validation_metrics(validator: int) -> str:
    """Bedrock's path holds the first validator; later ones get their own folder, because Bedrock's
    header has no validator column to tell rows apart."""
    folder = "validation" if validator == 0 else f"validation_{validator}"
    return f"validation_artifacts/post_fine_tuning_validation/{folder}/validation_metrics.csv"


def preference_validation_metrics(validator: int) -> str:
    """DPO's held-out figures for one validator, beside its Bedrock validation metrics."""
    return validation_metrics(validator).rsplit("/", 1)[0] + "/preference_metrics.csv"


def output_artifacts(
    output_uri: str, job_id: str, customization_type: str, validators: int, tuned: bool = False
) -> dict[str, str]:
    """Name -> URI of every file a completed job of this type leaves under ``output_uri``."""
    root = f"{output_uri.rstrip('/')}/{job_folder(job_id)}"
    files = {"trainingMetrics": TRAINING_METRICS, "performanceMetrics": PERFORMANCE_METRICS}
    files.update({f"validationMetrics{i}": validation_metrics(i) for i in range(validators)})
    if customization_type == DISTILLATION:
        files.update(
            distillationReport=DISTILLATION_REPORT,
            promptInsights=PROMPT_INSIGHTS,
            syntheticDataSample=SYNTHETIC_DATA_SAMPLE,
        )
    if customization_type == REINFORCEMENT_FINE_TUNING:
        # Validation is a reward, not a loss: the validators' rewards go to one file of their own.
        files = {"trainingMetrics": TRAINING_METRICS, "performanceMetrics": PERFORMANCE_METRICS}
        files.update(rewardMetrics=RFT_REWARD_METRICS, rftReport=RFT_REPORT)
        if validators:
            files["validationRewards"] = RFT_VALIDATION_REWARDS
    if tuned:
        files["tuningTrials"] = TUNING_TRIALS
    return {name: f"{root}/{path}" for name, path in files.items()}
