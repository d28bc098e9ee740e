"""Several API replicas (``tuneforge serve`` processes) on one database: identity, liveness, leases.

Each replica registers a :class:`~tuneforge.db.tables.ReplicaRow` at start (a random id, the URL
its peers reach it at, host and pid) and heartbeats it three times per ``replica_lease_s``. A
replica is **dead** when its row is gone, its heartbeat is older than the lease, or it ran on this
host and its pid is gone (a replica killed outright on this host is seen at once, not after a lease).

Work is divided by compare-and-set, which SQLite and PostgreSQL both do atomically (an ``UPDATE ...
WHERE`` whose rowcount says who won, or an insert against a primary key):

- **jobs**: the supervisor's claim sets ``owner_replica`` in the same ``UPDATE ... WHERE phase =
  'queued'`` that takes the job (:mod:`tuneforge.jobs.supervisor`); a dead owner's running jobs are
  taken over with ``UPDATE ... WHERE owner_replica = <dead one>``;
- **engine groups** (``pt:<provisioned model id>``, ``od:<model>``): an
  :class:`~tuneforge.db.tables.EngineLease` per group, taken when absent, expired or held by a dead
  replica (:meth:`ReplicaRegistry.claim_group`), renewed by the holder's heartbeat, released when the
  holder stops or lets the group go.

The registry is control plane: it never imports torch.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from tuneforge.arns import new_id
from tuneforge.db.session import Database
from tuneforge.db.tables import EngineLease, ReplicaRow, utcnow
from tuneforge.settings import Settings

log = logging.getLogger(__name__)

SECRET_HEADER = "x-tuneforge-replica-secret"
"""The header a replica-to-replica call carries its credential in."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Peer:
    """Another live replica, as a forwarded request needs it."""

    id: str
    url: str
    credential: str


