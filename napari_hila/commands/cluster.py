"""The Dask options extract and predict share: --scheduler ADDRESS or --workers N.

One task per slide; paths must be visible to the workers (a shared disk).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from napari_hila.commands.options import WORKERS_PER_CORE, scheduler_address, workers_value
from napari_hila.errors import HilaError

# Imported where used: distributed (optional, the cluster extra) and features.extract
# (torch, 2.7 s; every napari-hila command builds this parser, tests/test_startup_imports.py).


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scheduler ADDRESS`` or ``--workers N`` (one or the other)."""
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument(
        "--scheduler",
        type=scheduler_address,
        default=None,
        help="address of a running Dask scheduler (HOST:PORT or tcp://HOST:PORT): one task per slide",
    )
    cluster.add_argument(
        "--workers",
        type=workers_value,
        default=None,
        help=f"start a local Dask cluster with N worker processes (1 to {WORKERS_PER_CORE} per core)",
    )


def wants_cluster(args: argparse.Namespace) -> bool:
    return bool(args.scheduler or args.workers)


@contextlib.contextmanager
def cluster_client(args: argparse.Namespace, n_tasks: int) -> Iterator[object]:
    """A ``distributed.Client`` on ``--scheduler``, or on a local cluster of ``--workers``
    processes (no more than ``n_tasks``), each using its share of the cores."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise HilaError(
            "--scheduler/--workers need dask.distributed: pip install distributed"
        ) from err
    if args.scheduler:
        try:
            client = Client(args.scheduler, timeout="20s")
        except (OSError, ValueError, TypeError) as err:
            raise HilaError(
                f"cannot reach the Dask scheduler at {args.scheduler}: {err}; check the address "
                "the scheduler printed and that this machine can reach it"
            ) from err
        with client:
            yield client
        return
    from napari_hila.features.extract import THREADS_ENV, available_cores

    workers = max(1, min(args.workers, n_tasks))  # one task per slide: more would idle
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # each worker reads and encodes with its share of the cores, not all of them
            env={THREADS_ENV: str(max(1, available_cores() // workers))},
        )
    except (RuntimeError, OSError) as err:
        raise HilaError(
            f"could not start a local Dask cluster with {workers} workers ({err}); "
            "run without --workers to work in this process"
        ) from err
    with cluster, Client(cluster) as client:
        yield client
