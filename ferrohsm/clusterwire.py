"""The cluster half of the composition root: how the processes sharing one store coordinate,
picked by store kind (README "Running several nodes")."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .audit.sinkbase import ChainedSink
from .config import Config
from .control.cluster import Cluster
from .datadir import ensure_private_dir
from .integrity.livesettle import LiveSettler
from .store.approvalstore import ApprovalStore
from .store.keystore import KeyStore
from .store.nodelock import FileLeader, FileMembership, FileNodeLeases, alone, node_waits
from .store.pg_shared import PostgresLeader, PostgresMembership, PostgresUsage
from .store.pgdb import dsn_from_env
from .store.sqlite_usage import SQLiteUsage


def open_cluster(config: Config) -> Cluster | None:
    """The coordination of a store several processes may share (sqlite, postgres); None for a
    store that belongs to one process (filesystem, memory)."""
    kind = config.storage.key_store
    if kind == "postgres":
        dsn = dsn_from_env(config.storage.postgres_dsn_env, os.environ)
        return Cluster(PostgresMembership(dsn, node_waits("the database")),
                       PostgresLeader(dsn), PostgresUsage(dsn))
    if kind != "sqlite":
        return None
    data = ensure_private_dir(config.storage.data_dir)
    return Cluster(FileMembership(data, node_waits(str(data))), FileLeader(data),
                   SQLiteUsage(data / "ratelimit.sqlite3"), leases=FileNodeLeases(data))


def settle_dead(cluster: Cluster | None, store: KeyStore, approvals: ApprovalStore | None,
                audit: ChainedSink, hmac_key: bytes) -> None:
    """Give the cluster its settling of dead nodes' intents (integrity/livesettle.py), which
    the scheduler's leader runs each tick; without per-node locks they wait for a cold start."""
    if cluster is not None and cluster.leases is not None:
        cluster.settle = LiveSettler(cluster.leases, store, approvals, audit, hmac_key)


@contextmanager
def offline_alone(config: Config, waiting: Callable[[], None] | None = None) -> Iterator[bool]:
    """What must not run beside a serving node (an offline backup, a restore, an offline
    rekey) holds the lock a starting node takes, for a store several processes share: True
    when no node is alive, and until the block ends a node started meanwhile waits; False
    (nothing held) when one is serving. The filesystem store's own lock refuses them instead.
    ``waiting()`` is called before a wait: a server's cold start may hold the turn for minutes."""
    kind = config.storage.key_store
    if kind == "sqlite" and Path(config.storage.data_dir).is_dir():
        with alone(config.storage.data_dir, waiting or node_waits(config.storage.data_dir)) as cold:
            yield cold
    elif kind == "postgres":
        membership = PostgresMembership(dsn_from_env(config.storage.postgres_dsn_env,
                                                     os.environ), waiting)
        try:
            yield membership.enter()
        finally:
            membership.close()
    else:
        yield True
