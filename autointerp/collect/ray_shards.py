"""Shards of a collection as Ray tasks (the optional extra `autointerp[ray]`): one task per missing shard,
one GPU each when the collection runs on CUDA, retried when its worker dies or it fails with an error that
may pass (out of memory, I/O); the driver follows them and merges. Workers write shard files, never the
database, so the shard directory must be on storage every worker and the driver see."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from autointerp.config import CollectConfig
from autointerp.errors import AutointerpError, BadInput, InternalError
from autointerp.records import ProgressEvent, ProgressFn

RAY_EXTRA = "pip install 'autointerp[ray]'"
MAX_RETRIES = 2


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BadInput(f"--ray needs Ray, an optional extra that is not installed: {RAY_EXTRA} "
                       "(or run shards yourself with --shards N --shard-index I, then `autointerp merge`)") from None
    return ray


def _task(db: str, cfg_json: str, n_shards: int, index: int) -> dict[str, Any]:
    from autointerp.collect.shards import collect_shard

    out = collect_shard(db, CollectConfig.model_validate_json(cfg_json), n_shards, index)
    return dataclasses.asdict(out)


def gpus_per_task(cfg: CollectConfig, cluster_gpus: float) -> int:
    """cuda / cuda:N: one GPU per task (Ray picks it; the task sees it as cuda); auto: one when the cluster has
    GPUs; cpu, mps: none."""
    if cfg.device.startswith("cuda"):
        if cluster_gpus < 1:
            raise BadInput(f"--device {cfg.device} with --ray: the Ray cluster has no GPU")
        return 1
    return 1 if cfg.device == "auto" and cluster_gpus >= 1 else 0


def run(db: str | Path, cfg: CollectConfig, n_shards: int, pending: list[int], address: str | None,
        on_progress: ProgressFn | None = None, num_cpus: int | None = None) -> None:
    """Run shards `pending` as Ray tasks on the cluster at `address` (None: a local Ray on this machine's cores)."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise BadInput(f"cannot reach a Ray cluster at {address or 'a new local Ray'}: {exc}") from exc
    try:
        gpus = gpus_per_task(cfg, float(ray.cluster_resources().get("GPU", 0)))
        worker_cfg = cfg.model_copy(update={"device": "cuda"}) if cfg.device.startswith("cuda") else cfg
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=MAX_RETRIES,
                            retry_exceptions=[RuntimeError, OSError, MemoryError])(_task)
        where = str(Path(db).resolve())
        refs = {remote.remote(where, worker_cfg.model_dump_json(), n_shards, i): i for i in pending}
        done = n_shards - len(pending)
        if on_progress is not None:
            on_progress(ProgressEvent("shards", done, n_shards, "shard"))
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                index = refs.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, AutointerpError):
                        raise cause from None
                    raise InternalError(f"shard {index} failed (after up to {MAX_RETRIES} retries): {exc}") from exc
                except ray.exceptions.RayError as exc:  # the worker died more often than the retries allow
                    raise InternalError(f"shard {index} was lost (after {MAX_RETRIES} retries): {exc}. The other "
                                        "shards are kept: run the same command again to redo only the missing "
                                          "ones") from exc
                done += 1
                if on_progress is not None:
                    on_progress(ProgressEvent("shards", done, n_shards, "shard"))
    finally:
        if started:
            ray.shutdown()
