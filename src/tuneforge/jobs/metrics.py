"""Customization-job gauges for Prometheus, read from the database at scrape time.

Workers already record each job's latest training progress (step, loss, tokens/s) in ``jobs.progress``
(and the full history in ``job_events``); this collector only reads it, so it adds nothing to the
training path and works the same whichever process or host the worker runs on.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from tuneforge.db.session import Database
from tuneforge.db.tables import Job

ALWAYS_REPORTED = (("InProgress", "queued"), ("InProgress", "running"))
"""Reported as 0 when empty, so that alerts on a queue that stays full have a series to look at."""


class JobsCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        with self.db.session() as session:
            counts = {
                (status, phase): count
                for status, phase, count in session.execute(
                    select(Job.status, Job.phase, func.count()).group_by(Job.status, Job.phase)
                ).all()
            }
            training = session.execute(
                select(Job.arn, Job.name, Job.progress).where(Job.status == "InProgress", Job.phase == "running")
            ).all()
        jobs = GaugeMetricFamily(
            "tuneforge_customization_jobs",
            "Model customization jobs by status and phase (queued, running, done).",
            labels=["status", "phase"],
        )
        for key in ALWAYS_REPORTED:
            counts.setdefault(key, 0)
        for (status, phase), count in sorted(counts.items()):
            jobs.add_metric([status, phase], count)
        tokens = GaugeMetricFamily(
            "tuneforge_training_tokens_per_second",
            "Training tokens per second a running job last reported.",
            labels=["job", "name"],
        )
        loss = GaugeMetricFamily(
            "tuneforge_training_loss", "Training loss a running job last reported.", labels=["job", "name"]
        )
        mfu = GaugeMetricFamily(
            "tuneforge_training_mfu",
            "Model FLOPs utilisation (0-1) a running job last reported, real tokens only.",
            labels=["job", "name"],
        )
        for arn, name, progress in sorted(training, key=lambda row: row.arn):
            if progress and "tokensPerSecond" in progress:
                tokens.add_metric([arn, name], float(progress["tokensPerSecond"]))
                loss.add_metric([arn, name], float(progress["loss"]))
                if "mfu" in progress:
                    mfu.add_metric([arn, name], float(progress["mfu"]))
        yield jobs
        yield tokens
        yield loss
        yield mfu
