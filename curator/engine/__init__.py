"""Engines: one driver that owns the run store (``base.Engine``), the stages run where the engine says.

    from curator.engine import create_run, open_run
    engine = create_run(config, "runs/", engine="local")      # or engine="ray", ray_address="auto"
    engine.run()                                               # every class not done yet
    engine = open_run("runs/RUN_ID")                           # resume, with the engine it was made with

``local`` (default) runs the stages in this process, batching synthesis and candidates across
classes; ``ray`` runs groups of classes on Ray actors that load the models once, and writes their
results into the store as they arrive. Both give the same images, scores and picks.
"""

from __future__ import annotations

from curator.config import ConfigError
from curator.engine.base import Cancelled, Engine, ProgressFn
from curator.engine.local import LocalEngine
from curator.store import RunStore

ENGINES = ("local", "ray")


def engine_class(name: str) -> type[Engine]:
    """The engine called ``name``; a ConfigError names the valid ones (and says when Ray is missing)."""
    if name == "local":
        return LocalEngine
    if name == "ray":
        from curator.engine.ray import RayEngine  # imports ray, with a clear error if it is missing

        return RayEngine
    raise ConfigError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")


def create_run(config, root: str, run_id: str | None = None, *, engine: str = "local", **kwargs) -> Engine:
    """Create a run folder under ``root`` and the engine that runs it (see ``Engine.create``)."""
    return engine_class(engine).create(config, root, run_id, **kwargs)


def open_run(path, *, engine: str | None = None, **kwargs) -> Engine:
    """Reopen a run to resume it, with ``engine`` (default: the one it was made with)."""
    store = RunStore.open(path)
    try:
        cls = engine_class(engine or store.meta("engine", "local"))
        return cls(store, **kwargs)
    except BaseException:
        store.close()
        raise


__all__ = ["ENGINES", "Cancelled", "Engine", "LocalEngine", "ProgressFn", "create_run", "engine_class", "open_run"]
