"""Multi-process training through the real launchers: checks and the command that starts them.

`accelerate launch` and `torch.distributed.run` (torchrun) start `num_processes` copies of
`python -m loraflow.training.worker JOB_ID --launched`; the Trainer then runs DDP across
them (NCCL on GPUs, gloo on CPU). This module only decides whether that can work here and
builds the command line; it never starts processes itself.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from loraflow.errors import InvalidInput
from loraflow.training.params import LAUNCHERS, TrainParams

# launcher -> (module run with `python -m`, the package that provides it)
LAUNCH_MODULES = {
    "accelerate": ("accelerate.commands.launch", "accelerate"),
    "torchrun": ("torch.distributed.run", "torch"),
}
# The ranks get the worker's database URL here, not in argv where `ps` would show it.
WORKER_CONFIG_ENV = "LORAFLOW_WORKER_CONFIG"
WORKER_MODULE = "loraflow.training.worker"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # A missing (or deliberately blocked) parent package raises instead of returning None.
        return False


def uses_cuda(p: TrainParams) -> bool:
    """Whether `p` trains on CUDA GPUs on this machine."""
    if p.device == "cpu":
        return False
    if p.device == "cuda":
        return True
    import torch

    return torch.cuda.is_available()


def check_launch(p: TrainParams) -> str:
    """Raise InvalidInput when this machine cannot start `p`'s processes; else describe them."""
    if p.launcher == "none":
        return "one process"
    if p.launcher not in LAUNCH_MODULES:
        raise InvalidInput(f"launcher={p.launcher!r} is not one of {LAUNCHERS}")
    module, package = LAUNCH_MODULES[p.launcher]
    if not _importable(module):
        raise InvalidInput(
            f"launcher={p.launcher!r} needs the {package!r} package ({module} was not found)",
            hint=f"pip install {package}, or use launcher='none' to train in one process",
        )
    import torch

    if not torch.distributed.is_available():
        raise InvalidInput(
            f"launcher={p.launcher!r} needs torch.distributed, which this PyTorch build lacks",
            hint="install a PyTorch build with distributed support, or use launcher='none'",
        )
    n = p.num_processes
    if uses_cuda(p):
        count = torch.cuda.device_count()
        if n > count:
            raise InvalidInput(
                f"num_processes={n} but this machine has {count} CUDA device(s); "
                "DDP runs one process per GPU",
                hint=f"use num_processes <= {count}, or device='cpu' to test the multi-process "
                "path with CPU processes",
            )
        return f"{n} process(es) on {n} CUDA GPU(s) via {p.launcher} (DDP, nccl)"
    return (
        f"{n} CPU process(es) via {p.launcher} (DDP, gloo): for testing the multi-process path; "
        "it does not make CPU training faster"
    )


def check_accelerate_config(path: Path, p: TrainParams) -> str:
    """Parse an accelerate config file with accelerate's own loader; returns its type."""
    if p.launcher != "accelerate":
        raise InvalidInput(
            f"an accelerate config file is given but launcher={p.launcher!r}",
            hint="use launcher='accelerate' with an accelerate config file",
        )
    if not path.is_file():
        raise InvalidInput(f"accelerate config file {str(path)!r} does not exist")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise InvalidInput(
            f"accelerate config file {path.name!r} must be .yaml, .yml or .json "
            "(see examples/accelerate/)"
        )
    check_launch(p)
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(str(path))
    except Exception as exc:  # accelerate raises yaml, type and value errors alike
        raise InvalidInput(
            f"accelerate config file {str(path)!r} cannot be read by accelerate: {exc}",
            hint="write it with `accelerate config` or start from examples/accelerate/",
        ) from exc
    return str(getattr(config, "distributed_type", "unknown"))


def launch_command(
    p: TrainParams, job_id: int, *, cuda: bool, accelerate_config: Path | None = None
) -> list[str]:
    """The argv that starts `p.num_processes` ranks of the worker for job `job_id`."""
    n = p.num_processes
    worker = [WORKER_MODULE, str(job_id), "--launched"]
    if p.launcher == "torchrun":
        # --standalone: a local rendezvous on a free port, so two jobs never collide.
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={n}",
            "-m",
            *worker,
        ]
    if p.launcher != "accelerate":
        raise InvalidInput(f"launcher={p.launcher!r} is not one of {LAUNCH_MODULES}")
    # Port 0: accelerate picks a free port, so two jobs never collide.
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--main_process_port",
        "0",
    ]
    if accelerate_config is not None:
        argv += ["--config_file", str(accelerate_config)]
    else:
        argv += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        if n > 1:
            # accelerate's --cpu path starts one process unless MPI is set up; its
            # --multi_gpu path runs torchrun, and the Trainer picks gloo when use_cpu is set.
            argv.append("--multi_gpu")
        elif not cuda:
            argv.append("--cpu")
    return [*argv, "--module", *worker]


def worker_config(db_url: str, watch_pid: int) -> dict[str, Any]:
    """What each rank needs besides its argv: the database and the process it follows."""
    return {"db_url": db_url, "watch_pid": watch_pid}
