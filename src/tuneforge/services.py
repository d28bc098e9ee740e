"""The service container: one object that wires settings, database, storage and services.

The API, the CLI and worker processes all build their services here, so each surface is a thin
edge over the same core.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.arns import ArnFactory
from tuneforge.catalog.custom import CustomModelService
from tuneforge.catalog.imported import ImportService
from tuneforge.catalog.service import Catalog
from tuneforge.db.listing import PageTokens
from tuneforge.db.session import Database
from tuneforge.graders import GraderContext
from tuneforge.jobs.evaluations import EvaluationJobService
from tuneforge.jobs.invocations import InvocationJobService
from tuneforge.jobs.knowledge_bases import KnowledgeBaseService
from tuneforge.jobs.memory import MemoryPlanner
from tuneforge.jobs.openai_files import FileService
from tuneforge.jobs.openai_fine_tuning import FineTuningService
from tuneforge.jobs.service import JobService
from tuneforge.launcher import Launcher
from tuneforge.serving.deployments import DeploymentService
from tuneforge.serving.invocation_logs import InvocationLogs
from tuneforge.serving.throughput import ThroughputService
from tuneforge.serving.usage import UsageMeter
from tuneforge.settings import Settings
from tuneforge.storage import ObjectStore
from tuneforge.tags import TagService


@dataclass
class Services:
    settings: Settings
    db: Database
    store: ObjectStore
    arns: ArnFactory
    catalog: Catalog
    jobs: JobService
    custom_models: CustomModelService
    imports: ImportService
    throughput: ThroughputService
    deployments: DeploymentService
    meter: UsageMeter
    invocation_logs: InvocationLogs
    page_tokens: PageTokens
    tags: TagService
    invocation_jobs: InvocationJobService
    evaluation_jobs: EvaluationJobService
    knowledge_bases: KnowledgeBaseService
    files: FileService
    fine_tuning: FineTuningService
    launcher: Launcher
    """Starts worker and engine processes; its fork server starts with the first of them."""

    @classmethod
    def create(cls, settings: Settings) -> Services:
        settings.ensure_dirs()
        db = Database(settings)
        store = ObjectStore.from_settings(settings)
        arns = ArnFactory(settings.region, settings.account_id)
        catalog = Catalog(db, store, arns)
        meter = UsageMeter(db)
        throughput = ThroughputService(db, catalog, arns, settings)
        invocation_jobs = InvocationJobService(db, store, arns, throughput)
        jobs = JobService(
            db, catalog, store, arns, MemoryPlanner(settings, catalog), GraderContext.for_checking(settings, store)
        )
        deployments = DeploymentService(db, catalog, arns, settings, meter)
        files = FileService(db, store, settings)
        return cls(
            settings=settings,
            db=db,
            store=store,
            arns=arns,
            catalog=catalog,
            jobs=jobs,
            custom_models=CustomModelService(db, settings.models_dir),
            imports=ImportService(db, store, arns, settings),
            throughput=throughput,
            deployments=deployments,
            meter=meter,
            invocation_logs=InvocationLogs(db, store, settings.account_id, settings.region),
            page_tokens=PageTokens.from_key_file(settings.data_dir / "pagination.key"),
            tags=TagService(db, settings),
            invocation_jobs=invocation_jobs,
            evaluation_jobs=EvaluationJobService(db, store, arns, invocation_jobs),
            knowledge_bases=KnowledgeBaseService(db, store, arns, settings),
            files=files,
            fine_tuning=FineTuningService(db, jobs, files, deployments, settings),
            launcher=Launcher(settings),
        )

    def close(self) -> None:
        self.launcher.close()
        self.db.dispose()
