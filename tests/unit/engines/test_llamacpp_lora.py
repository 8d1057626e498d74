"""GGUF copies of PEFT adapters for llama.cpp: several server workers convert each one once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gguf")

# One server worker: waits for the start signal, then asks the cache for the adapter's GGUF.
# Each real conversion leaves a line in the log file.
WORKER = """
import os, sys, time
from pathlib import Path
from loraflow.adapters.checksums import checksum
from loraflow.adapters.gguf import export_gguf_adapter
from loraflow.engines.llamacpp_lora import GGUFLoraCache

base, adapter, root, ready, go, log = map(Path, sys.argv[1:7])

def convert(folder, out):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    return export_gguf_adapter(folder, base, out)

cache = GGUFLoraCache(root, convert, checksum)
ready.touch()
while not go.exists():
    time.sleep(0.005)
print(cache.path_for(adapter))
"""


def test_two_processes_asking_for_one_adapter_convert_it_once(
    tmp_path: Path, tiny_model_dir: Path, adapters_root: Path
) -> None:
    import gguf

    root, go, log = tmp_path / "gguf", tmp_path / "go", tmp_path / "conversions"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tiny_model_dir), str(adapters_root / "alpha")]
            + [str(root), str(flag), str(go), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    try:
        deadline = time.monotonic() + 300
        while not all(flag.exists() for flag in ready):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        go.touch()  # both ask at the same moment
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {Path(out.strip()) for out, _ in outs}
    assert len(paths) == 1
    gguf_path = paths.pop()
    assert len(log.read_text().split()) == 1  # converted by one process, reused by the other
    # One whole file and no partial one left behind; it reads back with every LoRA pair.
    assert sorted(p.name for p in root.glob("*.gguf")) == [gguf_path.name]
    assert not list(root.glob("*.partial"))
    names = [t.name for t in gguf.GGUFReader(gguf_path).tensors]
    assert names and len(names) % 2 == 0
    assert {n.rsplit(".", 1)[1] for n in names} == {"lora_a", "lora_b"}
