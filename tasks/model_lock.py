"""One fine-tune of a registered model at a time: the finetune flow holds a slot of the Prefect global
concurrency limit `bertflow-model:<model>` from its comparison with the champion through registration. A second
fine-tune of the same model started meanwhile (the weekly `sst2` deployment and an `on-demand` run of sst2, two
`bertflow run sst2` on one machine) waits, then compares with what the first registered: nothing changed, it
trains nothing.

    with one_finetune_at_a_time("bert-sst2", say):   # `say`s "waiting for another fine-tune ..." before it waits
        ...                                         # compare, train, evaluate, register

- The limit (limit 1) is created when missing: Prefect no longer creates limits on first use. One that exists is
  left as it is, so setting it inactive (UI: Concurrency -> Global) lets that model's fine-tunes overlap again.
  Prefect's names cannot hold "/"; ":" as in Prefect's own `tag:` limits.
- The slot is a lease of `LEASE_SECONDS` that Prefect renews from a thread while its holder lives. A holder that
  dies stops renewing, and the server's repossessor frees the slot once the lease ends.
- Prefect's temporary server (no PREFECT_API_URL: `bertflow run`, `bertflow suite` here) runs no repossessor and
  keeps leases in its own memory, while the slot count is in PREFECT_HOME's database, which all such processes
  share: a run killed while it held the slot (Ctrl-C stops its temporary server too) would keep it for ever. So
  there each holder first takes a file lock (`bert_core/file_lock.py`, released by the OS when its process dies)
  under PREFECT_HOME, and whoever gets that lock while the slot is still taken knows its holder is gone and frees
  it. This assumes no Prefect server shares that database (point PREFECT_API_URL at a server instead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prefect import get_client
from prefect.client.base import ServerType
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import flow_run
from prefect.settings import get_current_settings

from bert_core import file_lock

LIMIT_PREFIX = "bertflow-model:"
# How long a slot outlives a holder that died (plus the repossessor's 15 s loop); a live holder renews it every
# 3/4 of it. The trade: a rerun right after a crash waits this long at most before it resumes, while a shorter
# lease is renewed so often that a brief server outage more likely meets a renewal, which then gives up and leaves
# the slot unguarded. Five minutes (Prefect's default) is small next to a fine-tune of hours. (Prefect accepts
# 1 minute to 1 day.)
LEASE_SECONDS = 300
LOCAL_LOCKS = "bertflow-model-locks"  # under PREFECT_HOME, for the temporary server's runs


def limit_name(model: str) -> str:
    """The Prefect global concurrency limit of registered model `model`: `bertflow-model:bert-sst2`."""
    return LIMIT_PREFIX + model


@contextmanager
def one_finetune_at_a_time(model: str, say: Callable[[str], None]) -> Iterator[None]:
    """The slot of `model`'s limit, held for the block; waited for as long as it takes, after `say`ing so when it
    is not free at once."""
    name = limit_name(model)
    waiting = f"waiting for another fine-tune of {model} (Prefect concurrency limit '{name}')"
    with get_client(sync_client=True) as client:
        limit = ensure_limit(client, name)
        temporary_server = client.server_type == ServerType.EPHEMERAL
    if not limit.active:  # switched off in the UI: fine-tunes of this model may overlap
        yield
        return
    with ExitStack() as held:
        if temporary_server:
            held.enter_context(_local_lock(name, say, waiting))
            _free_if_orphaned(name, say)
        elif limit.active_slots >= limit.limit:
            # Read before asking: a slot taken in between makes this fine-tune wait without the line, no more.
            say(waiting)
        # A renewal that fails (server unreachable for a while) leaves the slot unguarded but the fine-tune going:
        # `strict` would stop hours of training for its lock.
        held.enter_context(concurrency(name, lease_duration=LEASE_SECONDS, strict=True,
                                       raise_on_lease_renewal_failure=False, holder=_holder()))
        yield


def ensure_limit(client: SyncPrefectClient, name: str) -> GlobalConcurrencyLimitResponse:
    """Limit `name` as it is, created with limit 1 if missing; one created meanwhile by another process is fine."""
    try:  # read first: a create that conflicts makes the server log a traceback (on the console, for `bertflow run`)
        return client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return create_limit(client, name)


def create_limit(client: SyncPrefectClient, name: str) -> GlobalConcurrencyLimitResponse:
    """Limit `name` created with limit 1; the one that exists if another process created it first."""
    try:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    except ObjectAlreadyExists:
        pass
    return client.read_global_concurrency_limit_by_name(name)


def local_lock_path(name: str) -> Path:
    """The file lock a temporary server's holder of limit `name` holds: under PREFECT_HOME, by its database."""
    folder = Path(get_current_settings().home) / LOCAL_LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.lock"


@contextmanager
def _local_lock(name: str, say: Callable[[str], None], waiting: str) -> Iterator[None]:
    path = local_lock_path(name)
    held = file_lock.try_acquire(path)
    if held is None:
        say(waiting)
        held = file_lock.acquire(path)
    with held:
        yield


def _free_if_orphaned(name: str, say: Callable[[str], None]) -> None:
    """With the file lock held, a slot still taken is one whose holder died without giving it back: freed."""
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
        if limit.active_slots:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
            say(f"freed the slot of Prefect concurrency limit '{name}': the fine-tune that held it ended without "
                "giving it back (killed?)")


def _holder() -> ConcurrencyLeaseHolder | None:
    """This flow run, as the slot's holder the server keeps with the lease (None outside a flow run)."""
    return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id) if flow_run.id else None
