"""Jobs on a Dask cluster: the client (shared with fits from files), the model loaded once
per worker, and the chunks run as tasks."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from .._files import BatchError
from ._scoring import _quiet, _with_backend
from ._shards import Chunk
from ._tasks import JobSpec, _run_chunk


# Models loaded on this worker process, by the model file's SHA-256: one load per worker.
_WORKER_MODELS: dict = {}
_WORKER_LOCK = threading.Lock()


def _worker_model(model_bytes, spec: JobSpec):
    with _WORKER_LOCK:
        model = _WORKER_MODELS.get(spec.model_sha256)
        if model is None:
            import tempfile

            from ..persistence import load

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.fzsl"
                path.write_bytes(model_bytes)
                model = _quiet(load(path))
            _WORKER_MODELS[spec.model_sha256] = model
    return model


def _dask_task(model_bytes, spec: JobSpec, chunk: Chunk, backend) -> int:
    model = _worker_model(model_bytes, spec)
    if backend is not None and getattr(model, "backend", None) != backend:
        _with_backend(model, backend)
    return _run_chunk(model, spec, chunk)


def worker_model_loads() -> int:
    """How many models this process loaded as a Dask worker (for tests and diagnostics)."""
    return len(_WORKER_MODELS)


@contextlib.contextmanager
def dask_client(scheduler, n_workers, log):
    """A ``distributed.Client`` for the body, closed afterwards: ``scheduler="local"``
    starts a ``LocalCluster`` of ``n_workers`` single-threaded worker processes (closed
    too), any other value is the address of a running scheduler. Yields ``(client,
    as_completed)``."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise BatchError("scheduler= needs dask.distributed: pip install 'fastzsl[dist]'") \
            from None
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        log(f"Dask: {len(client.scheduler_info()['workers'])} workers at "
            f"{client.scheduler.address}")
        yield client, as_completed
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run_on_dask(model_path, spec, todo, scheduler, n_workers, backend, bar, log):
    with dask_client(scheduler, n_workers, log) as (client, as_completed):
        # The model file travels once to every worker; tasks refer to it by key.
        model_bytes = client.scatter(Path(model_path).read_bytes(), broadcast=True)
        futures = [client.submit(_dask_task, model_bytes, spec, chunk, backend, pure=False,
                                 key=f"fastzsl-chunk-{spec.model_sha256[:12]}-{chunk.index}")
                   for chunk in todo]
        for future in as_completed(futures):
            bar.update(future.result())
