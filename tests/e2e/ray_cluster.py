"""A real local Ray cluster for tests: a head node and worker nodes, each a `ray start`.

Every process of the cluster is found by its temp dir or its head's address and killed at
the end (never `ray stop`, which would stop any other Ray cluster on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.e2e.server import free_port

RAY = Path(sys.executable).with_name("ray")
# A dead node is noticed in about a second and a half instead of Ray's default half minute.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}


class RayCluster:
    """`ray start --head` plus worker nodes on 127.0.0.1, bounded to a few logical CPUs."""

    def __init__(self) -> None:
        # Short: Ray's socket paths live under it and a Unix socket path is at most 107 bytes.
        self.temp = Path(tempfile.mkdtemp(prefix="lfray", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **FAST_FAILURE_DETECTION}
        self.workers: dict[str, int] = {}  # name -> its raylet's node manager port

    def _start(self, *args: str) -> None:
        argv = [
            str(RAY),
            "start",
            "--node-ip-address=127.0.0.1",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            *args,
        ]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")

    def start_head(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> None:
        self._start(
            "--head",
            f"--port={self.port}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources or {})}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.temp}",
        )

    def add_worker(self, name: str, num_cpus: int, resources: dict[str, float]) -> None:
        port = free_port()
        self._start(
            f"--address={self.address}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            f"--node-manager-port={port}",
        )
        self.workers[name] = port

    def node_id(self, name: str) -> str:
        """The Ray node id of worker `name` (from its raylet's command line)."""
        raylet = self._raylet(name)
        for arg in raylet.cmdline():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        raise AssertionError(f"no --node_id in the raylet of {name}: {raylet.cmdline()}")

    def _raylet(self, name: str) -> Any:
        import psutil

        flag = f"--node_manager_port={self.workers[name]}"
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmd = proc.info["cmdline"] or []
            if cmd and cmd[0].endswith("raylet") and flag in cmd:
                return proc
        raise AssertionError(f"the raylet of worker node {name} is not running")

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker node's raylet and everything it started, as a lost machine."""
        import psutil

        raylet = self._raylet(name)
        procs = [raylet, *raylet.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        del self.workers[name]

    def processes(self) -> list[Any]:
        import psutil

        # Ray's client server names the head by the host's address, not 127.0.0.1.
        head = re.compile(rf"--address=\S+:{self.port}(\s|$)")
        found: dict[int, Any] = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if str(self.temp) in cmd or head.search(cmd):
                found[proc.pid] = proc
                with contextlib.suppress(psutil.Error):
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        import psutil

        for _ in range(3):  # daemons may start children while the first ones die
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGKILL)
            psutil.wait_procs(procs, timeout=10)
            time.sleep(0.5)
        shutil.rmtree(self.temp, ignore_errors=True)