class ReplicaRegistry:
    """This process's replica row and its leases; thread-safe (every call is its own unit of work)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.id = new_id()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.url = settings.advertised_url
        self._token = None if settings.replica_secret else secrets.token_urlsafe(32)
        self._held_until: dict[str, datetime] = {}
        """Groups this replica holds, with the expiry it last wrote: until then nobody else may take
        them (a live replica is neither silent past the lease nor a dead pid), so a request for one
        needs no database read."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.replica_lease_s)

    @property
    def credential(self) -> str:
        """What callers must present to this replica's internal endpoint."""
        return self.settings.replica_secret or cast(str, self._token)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Register, then heartbeat (and renew this replica's leases) in a thread until :meth:`stop`."""
        with self.db.session() as session:
            session.add(ReplicaRow(id=self.id, url=self.url, hostname=self.host, pid=self.pid, token=self._token))
        log.info("replica %s registered at %s (pid %d on %s)", self.id, self.url, self.pid, self.host)
        self._thread = threading.Thread(target=self._loop, name="tuneforge-replica", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Deregister and let go of every lease, so the others take this replica's groups at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._held_until.clear()
        with self.db.session() as session:
            session.execute(delete(EngineLease).where(EngineLease.replica_id == self.id))
            session.execute(delete(ReplicaRow).where(ReplicaRow.id == self.id))

    def _loop(self) -> None:
        interval = self.settings.replica_lease_s / 3
        while not self._stop.wait(interval):
            try:
                self.heartbeat()
            except Exception:
                log.exception("replica heartbeat failed")

    def heartbeat(self) -> None:
        """Renew the row and every lease held; a row another replica removed is registered again."""
        now = utcnow()
        with self.db.session() as session:
            result = session.execute(update(ReplicaRow).where(ReplicaRow.id == self.id).values(heartbeat_at=now))
            if not cast(CursorResult[Any], result).rowcount:
                session.add(ReplicaRow(id=self.id, url=self.url, hostname=self.host, pid=self.pid, token=self._token))
            session.execute(
                update(EngineLease).where(EngineLease.replica_id == self.id).values(expires_at=now + self.lease)
            )
            held = set(session.scalars(select(EngineLease.group).where(EngineLease.replica_id == self.id)))
            # Rows of replicas dead for ten leases are history: their jobs and leases are taken over without them.
            session.execute(delete(ReplicaRow).where(ReplicaRow.heartbeat_at < now - 10 * self.lease))
        self._held_until = dict.fromkeys(held, now + self.lease)

    # -- liveness -------------------------------------------------------------------------------

    def is_live(self, row: ReplicaRow, now: datetime) -> bool:
        if row.id == self.id:
            return True
        if now - row.heartbeat_at > self.lease:
            return False
        return row.hostname != self.host or pid_alive(row.pid)

    def live_ids(self) -> set[str]:
        now = utcnow()
        with self.db.session() as session:
            return {row.id for row in session.scalars(select(ReplicaRow)) if self.is_live(row, now)} | {self.id}

    def peer(self, replica_id: str) -> Peer | None:
        """The live replica ``replica_id`` with its URL and the credential it accepts; None if it is dead."""
        now = utcnow()
        with self.db.session() as session:
            row = session.get(ReplicaRow, replica_id)
        if row is None or not self.is_live(row, now):
            return None
        return Peer(row.id, row.url, self.settings.replica_secret or row.token or "")

    # -- engine group leases --------------------------------------------------------------------

    def claim_group(self, group: str) -> str:
        """The live holder of ``group``'s lease, taking it for this replica when nobody live holds it.

        The take is a compare-and-set: an insert (the group is the primary key) or an update whose
        WHERE names the holder seen, so of two replicas racing for a group exactly one wins, and the
        loser answers the winner.
        """
        now = utcnow()
        held_until = self._held_until.get(group)
        if held_until is not None and held_until > now:
            return self.id
        with self.db.session() as session:
            lease = session.get(EngineLease, group)
            if lease is not None and lease.replica_id == self.id:
                self._held_until[group] = lease.expires_at
                return self.id
            if lease is not None and lease.expires_at > now:
                holder = session.get(ReplicaRow, lease.replica_id)
                if holder is not None and self.is_live(holder, now):
                    return lease.replica_id
        if lease is None:
            try:
                with self.db.session() as session:
                    session.execute(
                        insert(EngineLease).values(group=group, replica_id=self.id, expires_at=now + self.lease)
                    )
                log.info("replica %s: took engine group %s", self.id, group)
                self._held_until[group] = now + self.lease
                return self.id
            except IntegrityError:  # another replica inserted it first: answer whoever holds it now
                return self.claim_group(group)
        with self.db.session() as session:
            result = session.execute(
                update(EngineLease)
                .where(EngineLease.group == group, EngineLease.replica_id == lease.replica_id)
                .values(replica_id=self.id, expires_at=now + self.lease)
            )
            won = bool(cast(CursorResult[Any], result).rowcount)
        if won:
            self._held_until[group] = now + self.lease
            log.warning("replica %s: took over engine group %s from dead replica %s", self.id, group, lease.replica_id)
            return self.id
        return self.claim_group(group)

    def holder(self, group: str) -> str | None:
        """Who holds ``group``'s lease now, without taking it."""
        with self.db.session() as session:
            return session.scalar(select(EngineLease.replica_id).where(EngineLease.group == group))

    def holders(self) -> dict[str, str]:
        """Every lease: group -> holding replica."""
        with self.db.session() as session:
            return {lease.group: lease.replica_id for lease in session.scalars(select(EngineLease))}

    def release_group(self, group: str) -> None:
        self._held_until.pop(group, None)
        with self.db.session() as session:
            session.execute(delete(EngineLease).where(EngineLease.group == group, EngineLease.replica_id == self.id))

    def release_groups_except(self, keep: set[str], prefix: str) -> None:
        """Drop this replica's leases of ``prefix`` groups not in ``keep`` (deleted deployments)."""
        for group in [g for g in self._held_until if g.startswith(prefix) and g not in keep]:
            self._held_until.pop(group, None)
        with self.db.session() as session:
            session.execute(
                delete(EngineLease).where(
                    EngineLease.replica_id == self.id,
                    EngineLease.group.startswith(prefix),
                    EngineLease.group.not_in(sorted(keep)),
                )
            )
