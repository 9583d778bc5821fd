"""A run's W&B run: started in the run directory in the config's mode, resumed by its id, offline when the server
cannot be reached in time; and let go of when its service process has died with the job.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.config.schema import LoggingConfig

log = logging.getLogger(__name__)


def forget_wandb_service(run: Any) -> None:
    """Let go of a W&B service that has died: its own exit hook would otherwise print a traceback at exit."""
    import wandb  # W&B: only when it is on

    try:
        run.finish()
    except BaseException:  # noqa: BLE001 - the service is gone: nothing to finish
        pass
    try:
        wandb.teardown()
    except BaseException:  # noqa: BLE001 - the same (W&B's teardown calls sys.exit with the service's code)
        pass


def start_wandb(run_dir: Path, cfg: LoggingConfig, run_name: str, config: dict[str, Any], run_id: str,
                job_type: str | None = None):
    """A W&B run (in `cfg.wandb_mode`) kept in `run_dir`, resumed if `run_id` exists; online falls back to offline."""
    if cfg.wandb_mode == "disabled":
        return None
    import wandb  # heavy: only when W&B is on
    from wandb.errors import CommError

    # Keep W&B's console capture and background services quiet on clusters without internet.
    os.environ.setdefault("WANDB_SILENT", "true")
    init = functools.partial(
        wandb.init,
        project=cfg.wandb_project,
        entity=cfg.wandb_entity,
        group=cfg.wandb_group,
        name=cfg.wandb_name or run_name,
        tags=list(cfg.wandb_tags),
        job_type=job_type,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=config,
        settings=wandb.Settings(console="off", init_timeout=cfg.wandb_init_timeout_s),
    )
    if cfg.wandb_mode != "online":
        return init(mode=cfg.wandb_mode)
    try:
        return init(mode="online")
    except (CommError, TimeoutError) as error:  # no answer from the server, or W&B's own wait ran out
        server = wandb.setup().settings.base_url
        reason = " ".join(line.strip() for line in f"{type(error).__name__}: {error}".splitlines())
    # The failed run stays registered with W&B's service process, which would refuse its id again
    # ("run ID ... is in use"): shut down the service this process started, and leave one inherited from a
    # parent process (WANDB_SERVICE) to that parent, so that the offline init starts a fresh service.
    wandb.teardown()
    os.environ.pop(wandb.env.SERVICE, None)
    run = init(mode="offline")
    log.warning("could not start an online W&B run at %s within %g s (%s); continuing offline with the same "
                "run id %s: the files are kept in %s and can be synced later with `wandb sync %s`",
                server, cfg.wandb_init_timeout_s, reason, run_id, run.sync_dir, run.sync_dir)
    return run
