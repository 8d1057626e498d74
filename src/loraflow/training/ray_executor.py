"""TRAINING_EXECUTOR=ray: a claimed job trains in a Ray actor on a node of the cluster.

The actor runs the same code as the local worker (`worker.run_job`): it reads the job row,
trains, and writes progress, loss, eval loss, ETA, checkpoints and the outcome into the job
row and the job's folder itself, through the database URL it is handed. So the API, the CLI
and the UI read a Ray job exactly as a local one. Files travel through a storage root that
the service and every Ray node see at the same paths (the data dir's training output,
uploads and the model cache); the actor checks that it sees them before it trains.

The actor is detached and named `loraflow-job-<id>` (namespace `loraflow`): it outlives a
restart of the service that started it, which follows it again on its next start. While it
trains it renews the job's lease, so no service marks it interrupted. Cancel is the job
row's `cancel_requested`, which the actor's training loop polls each step (the last
checkpoint is saved); an actor that does not stop within CANCEL_GRACE_S is killed. A node
that dies takes the actor with it: the job becomes failed and resumable, naming the node.

Ray is imported only here and only when this executor is used (`pip install 'loraflow[ray]'`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from loraflow.errors import ConfigError
from loraflow.training import jobs
from loraflow.training.runner import CANCEL_GRACE_S, LOG_NAME

log = logging.getLogger(__name__)
NAMESPACE = "loraflow"
_POLL_S = 0.5
_STATUS_EVERY_S = 2.0


def actor_name(job_id: int) -> str:
    return f"loraflow-job-{job_id}"


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "TRAINING_EXECUTOR=ray needs Ray, which is not installed",
            hint="pip install 'loraflow[ray]' (with -c constraints.txt in a checkout)",
        ) from exc
    return ray


def shared_paths(job: dict[str, Any]) -> list[Path]:
    """The files a job reads and the folder it writes: all must be on the shared root."""
    params = job["training_params"]
    paths = [Path(params["base_model_path"]), Path(params["dataset_path"])]
    for key in ("val_path", "init_adapter_path"):
        if params.get(key):
            paths.append(Path(params[key]))
    paths.append(Path(job["output_path"]))
    return paths


def connect(address: str) -> Any:
    """The `ray` module, with this process connected to the cluster at `address` (once)."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(
                address=address or "auto",
                namespace=NAMESPACE,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError
            raise ConfigError(
                f"cannot reach the Ray cluster at {address or 'auto'}: {exc}",
                hint="start one (ray start --head) or set RAY_ADDRESS to its head",
            ) from exc
    return ray


