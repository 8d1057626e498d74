"""Start and stop a real loraflow server on 127.0.0.1: for the bench scripts and the tests.

`Server` runs any server command line on a given data dir and port; `BenchServer` is
`loraflow serve` in a fresh temporary data dir with the bench's settings.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO = Path(__file__).resolve().parents[1]
# The converted bundled models that the tests also reuse (conversion takes ~15 s once).
MODEL_CACHE = REPO / ".cache" / "test-models"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
VENV_BIN = Path(sys.executable).parent


def require_loopback(url: str) -> str:
    """The URL without a trailing slash; refuses any host that is not this machine."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or parsed.hostname not in LOOPBACK:
        raise SystemExit(
            f"--url {url!r} is not a loopback http(s) URL; allowed hosts: {sorted(LOOPBACK)}"
        )
    return url.rstrip("/")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_argv(*args: str) -> list[str]:
    """The `loraflow` command of this Python environment with `args`."""
    return [str(VENV_BIN / "loraflow"), *args]


class Server:
    """A server subprocess with its own data dir; logs go to a file in that dir."""

    # Seconds wait_ready() waits for /health by default.
    ready_timeout = 240.0

    def __init__(self, data_dir: Path, env: dict[str, str], argv: list[str], port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = data_dir / "server.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        # The caller's environment minus loraflow settings, so the server sees only `env`.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAFLOW", "API_"))}
        full_env.update({"LORAFLOW_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}, **env)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, cwd=data_dir
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for /health to answer; raises with the server log when it does not."""
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        log = self.log()  # read before stop(), which may remove the data dir
        self.stop()
        raise TimeoutError(f"server not ready after {timeout}s:\n{log}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class BenchServer(Server):
    """`loraflow serve` as a subprocess; its data dir is temporary and removed on stop()."""

    ready_timeout = 300.0

    def __init__(self, env: dict[str, str] | None = None, keep: bool = False) -> None:
        self.keep = keep
        port = free_port()
        settings = {
            "CACHE_DIR": str(MODEL_CACHE),
            # Nothing listens there: Ollama counts as down, every answer is local.
            "OLLAMA_BASE_URL": f"http://127.0.0.1:{free_port()}",
            "OLLAMA_TIMEOUT": "3",
            "TEMPERATURE": "0",
            **(env or {}),
        }
        super().__init__(
            Path(tempfile.mkdtemp(prefix="lf-bench-server-")),
            settings,
            cli_argv("serve", "--port", str(port), "--use-lora", "true"),
            port,
        )

    def stop(self) -> None:
        super().stop()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> BenchServer:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
