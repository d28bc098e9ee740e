"""Engine processes for provisioned throughputs and on-demand models: start, route, replace, stop.

Runs as one thread in the API process (like the job :class:`~tuneforge.jobs.supervisor.Supervisor`)
and never imports torch: each replica is ``python -m tuneforge.engine.server`` in its own process
session, forked by the launcher's fork server once that is ready (:mod:`tuneforge.launcher`). Every tick (0.25 s) it:

1. **polls** replicas: a status file says ``ready`` or ``failed``; a process that exits or does not
   load within ``engine_start_timeout_s`` has failed;
2. **reconciles** every live deployment row with its replicas: ``modelUnits`` replicas of the
   current model, plus as many of the desired model while ``Updating``;
   - ``Creating`` and all ready -> ``InService``; a replica that fails to load -> ``Failed`` with
     the engine's reason as ``failureMessage``;
   - ``Updating`` and all new replicas ready -> requests switch to them, then the old replicas
     **retire**: they finish what they are serving and stop (no request is dropped); a new replica
     that fails -> the update is abandoned, the old model keeps serving, ``failureMessage`` says why;
   - an ``InService`` replica that dies is replaced (after ``MAX_RESTARTS`` in a row, ``Failed``);
3. **reaps idle deployments**: one ``InService`` without requests for its idle timeout is deleted,
   with the reason recorded (committed deployments are exempt); an on-demand engine without
   requests for ``on_demand_idle_minutes`` is stopped (scale to zero);
4. **flushes** token counts into the usage ledger and buffered invocation logs to storage.

**On-demand engines** (group ``od:<model id>``) serve a foundation or imported model and, as a
multi-adapter engine (``--multi-adapter``, :mod:`tuneforge.engine.adapters`), every custom model
(LoRA adapter) of it, unmerged, one process per base. The first request starts the engine and waits
for it (:meth:`EngineManager.start_on_demand`, under the manager's lock: concurrent first requests
start exactly one); the time from spawn to ready is recorded per group (:class:`ColdStarts`, the
``tuneforge_engine_cold_start_seconds`` histogram). An on-demand engine that dies after it was ready
(killed, crashed) is forgotten, not failed: the requests it held fail with a retryable error and the
next request starts a fresh one.

**Several replicas** (docs/architecture.md, "Several API replicas"): with a
:class:`~tuneforge.replicas.ReplicaRegistry`, each group's engines run on the one replica that
holds its :class:`~tuneforge.db.tables.EngineLease`. Every tick this manager takes the lease of
each live provisioned throughput that nobody live holds (a new one, or a dead replica's), and
reconciles, reaps and meters only the groups it holds: a dead replica's throughputs are brought
back here, and idle deletion happens once, on the holder. An on-demand group's lease is taken by
the replica that gets its first request (it starts the engine; see :mod:`tuneforge.serving.runtime`)
and let go when its engine is stopped for idleness; engines of a group another replica took over
are stopped. Requests for a group held elsewhere are forwarded to the holder.

**Restart policy.** State lives in the database, replicas do not: after a server restart the first
tick starts fresh replicas for every live deployment (``Creating`` ones continue to ``InService``,
``InService`` ones answer ModelNotReadyException until a replica is ready again, an ``Updating``
one resumes its update). Engines of the previous server exit by themselves when it dies.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from tuneforge.arns import new_id
from tuneforge.db.tables import ProvisionedModel, utcnow
from tuneforge.errors import ServiceError
from tuneforge.launcher import ChildProcess, Launcher
from tuneforge.replicas import ReplicaRegistry
from tuneforge.serving.invocation_logs import InvocationLogs
from tuneforge.serving.throughput import ServedModel, ThroughputService
from tuneforge.serving.usage import UsageMeter
from tuneforge.settings import Settings

log = logging.getLogger(__name__)

TICK_S = 0.25
MAX_RESTARTS = 3
RETIRE_GRACE_S = 120.0
STOP_GRACE_S = 10.0
MAX_SOCKET_PATH = 100
"""Unix socket paths are limited to 108 bytes on Linux."""
ENGINE_MODULE = "tuneforge.engine.server"
COLD_START_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300)
"""Seconds from spawning an engine to its model being loaded and warmed up: 4-6 s for forge-small
on a shared 2-core CPU started with ``python -m`` (benchmarks/adapters_bench.py; mostly starting Python
and importing torch), much less when forked by the fork server; more for larger models."""


class ColdStarts:
    """Per group, a cumulative histogram of engine start times (spawn to ready): bounded memory, read
    at scrape time by :class:`tuneforge.serving.metrics.DeploymentCollector`."""

    def __init__(self, buckets: tuple[float, ...] = COLD_START_BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, group: str, seconds: float) -> None:
        with self._lock:
            counts = self._counts.setdefault(group, [0] * (len(self.buckets) + 1))
            for index, bound in enumerate(self.buckets):
                if seconds <= bound:
                    counts[index] += 1
            counts[-1] += 1
            self._sums[group] = self._sums.get(group, 0.0) + seconds

    def snapshot(self) -> dict[str, tuple[list[tuple[float, int]], float]]:
        """group -> ([(upper bound, cumulative count)..., (inf, total)], sum of seconds)."""
        with self._lock:
            return {
                group: ([*zip((*self.buckets, math.inf), counts, strict=True)], self._sums[group])
                for group, counts in self._counts.items()
            }


@dataclass(eq=False)
class Replica:
    id: str
    group: str
    """``pt:<provisioned model id>`` or ``od:<foundation model id>``."""
    model_arn: str
    socket_path: Path
    status_path: Path
    process: ChildProcess
    started: float = field(default_factory=time.monotonic)
    state: str = "starting"
    """starting | ready | failed | stopping"""
    failure: str | None = None
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    stop_sent: float | None = None


def pt_group(provisioned_model_id: str) -> str:
    return f"pt:{provisioned_model_id}"


def on_demand_group(model_id: str) -> str:
    return f"od:{model_id}"


class EngineManager:
    def __init__(
        self,
        settings: Settings,
        throughput: ThroughputService,
        meter: UsageMeter,
        logs: InvocationLogs,
        replicas: ReplicaRegistry | None = None,
        launcher: Launcher | None = None,
    ):
        self.settings = settings
        self.launcher = launcher or Launcher(settings)
        self.replicas = replicas
        self.throughput = throughput
        self.meter = meter
        self.logs = logs
        self._replicas: dict[str, Replica] = {}
        self._serving_arn: dict[str, str] = {}
        self._restarts: dict[str, int] = {}
        self._last_request: dict[str, float] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket_dir = self._choose_socket_dir()
        self.cold_starts = ColdStarts()

    def _choose_socket_dir(self) -> Path:
        folder = self.settings.engines_dir
        if len(str(folder / ("x" * 20))) <= MAX_SOCKET_PATH:
            return folder
        return Path(tempfile.mkdtemp(prefix="tuneforge-engines-"))

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tuneforge-engines", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop ticking, write what is buffered, and stop every engine."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._flush()
        with self._lock:
            replicas = list(self._replicas.values())
            self._replicas.clear()
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for replica in replicas:
            try:
                replica.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                replica.process.kill()
            self._remove_files(replica)
        if self._socket_dir != self.settings.engines_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("engine manager tick failed")
            self._stop.wait(TICK_S)

    def tick(self) -> None:
        self._poll()
        live = self._held(self.throughput.live())
        self._stop_orphans({row.id for row in live})
        for row in live:
            self._isolated(row, self._reconcile)
        self._retire()
        self.reap_idle(live)
        self._flush()

    def _held(self, live: list[ProvisionedModel]) -> list[ProvisionedModel]:
        """The live provisioned throughputs this replica holds the lease of, taking the unheld ones.

        Without a registry (one process per database) that is all of them. Leases of throughputs that
        are no longer live are let go, and on-demand engines of groups another replica now holds are
        stopped.
        """
        if self.replicas is None:
            return live
        me, holders = self.replicas.id, self.replicas.holders()
        alive = self.replicas.live_ids()
        held = []
        for row in live:
            group = pt_group(row.id)
            holder = holders.get(group)
            if holder == me or ((holder is None or holder not in alive) and self.replicas.claim_group(group) == me):
                held.append(row)
        wanted = {pt_group(row.id) for row in live}
        if any(g.startswith("pt:") and h == me and g not in wanted for g, h in holders.items()):
            self.replicas.release_groups_except(wanted, "pt:")
        for replica in self._all():
            holder = holders.get(replica.group)
            if replica.group.startswith("od:") and holder not in (None, me) and replica.state != "stopping":
                log.warning("%s: replica %s holds it now; stopping engine %s", replica.group, holder, replica.id)
                self._stop_replica(replica)
        return held

    @staticmethod
    def _isolated(row: ProvisionedModel, step: Callable[[ProvisionedModel], None]) -> None:
        """Run one deployment's step; a failure is logged with its id and the other deployments go on.

        One bad row (say an idle timeout that overflows a timedelta) used to end the tick for every
        deployment, on every tick: no idle deletion, no log flush, anywhere.
        """
        try:
            step(row)
        except Exception:
            log.exception("provisioned throughput %s (%s): housekeeping step failed", row.id, row.name)

    def _flush(self) -> None:
        try:
            self.meter.flush()
            self.logs.flush()
        except Exception:
            log.exception("flushing usage or invocation logs failed")

    # -- requests (event-loop thread) -----------------------------------------------------------

    def acquire(self, group: str) -> Replica | None:
        """The ready replica of the group's current model with the fewest requests in flight.

        A replica whose process has exited since the last tick is skipped: a request right after an
        engine was killed waits for its replacement instead of failing on the dead socket.
        """
        with self._lock:
            arn = self._serving_arn.get(group)
            ready = [
                r
                for r in self._replicas.values()
                if r.group == group and r.state == "ready" and r.model_arn == arn and r.process.poll() is None
            ]
            if not ready:
                return None
            replica = min(ready, key=lambda r: r.in_flight)
            replica.in_flight += 1
            return replica

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.in_flight -= 1
            replica.last_used = self._last_request[replica.group] = time.monotonic()

    def start_on_demand(self, served: ServedModel, group: str | None = None) -> str | None:
        """Make sure the shared engine of a foundation model is starting or ready.

        ``group`` is ``od:<foundation model id>`` by default: a multi-adapter engine of the base model
        that also answers every LoRA custom model deployed on it; a custom model trained in full gets
        ``od:<custom model arn>``, a plain engine of its own weights.
        Returns the failure message of the last attempt, if it failed (and forgets it, so the
        next request tries again).
        """
        group = group or on_demand_group(served.foundation.model_id)
        with self._lock:
            self._serving_arn[group] = served.arn
            for replica in [r for r in self._replicas.values() if r.group == group]:
                if replica.state == "ready" and replica.process.poll() is not None:
                    self._forget(replica)  # died since the last tick: start its replacement now
            mine = [r for r in self._replicas.values() if r.group == group]
            failed = [r for r in mine if r.state == "failed"]
            for replica in failed:
                self._forget(replica)
            if failed:
                return failed[0].failure
            if not any(r.state in ("starting", "ready") for r in mine):
                multi_adapter = group == on_demand_group(served.foundation.model_id)
                base = served.foundation.model_id if multi_adapter else None
                self._spawn(group, served.arn, served.source, multi_adapter_of=base)
        return None

    def replica_states(self, group: str) -> dict[str, int]:
        with self._lock:
            states: dict[str, int] = {}
            for replica in self._replicas.values():
                if replica.group == group:
                    states[replica.state] = states.get(replica.state, 0) + 1
            return states

    def replica_counts(self) -> dict[str, dict[str, int]]:
        """Replicas per group and state, for the metrics endpoint."""
        with self._lock:
            counts: dict[str, dict[str, int]] = {}
            for replica in self._replicas.values():
                states = counts.setdefault(replica.group, {})
                states[replica.state] = states.get(replica.state, 0) + 1
            return counts

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, group: str, model_arn: str, source: str, *, multi_adapter_of: str | None = None) -> Replica:
        """Start an engine; ``multi_adapter_of`` (the base's model id) makes it a multi-adapter engine."""
        rid = new_id()
        adapters = ["--multi-adapter", "--model-id", multi_adapter_of] if multi_adapter_of is not None else []
        socket_path = self._socket_dir / f"{rid}.sock"
        status_path = self.settings.engines_dir / f"{rid}.json"
        log_path = self.settings.logs_dir / f"engine-{rid}.log"
        self.settings.engines_dir.mkdir(parents=True, exist_ok=True)
        process = self.launcher.start(
            ENGINE_MODULE,
            ["--source", source, "--socket", str(socket_path), "--status", str(status_path), *adapters],
            log_path,
        )
        replica = Replica(rid, group, model_arn, socket_path, status_path, process)
        with self._lock:
            self._replicas[rid] = replica
        log.info("%s: started engine %s (pid %s) for %s", group, rid, process.pid, model_arn)
        return replica

    def _poll(self) -> None:
        now = time.monotonic()
        with self._lock:
            replicas = list(self._replicas.values())
        for replica in replicas:
            code = replica.process.poll()
            if replica.state == "stopping":
                if code is not None:
                    self._forget(replica)
                elif replica.stop_sent is not None and now - replica.stop_sent > STOP_GRACE_S:
                    replica.process.kill()
                continue
            if replica.state == "starting":
                status = None
                if replica.status_path.is_file():
                    try:
                        status = json.loads(replica.status_path.read_text())
                    except ValueError:
                        status = None
                if status and status.get("state") == "ready":
                    replica.state, replica.last_used = "ready", now
                    self.cold_starts.observe(replica.group, now - replica.started)
                    log.info("%s: engine %s ready after %.1f s", replica.group, replica.id, now - replica.started)
                elif status and status.get("state") == "failed":
                    self._failed(replica, str(status.get("message", "the engine failed to load the model")))
                elif code is not None:
                    self._failed(replica, f"the engine process exited with code {code} while loading the model")
                elif now - replica.started > self.settings.engine_start_timeout_s:
                    self._failed(replica, f"the model did not load within {self.settings.engine_start_timeout_s:g} s")
            elif replica.state == "ready" and code is not None and replica.group.startswith("od:"):
                log.warning(
                    "%s: engine %s exited with code %d; the next request starts another",
                    replica.group,
                    replica.id,
                    code,
                )
                self._forget(replica)
            elif replica.state == "ready" and code is not None:
                self._failed(replica, f"the engine process exited unexpectedly with code {code}")

    def _failed(self, replica: Replica, message: str) -> None:
        replica.state, replica.failure = "failed", message
        if replica.process.poll() is None:
            replica.process.kill()
        log.warning("%s: engine %s failed: %s", replica.group, replica.id, message)

    def _stop_replica(self, replica: Replica) -> None:
        if replica.state == "stopping":
            return
        if replica.process.poll() is None:
            replica.process.terminate()
        replica.state, replica.stop_sent = "stopping", time.monotonic()

    def _forget(self, replica: Replica) -> None:
        with self._lock:
            self._replicas.pop(replica.id, None)
        self._remove_files(replica)

    @staticmethod
    def _remove_files(replica: Replica) -> None:
        for path in (replica.socket_path, replica.status_path):
            path.unlink(missing_ok=True)

    def _group(self, group: str) -> list[Replica]:
        with self._lock:
            return [r for r in self._replicas.values() if r.group == group and r.state != "stopping"]

    # -- deployments ----------------------------------------------------------------------------

    def _stop_orphans(self, live_ids: set[str]) -> None:
        """Replicas of deployments that were deleted or failed."""
        with self._lock:
            replicas = list(self._replicas.values())
        for replica in replicas:
            if replica.group.startswith("pt:") and replica.group[3:] not in live_ids:
                if replica.state == "failed":
                    self._forget(replica)
                else:
                    self._stop_replica(replica)

    def _reconcile(self, row: ProvisionedModel) -> None:
        group = pt_group(row.id)
        with self._lock:
            self._serving_arn[group] = row.model_arn
        if not self._ensure(row, row.model_arn, standby=False):
            return
        if row.status == "Updating" and row.desired_model_arn != row.model_arn:
            self._ensure(row, row.desired_model_arn, standby=True)

    def _ensure(self, row: ProvisionedModel, model_arn: str, *, standby: bool) -> bool:
        """Keep ``model_units`` replicas of ``model_arn`` alive; returns False if the deployment failed."""
        group = pt_group(row.id)
        mine = [r for r in self._group(group) if r.model_arn == model_arn]
        failed = [r for r in mine if r.state == "failed"]
        for replica in failed:
            self._forget(replica)
        if failed:
            reason = f"A replica failed to load model {model_arn}: {failed[0].failure}"
            if standby:
                self.throughput.fail_update(row.id, reason)
                for replica in mine:
                    self._stop_replica(replica)
                return True
            self._restarts[group] = self._restarts.get(group, 0) + 1
            if row.status == "Creating" or self._restarts[group] >= MAX_RESTARTS:
                self.throughput.mark_failed(row.id, reason)
                for replica in self._group(group):
                    self._stop_replica(replica)
                return False
        alive = [r for r in mine if r.state in ("starting", "ready")]
        missing = row.model_units - len(alive)
        if missing > 0:
            try:
                source = self.throughput.resolve_model(model_arn).source
            except ServiceError as exc:
                reason = f"Cannot serve {model_arn}: {exc.message}"
                if standby:
                    self.throughput.fail_update(row.id, reason)
                else:
                    self.throughput.mark_failed(row.id, reason)
                return not standby
            for _ in range(missing):
                alive.append(self._spawn(group, model_arn, source))
        if len(alive) == row.model_units and all(r.state == "ready" for r in alive):
            self._restarts.pop(group, None)
            if standby and self.throughput.complete_update(row.id):
                with self._lock:
                    self._serving_arn[group] = model_arn
                log.info("%s: switched to %s", group, model_arn)
            elif not standby and row.status == "Creating":
                self.throughput.mark_in_service(row.id)
        return True

    def _retire(self) -> None:
        """Stop replicas whose model a deployment no longer serves, once they have drained."""
        now = time.monotonic()
        with self._lock:
            replicas = [r for r in self._replicas.values() if r.group.startswith("pt:") and r.state != "stopping"]
        wanted: dict[str, set[str]] = {}
        for row in self.throughput.live():
            wanted[pt_group(row.id)] = {row.model_arn, row.desired_model_arn}
        for replica in replicas:
            if replica.group not in wanted or replica.model_arn in wanted[replica.group]:
                continue
            if replica.in_flight == 0 or now - replica.last_used > RETIRE_GRACE_S:
                self._stop_replica(replica)

    def reap_idle(self, live: list[ProvisionedModel]) -> None:
        """Delete deployments idle for their timeout, each on its own; stop idle on-demand engines."""
        for row in live:
            self._isolated(row, self._reap_if_idle)
        mono = time.monotonic()
        idle_s = self.settings.on_demand_idle_minutes * 60
        for replica in [r for r in self._all() if r.group.startswith("od:")]:
            if replica.state == "ready" and replica.in_flight == 0 and mono - replica.last_used > idle_s:
                self._stop_replica(replica)
                serving = any(r.state in ("starting", "ready") for r in self._group(replica.group))
                if self.replicas is not None and not serving:
                    self.replicas.release_group(replica.group)

    def _reap_if_idle(self, row: ProvisionedModel) -> None:
        if row.status != "InService" or row.idle_timeout_s is None:
            return
        now = utcnow()
        group = pt_group(row.id)
        replicas = self._group(group)
        if any(r.in_flight for r in replicas):
            return
        marks = [t for t in (row.last_invocation_at, row.in_service_at) if t is not None]
        if group in self._last_request:
            marks.append(now - timedelta(seconds=time.monotonic() - self._last_request[group]))
        if not marks or now - max(marks) < timedelta(seconds=row.idle_timeout_s):
            return
        minutes = row.idle_timeout_s / 60
        try:
            self.throughput.delete(row.arn, reason=f"deleted by the idle timeout: no requests for {minutes:g} minutes")
        except ServiceError as exc:
            log.warning("%s: idle deletion refused: %s", group, exc.message)
            return
        log.warning("%s: deleted after %g idle minutes", row.name, minutes)
        for replica in replicas:
            self._stop_replica(replica)

    def _all(self) -> list[Replica]:
        with self._lock:
            return list(self._replicas.values())