class TrainingActor:
    """Trains one job on the node Ray placed it on (created detached, one per job)."""

    def __init__(self) -> None:
        import threading

        self._thread: threading.Thread | None = None
        self._status: str | None = None
        self._error: str | None = None

    def where(self) -> dict[str, Any]:
        import os

        import ray

        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "actor_id": ctx.get_actor_id(),
        }

    def start(
        self,
        db_url: str,
        job_id: int,
        lease_s: float,
        workers: int = 1,
        per_worker: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Check the shared storage, record the node in the job, and start training.

        With `workers` > 1 this actor drives a Ray Train `TorchTrainer` whose workers (each
        asking `per_worker`) run the job's ranks; else it trains the job itself.
        """
        import threading

        from loraflow.db import make_engine

        db = make_engine(db_url, migrate=False)
        job = jobs.get_job(db, job_id)
        here = self.where()
        node = f"{here['ip']}/{here['node_id']}"
        if job["status"] != "running":
            # Placed after the job was cancelled or marked interrupted: nothing to train.
            self._status = str(job["status"])
            self._exit_soon()
            return here
        missing = [str(p) for p in shared_paths(job) if not p.exists()]
        if missing:
            error = (
                f"the Ray node {node} does not see {', '.join(missing)}: TRAINING_EXECUTOR=ray "
                "needs the data dir (uploads, training output) and the model cache on storage "
                "that every node mounts at the same path (see docs/OPERATIONS.md)"
            )
            jobs.update_job(
                db,
                job_id,
                where_status=("running",),
                status="failed",
                error=error,
                message=f"failed: {error}",
                resumable=True,
                completed_at=jobs.now(),
                node=node,
            )
            self._status = "failed"
            self._exit_soon()
            return here
        out = Path(job["output_path"])
        out.mkdir(parents=True, exist_ok=True)
        with open(out / LOG_NAME, "a", encoding="utf-8") as log_file:
            log_file.write(
                f"{jobs.now().isoformat()} started on Ray node {node} "
                f"(actor {here['actor_id']}, pid {here['pid']})\n"
            )
        jobs.update_job(
            db,
            job_id,
            where_status=("running",),
            node=node,
            pid=here["pid"],
            heartbeat_at=jobs.now(),
            message=f"starting on Ray node {here['ip']}",
        )
        if workers > 1:
            target: Any = self._train_ranks
            args: tuple[Any, ...] = (db, db_url, job_id, lease_s, workers, per_worker or {})
        else:
            target, args = self._train, (db, job_id, lease_s)
        self._thread = threading.Thread(
            target=target, args=args, name="loraflow-train", daemon=True
        )
        self._thread.start()
        return here

    def _train(self, db: Engine, job_id: int, lease_s: float) -> None:
        from loraflow.training.worker import run_job

        try:
            self._status = run_job(db, job_id, None, False, lease_s=lease_s)
        except BaseException as exc:  # recorded for the service; the job row says why
            self._error = f"{type(exc).__name__}: {exc}"
            self._status = "failed"
        finally:
            db.dispose()
        # The outcome is in the job row; the actor (detached) frees its node's resources
        # whether or not a service still follows it.
        self._exit_soon()

    def _train_ranks(
        self,
        db: Engine,
        db_url: str,
        job_id: int,
        lease_s: float,
        workers: int,
        per_worker: dict[str, float],
    ) -> None:
        """Run the job's ranks as the workers of a TorchTrainer (DDP across nodes)."""
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from loraflow.training.trainer import CHECKPOINTS
        from loraflow.training.worker import Heartbeat

        out = Path(jobs.get_job(db, job_id)["output_path"])
        ray_runs = out / CHECKPOINTS / "ray_train"
        scaling = ScalingConfig(
            num_workers=workers,
            use_gpu=per_worker.get("GPU", 0) > 0,
            resources_per_worker={k: v for k, v in per_worker.items() if v},
        )
        trainer = TorchTrainer(
            _rank_loop,
            train_loop_config={"db_url": db_url, "job_id": job_id, "lease_s": lease_s},
            scaling_config=scaling,
            # Ray Train's own run records, beside the Trainer's checkpoints (run state, not
            # part of the adapter); the job's checkpoints are the Trainer's, as ever.
            run_config=RunConfig(name=f"run-{int(time.time())}", storage_path=str(ray_runs)),
        )
        error: str | None = None
        try:
            with Heartbeat(db, job_id, lease_s):
                result = trainer.fit()
            if result.error is not None:
                error = f"{type(result.error).__name__}: {result.error}"
        except Exception as exc:  # a rank failed, or its node died
            error = f"{type(exc).__name__}: {exc}"
        # Ray Train's run records only: no checkpoint is reported to it.
        shutil.rmtree(ray_runs, ignore_errors=True)
        job = jobs.get_job(db, job_id)
        if job["status"] == "running":
            # The ranks ended without recording an outcome: a crash, a kill or a dead node.
            from loraflow.training.trainer import checkpoint_kept

            _, kept = checkpoint_kept(out)
            why = (error or "the Ray Train workers ended without an outcome").splitlines()[0]
            jobs.update_job(
                db,
                job_id,
                where_status=("running",),
                status="failed",
                error=f"the Ray Train run failed: {why}",
                message=f"failed: the Ray Train run failed; {kept}; resume to continue",
                resumable=True,
                completed_at=jobs.now(),
                pid=None,
                eta_seconds=None,
            )
        self._status = str(jobs.get_job(db, job_id)["status"])
        self._error = error
        db.dispose()
        self._exit_soon()

    def _exit_soon(self, delay: float = 3.0) -> None:
        """End this detached actor after `delay` s (time for a follower's last look)."""
        import threading

        import ray

        me = ray.get_runtime_context().current_actor

        def end() -> None:
            time.sleep(delay)
            ray.kill(me, no_restart=True)

        threading.Thread(target=end, name="loraflow-actor-exit", daemon=True).start()

    def status(self) -> dict[str, Any]:
        running = self._thread is not None and self._thread.is_alive()
        return {
            "done": self._status is not None and not running,
            "status": self._status,
            "error": self._error,
        }


def _rank_loop(config: dict[str, Any]) -> None:
    """One rank of a TorchTrainer run: the launched worker's code (rank 0 reports)."""
    import ray.train

    from loraflow.db import make_engine
    from loraflow.training.worker import run_job

    rank = ray.train.get_context().get_world_rank()
    db = make_engine(config["db_url"], migrate=False)
    try:
        job = jobs.get_job(db, config["job_id"])
        missing = [str(p) for p in shared_paths(job) if not p.exists()]
        node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()}"
        if missing:
            raise RuntimeError(
                f"the Ray node {node} of rank {rank} does not see {', '.join(missing)}: "
                "every node needs the shared storage root at the same path"
            )
        if rank == 0:  # where the reporting rank trains
            jobs.update_job(db, config["job_id"], where_status=("running",), node=node)
        status = run_job(db, config["job_id"], None, False, rank=rank, lease_s=config["lease_s"])
    finally:
        db.dispose()
    if status not in ("completed", "cancelled"):
        # Fails the run, so Ray Train stops the other ranks instead of leaving them waiting.
        raise RuntimeError(f"rank {rank} ended {status}")


