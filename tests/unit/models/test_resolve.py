"""Resolving BASE_MODEL_NAME to files on disk, for every kind, and the not-found advice."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from loraflow.errors import ModelLoadError
from loraflow.models.bundled import READY_MARKER, SMOLLM2_GGUF, ensure_built, smollm2_gguf_path
from loraflow.models.resolve import describe_base_model, list_local_models, resolve_base_model


def _hf_cache_copy(src: Path, cache: Path, repo: str, rev: str, ref: bool = True) -> Path:
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / rev
    shutil.copytree(src, snapshot)
    if ref:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(rev + "\n")
    return snapshot


def test_hf_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    resolved = resolve_base_model(str(tiny_model_dir), tmp_path)
    assert resolved.kind == "hf_dir"
    assert resolved.path == tiny_model_dir.resolve()
    assert resolved.gguf_file is None
    assert resolved.display_name == "tiny-llama"


def test_plain_folder_inside_cache_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "my-model")
    resolved = resolve_base_model("my-model", tmp_path)
    assert (resolved.kind, resolved.path) == ("hf_dir", (tmp_path / "my-model").resolve())


def test_hf_cache_follows_refs_main(tiny_model_dir: Path, tmp_path: Path) -> None:
    pinned = _hf_cache_copy(tiny_model_dir, tmp_path, "Org/Name", "abc")
    newer = tmp_path / "models--Org--Name" / "snapshots" / "zzz"
    shutil.copytree(tiny_model_dir, newer)
    resolved = resolve_base_model("Org/Name", tmp_path)
    assert (resolved.kind, resolved.path, resolved.display_name) == ("hf_cache", pinned, "Org/Name")


def test_hf_cache_newest_snapshot_without_ref_and_hub_subfolder(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    hub = tmp_path / "hub"
    old = _hf_cache_copy(tiny_model_dir, hub, "Org/Name", "old", ref=False)
    new = _hf_cache_copy(tiny_model_dir, hub, "Org/Name", "new", ref=False)
    os.utime(old, (time.time() - 100, time.time() - 100))
    (hub / "models--Org--Name" / "snapshots" / "empty").mkdir()
    assert resolve_base_model("Org/Name", tmp_path).path == new


def test_gguf_file(tmp_path: Path) -> None:
    gguf = smollm2_gguf_path()
    resolved = resolve_base_model(str(gguf), tmp_path)
    assert (resolved.kind, resolved.path, resolved.gguf_file) == ("gguf", gguf.parent, SMOLLM2_GGUF)


def test_bundled_is_converted_with_chat_template(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    resolved = resolve_base_model("bundled:smollm2", smollm2_dir.parents[1])
    assert (resolved.kind, resolved.path) == ("bundled", smollm2_dir)
    assert (smollm2_dir / READY_MARKER).is_file()
    assert list(smollm2_dir.glob("*.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    assert "<|im_start|>" in tokenizer.chat_template


def test_unknown_bundled_name(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="bundled:smollm2"):
        resolve_base_model("bundled:nope", tmp_path)


def test_not_found_explains_offline_and_expected_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_base_model("Org/Missing", tmp_path)
    text = str(info.value)
    assert "not found locally" in text
    assert "offline" in text
    assert str(tmp_path / "models--Org--Missing" / "snapshots") in text
    assert "bundled:smollm2" in text


def test_missing_path_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_base_model(str(tmp_path / "nothing" / "here" / "x.gguf"), tmp_path)


def test_list_local_models(tiny_model_dir: Path, tmp_path: Path) -> None:
    _hf_cache_copy(tiny_model_dir, tmp_path, "Org/Name", "abc")
    shutil.copytree(tiny_model_dir, tmp_path / "plain")
    (tmp_path / "small.gguf").write_bytes(b"GGUF" + b"\0" * 2048)
    (tmp_path / "notes").mkdir()
    found = {m["name"]: m for m in list_local_models(tmp_path)}
    assert set(found) == {"Org/Name", "plain", "small.gguf"}
    assert found["Org/Name"]["path"].endswith("snapshots/abc")
    assert found["plain"]["size_mb"] > 1
    assert list_local_models(tmp_path / "absent") == []


def test_ensure_built_replaces_half_written_folder(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    (final / "partial").write_text("x")

    def build(dest: Path) -> None:
        (dest / "weights").write_text("done")

    assert ensure_built(final, build) == final
    assert sorted(p.name for p in final.iterdir()) == [READY_MARKER, "weights"]


def test_ensure_built_failure_leaves_nothing(tmp_path: Path) -> None:
    def build(dest: Path) -> None:
        (dest / "weights").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ensure_built(tmp_path / "model", build)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_ensure_built_runs_once_across_threads(tmp_path: Path) -> None:
    calls: list[int] = []

    def build(dest: Path) -> None:
        calls.append(1)
        time.sleep(0.2)
        (dest / "weights").write_text("done")

    threads = [
        threading.Thread(target=ensure_built, args=(tmp_path / "m", build)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert (tmp_path / "m" / READY_MARKER).is_file()


def test_describe_does_not_convert(tiny_model_dir: Path, tmp_path: Path) -> None:
    text = describe_base_model("bundled:smollm2", tmp_path)
    assert "on first load" in text and SMOLLM2_GGUF in text
    assert not (tmp_path / "bundled").exists()
    assert "hf_dir" in describe_base_model(str(tiny_model_dir), tmp_path)
    with pytest.raises(ModelLoadError):
        describe_base_model("Org/Missing", tmp_path)


def _fake_model_files(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)


def test_hub_layout_with_blobs_and_the_seeds_flat_layout(tmp_path: Path) -> None:
    # The hub layout as huggingface_hub writes it: snapshot files are links into blobs/.
    repo = tmp_path / "models--Qwen--Qwen2.5-1.5B-Instruct"
    _fake_model_files(repo / "blobs")
    snapshot = repo / "snapshots" / "989aa7980e4cf806f80c7fef2b1adb7bc71aa306"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (snapshot / name).symlink_to(Path("../../blobs") / name)
    resolved = resolve_base_model("Qwen/Qwen2.5-1.5B-Instruct", tmp_path)
    assert (resolved.kind, resolved.path) == ("hf_cache", snapshot)
    # The layout the seed's guide draws: the files straight inside models--Org--Name/.
    flat = tmp_path / "models--Qwen--Qwen2.5-0.5B-Instruct"
    _fake_model_files(flat)
    resolved = resolve_base_model("Qwen/Qwen2.5-0.5B-Instruct", tmp_path)
    assert (resolved.kind, resolved.path) == ("hf_cache", flat)
    names = {m["name"]: m["path"] for m in list_local_models(tmp_path)}
    assert names["Qwen/Qwen2.5-0.5B-Instruct"] == str(flat)
    assert names["Qwen/Qwen2.5-1.5B-Instruct"] == str(snapshot)
