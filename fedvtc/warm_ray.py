"""One Ray runtime and one pool of client actors for every cell of a multirun.

Flower's simulation starts Ray and a pool of ``ClientAppActor`` processes for each simulation and
shuts both down at its end, so a Hydra multirun of N cells pays N times the Ray start-up, the
actors' start (a fresh Python with torch in each) and every actor's dataset load. The actors
themselves hold no run state: every message brings its ClientApp and its context. So
``keep_warm()`` makes Flower's Ray backend keep Ray and the pool when a simulation ends and hand
them to the next simulation of this process that asks for the same client resources. Each cell is
still a complete Flower simulation (its own ServerApp, link state, nodes and contexts); only the
worker processes outlive it, with what they cache per process (the loaded dataset tensors).

Flower 1.42 has no public hook for this: the backend is chosen inside ``flwr.server.superlink.
fleet.vce.vce_api`` by importing ``RayBackend`` from its module at call time, so ``install``
replaces that module attribute with a subclass, which ``keep_warm`` switches to keeping.
``shutdown()`` (also run at exit) ends it all.

The same subclass (``install()``, for every simulation of this project, warm or not) also starts
Ray patiently: Ray 2.55 gives a new node's raylet a fixed 30 s to register with its GCS and gives up
otherwise, which happens on 2 busy cores (e.g. a test suite starting Flower deployments beside it).
A start that timed out is tried again, up to ``RAY_START_ATTEMPTS`` times.
"""

from __future__ import annotations

import atexit
import json
import logging
from typing import Any, Callable, TypeVar

log = logging.getLogger("fedvtc")

# Ray's own words when a new node's raylet did not register within its fixed 30 s.
RAY_START_TIMEOUT = "timed out during startup"
RAY_START_ATTEMPTS = 3

_installed = False
_keep = False
# The pool left by the last simulation, with the client resources it was made for.
_pool: Any = None
_pool_key: str | None = None


def _resources_key(backend: Any) -> str:
    return json.dumps({"resources": backend.client_resources, "actor": sorted(backend.actor_kwargs)}, sort_keys=True)


def _alive(pool: Any, timeout: float = 30.0) -> bool:
    """Whether every actor of ``pool`` answers (one may have died with its last client)."""
    import ray

    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool.pool], timeout=timeout)
    except Exception:  # a dead actor, a timeout: build a fresh pool
        return False
    return len(pool.pool) == pool.num_actors


T = TypeVar("T")


def start_patiently(start: Callable[[], T], clean_up: Callable[[], None], *, attempts: int = RAY_START_ATTEMPTS) -> T:
    """``start()``, tried again after ``clean_up()`` while it fails with Ray's start-up timeout (at
    most ``attempts`` tries); any other error, or the last timeout, is raised as it came."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as error:
            if RAY_START_TIMEOUT not in str(error) or attempt == attempts:
                raise
            log.warning("Ray did not start in time (try %d of %d: %s); starting it again", attempt, attempts, error)
            clean_up()
    raise AssertionError("unreachable")


def install() -> None:
    """Make Flower's simulations in this process start Ray patiently (idempotent; see above)."""
    global _installed
    if _installed:
        return
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend

    base = raybackend.RayBackend

    class PatientRayBackend(base):  # type: ignore[misc,valid-type]
        """Flower's Ray backend, starting Ray again when its start times out, and keeping Ray and
        its actors for the next simulation after ``keep_warm()``."""

        def init_ray(self, backend_config: Any) -> None:
            start_patiently(lambda: base.init_ray(self, backend_config), ray.shutdown)

        def build(self, app_fn: Callable[[], Any]) -> None:
            global _pool, _pool_key
            if not _keep:
                super().build(app_fn)
                return
            key = _resources_key(self)
            if _pool is not None and _pool_key == key and _alive(_pool):
                self.pool = _pool
                self.app_fn = app_fn
                log.debug("reusing %d warm client actors", _pool.num_actors)
                return
            _terminate_pool()
            super().build(app_fn)
            _pool, _pool_key = self.pool, key

        def terminate(self) -> None:
            """After ``keep_warm()``, keep Ray and the pool for the next simulation (``shutdown`` ends them)."""
            if not _keep:
                super().terminate()

    raybackend.RayBackend = PatientRayBackend
    _installed = True


def keep_warm() -> None:
    """From now on, simulations of this process share one Ray runtime and actor pool (idempotent)."""
    global _keep
    install()
    if not _keep:
        atexit.register(shutdown)
        _keep = True


def _terminate_pool() -> None:
    global _pool, _pool_key
    if _pool is not None:
        try:
            _pool.terminate_all_actors()
        except Exception:  # already gone
            pass
    _pool, _pool_key = None, None


def shutdown() -> None:
    """End the kept actors and Ray (at exit, or before a simulation that must start cold)."""
    _terminate_pool()
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