def workers_of(job: dict[str, Any]) -> int:
    """How many Ray Train workers a job runs in: its launcher's processes, else one."""
    params = job["training_params"]
    if params.get("launcher", "none") == "none":
        return 1
    return max(1, int(params.get("num_processes", 1)))


class RayExecutor:
    """Runs claimed jobs as detached Ray actors and follows them until they end."""

    name = "ray"

    def __init__(
        self,
        db: Engine,
        db_url: str,
        *,
        address: str = "",
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        resources: dict[str, float] | None = None,
        max_jobs: int = 4,
        lease_s: float = jobs.LEASE_S,
    ) -> None:
        self.db, self.db_url, self.address = db, db_url, address
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.resources = dict(resources or {})
        self.slots = max_jobs
        self.lease_s = lease_s
        self._ray: Any = None

    # -- the cluster ---------------------------------------------------------------------
    def connect(self) -> Any:
        """Connect this process to the cluster once (the service is a Ray driver)."""
        if self._ray is None:
            self._ray = connect(self.address)
        return self._ray

    def request(self) -> dict[str, float]:
        """What one job asks of the cluster."""
        return {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}

    # -- running and following -----------------------------------------------------------
    def run(self, job: dict[str, Any], stopping: Callable[[], bool]) -> dict[str, Any]:
        job_id = int(job["id"])
        try:
            ray = self.connect()
        except ConfigError as exc:
            return self._fail(job_id, exc.message, resumable=True)
        self._kill_named(job_id)  # a previous run's actor (cancelled or failed) must be gone
        # Made here, so the node's check proves it sees what this service writes.
        Path(job["output_path"]).mkdir(parents=True, exist_ok=True)
        workers = workers_of(job)
        # A TorchTrainer's driver asks for nothing: each of its workers asks for the request.
        alone = workers == 1
        actor_cls = ray.remote(TrainingActor).options(
            name=actor_name(job_id),
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=self.num_cpus if alone else 0,
            num_gpus=self.num_gpus if alone else 0,
            resources=(self.resources or None) if alone else None,
            max_restarts=0,
            max_concurrency=4,
        )
        actor = actor_cls.remote()
        asked = self.request() if alone else {**self.request(), "workers": float(workers)}
        where = f"a Ray node with {_describe(self.request())}"
        if not alone:
            where = f"{workers} Ray Train workers, each with {_describe(self.request())}"
        jobs.update_job(
            self.db,
            job_id,
            where_status=("running",),
            executor="ray",
            resources=asked,
            ray_id=actor._actor_id.hex(),
            node=None,
            message=f"waiting for {where}",
        )
        started = actor.start.remote(self.db_url, job_id, self.lease_s, workers, self.request())
        return self._follow(job_id, actor, started, stopping)

    def _follow(
        self, job_id: int, actor: Any, started: Any, stopping: Callable[[], bool]
    ) -> dict[str, Any]:
        """Wait for the actor's job to end, renewing the lease and passing cancel on."""
        ray = self._ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        renewed = checked = time.monotonic()
        cancel_at: float | None = None
        while True:
            job = jobs.get_job(self.db, job_id)
            if job["status"] != "running":
                # The actor ends itself once its run is over (a Ray Train run first gives its
                # workers' resources back): killing it now could strand them.
                return job
            if stopping():
                # The actor trains on and renews the lease; the next start follows it again.
                return job
            if time.monotonic() - renewed > self.lease_s / 4:
                jobs.renew_lease(self.db, job_id)
                renewed = time.monotonic()
            try:
                if started is not None:
                    ready, _ = ray.wait([started], timeout=0)
                    if ready:
                        ray.get(started)
                        started = None
                elif time.monotonic() - checked > _STATUS_EVERY_S:
                    checked = time.monotonic()
                    state = ray.get(actor.status.remote(), timeout=30)
                    if state["done"]:
                        # Training ended without recording an outcome (it always records one).
                        job = jobs.get_job(self.db, job_id)
                        if job["status"] == "running":
                            why = state["error"] or "it ended without an outcome"
                            return self._fail(job_id, f"the Ray task failed: {why}")
            except RayActorError as exc:
                ended = jobs.get_job(self.db, job_id)
                if ended["status"] != "running":
                    return ended  # the actor ended itself after recording the outcome
                return self._node_died(job_id, ended, exc)
            except (ActorUnavailableError, GetTimeoutError):
                pass  # a node being restarted or slow: the next poll tells
            if job["cancel_requested"]:
                if cancel_at is None:
                    cancel_at = time.monotonic()
                if started is not None or time.monotonic() - cancel_at > CANCEL_GRACE_S:
                    # Not training yet (waiting for a node), or deaf to the cancel: kill it.
                    self._kill(actor)
                    return self._cancelled(job_id)
            time.sleep(_POLL_S)

    def adopt(self, db: Engine) -> list[dict[str, Any]]:
        """Take over the Ray jobs of a previous run of a service on this host.

        A job whose owner still runs (another service, on any host) is left to it. The
        actors of jobs that have ended are removed.
        """
        with_ray = [j for j in jobs.list_jobs(db) if j["executor"] == "ray"]
        if not with_ray:
            return []
        try:
            ray = self.connect()
        except ConfigError as exc:
            log.warning("cannot follow the Ray jobs that are still running: %s", exc.message)
            return []
        me = jobs.owner_id()
        adopted = []
        for job in with_ray:
            if job["status"] in jobs.FINISHED:
                self._kill_named(int(job["id"]))
                continue
            if job["status"] != "running" or jobs.owner_process_alive(job["owner"]):
                continue
            try:
                ray.get_actor(actor_name(int(job["id"])), namespace=NAMESPACE)
            except ValueError:
                continue  # no actor: its lease runs out and the job is marked interrupted
            if jobs.take_over(db, int(job["id"]), job["owner"], me):
                adopted.append(jobs.get_job(db, int(job["id"])))
        return adopted

    def follow(self, job: dict[str, Any], stopping: Callable[[], bool]) -> dict[str, Any]:
        """Follow a job whose actor already runs (after a restart of the service)."""
        ray = self.connect()
        actor = ray.get_actor(actor_name(int(job["id"])), namespace=NAMESPACE)
        return self._follow(int(job["id"]), actor, None, stopping)

    # -- endings -------------------------------------------------------------------------
    def _node_died(self, job_id: int, job: dict[str, Any], exc: Exception) -> dict[str, Any]:
        node = job.get("node") or "(not placed yet)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return self._fail(
            job_id,
            f"the Ray node {node} running this job died or its task was killed ({first})",
            resumable=True,
        )

    def _fail(self, job_id: int, error: str, *, resumable: bool | None = None) -> dict[str, Any]:
        log.error("job %s failed: %s", job_id, error)
        return self._end(job_id, "failed", error, resumable)

    def _cancelled(self, job_id: int) -> dict[str, Any]:
        return self._end(job_id, "cancelled", None, True)

    def _end(
        self, job_id: int, status: str, error: str | None, resumable: bool | None
    ) -> dict[str, Any]:
        """Record a running job's end, naming the checkpoint a resume continues from."""
        from loraflow.training.trainer import checkpoint_kept

        job = jobs.get_job(self.db, job_id)
        ckpt, kept = checkpoint_kept(Path(job["output_path"]))
        how = "cancelled" if error is None else f"failed: {error}"
        jobs.update_job(
            self.db,
            job_id,
            where_status=("running",),
            status=status,
            error=error,
            message=f"{how}; {kept}; resume to continue",
            resumable=ckpt is not None if resumable is None else resumable,
            completed_at=jobs.now(),
            pid=None,
            eta_seconds=None,
        )
        return jobs.get_job(self.db, job_id)

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            log.debug("actor already gone", exc_info=True)

    def _kill_named(self, job_id: int) -> None:
        ray = self._ray
        if ray is None:
            return
        try:
            actor = ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
        except ValueError:
            return
        self._kill(actor)
        # The name is free once the GCS has recorded the death.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
            except ValueError:
                return
            time.sleep(0.2)


def check_cluster(address: str, request: dict[str, float]) -> tuple[bool, str]:
    """Whether the cluster at `address` answers and has a node that can run a job."""
    try:
        client = connect(address)
    except ConfigError as exc:
        return False, exc.message
    nodes = [n for n in client.nodes() if n.get("Alive")]
    able = [
        n for n in nodes if all(n["Resources"].get(k, 0.0) >= v for k, v in request.items() if v)
    ]
    where = address or "auto"
    if not able:
        return False, (
            f"the Ray cluster at {where} has {len(nodes)} node(s), none with "
            f"{_describe(request)}: jobs would wait for one forever"
        )
    return True, (
        f"Ray cluster at {where}: {len(nodes)} node(s), {len(able)} with {_describe(request)}"
    )


def _describe(request: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in request.items() if v)
