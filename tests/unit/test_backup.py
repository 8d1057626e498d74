"""Backup and restore with the real store and database: round trip, refusals, full disk,
writers running while the archive is written."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from loraflow import db
from loraflow.config import Settings
from loraflow.errors import Conflict, InvalidInput
from loraflow.rag.backends import close_clients, open_index
from loraflow.rag.retrieve import retrieve
from loraflow.services.know import knowledge
from loraflow.services.know.documents import ingest, ingest_sample_if_empty
from loraflow.services.ops import backup, backup_files
from loraflow.services.ops.backup import create_backup, restore_backup, verify_backup
from loraflow.services.runtime import build_runtime

QUESTION = "How do I switch the database to PostgreSQL?"


def _settings(data: Path) -> Settings:
    return Settings(data_dir=data, ollama_base_url="http://127.0.0.1:9", load_local_model=False)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("inst") / "data"
    rt = build_runtime(_settings(data))
    ingest_sample_if_empty(rt)
    extra = data.parent / "extra.md"
    extra.write_text("# Extra\nThe backup drill happens every Friday at noon.")
    ingest(rt, [extra])
    ingest(rt, [extra])  # unchanged: still one version, one save
    db.set_state(rt.db, "model_selection", {"engine": "ollama", "adapter": None})
    adapter = data / "lora_adapters" / "demo"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    return rt


@pytest.fixture(scope="module")
def archive(instance, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("bk") / "b.tar.gz"
    report = create_backup(instance.settings, instance.db, target)
    assert report.path == target and report.files > 0
    return target


def test_round_trip_answers_with_the_same_sources(instance, archive: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "restored"
    report = restore_backup(archive, _settings(fresh))
    assert report.tables["service_state"] >= 1
    rt2 = build_runtime(_settings(fresh))
    before = [
        (c.source, c.position) for c in retrieve(QUESTION, instance.embedder, instance.store, 3)
    ]
    after = [(c.source, c.position) for c in retrieve(QUESTION, rt2.embedder, rt2.store, 3)]
    assert after == before and before[0][0] == "configuration.md"
    assert {d.source for d in rt2.store.list_documents()} == {
        d.source for d in instance.store.list_documents()
    }
    assert db.get_state(rt2.db, "model_selection") == {"engine": "ollama", "adapter": None}
    assert (fresh / "lora_adapters" / "demo" / "adapter_model.safetensors").read_bytes() == (
        b"\x00" * 64
    )


def test_archive_holds_only_the_current_store_version_and_no_live_db(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "files/loraflow.db" not in names
    assert any(n.startswith("database/service_state") for n in names)
    versions = {n.split("/")[2] for n in names if n.startswith("files/vector_store/v")}
    assert len(versions) == 1


def test_restore_refuses_a_non_empty_data_dir_unless_forced(archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not empty"):
        restore_backup(archive, _settings(target))
    assert (target / "keep.txt").read_text() == "mine"
    restore_backup(archive, _settings(target), force=True)
    assert not (target / "keep.txt").exists()
    assert (target / "vector_store" / "CURRENT").exists()


def test_truncated_archive_is_refused_and_nothing_is_written(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(InvalidInput, match="damaged|incomplete|not a loraflow"):
        restore_backup(bad, _settings(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def _rewrite(archive: Path, out: Path, change) -> None:
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for m in src:
            data = src.extractfile(m).read()
            name, data = change(m.name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def test_tampered_member_is_refused_by_checksum(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "tampered.tar.gz"

    def change(name: str, data: bytes):
        return name, (data + b"x" if name.endswith("adapter_config.json") else data)

    _rewrite(archive, bad, change)
    with pytest.raises(InvalidInput, match="checksum mismatch.*adapter_config.json"):
        verify_backup(bad)


def test_path_traversal_member_is_refused(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "evil.tar.gz"
    renamed: dict[str, str] = {}

    def change(name: str, data: bytes):
        if name.startswith("files/") and not renamed:
            renamed[name] = "files/../../evil.txt"
            return renamed[name], data
        if name == "manifest.json":  # written last: make the manifest agree with the rename
            m = json.loads(data)
            for old, new in renamed.items():
                m["members"][new] = m["members"].pop(old)
            return name, json.dumps(m).encode()
        return name, data

    _rewrite(archive, bad, change)
    with pytest.raises(InvalidInput, match="unsafe path"):
        restore_backup(bad, _settings(tmp_path / "new"))
    assert not (tmp_path.parent / "evil.txt").exists()
    assert not (tmp_path / "new").exists()


def test_foreign_archive_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "other.tar.gz"
    with tarfile.open(foreign, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(InvalidInput, match="not a loraflow backup"):
        verify_backup(foreign)


def _limit_file_size() -> None:
    # A file-size limit makes writes fail with EFBIG, as a full disk fails with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_backup_to_a_full_disk_fails_cleanly(instance, tmp_path: Path) -> None:
    target = tmp_path / "out" / "b.tar.gz"
    target.parent.mkdir()
    cli = Path(sys.executable).parent / "loraflow"
    proc = subprocess.run(
        [str(cli), "backup", "--to", str(target), "--data-dir", str(instance.settings.data_path)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        env={
            "OLLAMA_BASE_URL": "http://127.0.0.1:9",
            "PATH": "/usr/bin:/bin",
            "PYTHONDONTWRITEBYTECODE": "1",  # the size limit would truncate caches
        },
        timeout=300,
    )
    assert proc.returncode != 0
    assert "backup to" in proc.stderr and "no partial archive" in proc.stderr
    assert list(target.parent.iterdir()) == []
    # The instance still works.
    assert instance.store.list_documents()


def test_database_dump_restores_into_another_database(
    instance, archive: Path, tmp_path: Path, db_url: str
) -> None:
    """The dump is portable: an archive made on SQLite restores into PostgreSQL too."""
    settings = Settings(
        data_dir=tmp_path / "elsewhere",
        database_url=db_url,
        ollama_base_url="http://127.0.0.1:9",
        load_local_model=False,
    )
    report = restore_backup(archive, settings)
    assert report.tables["service_state"] >= 1
    engine = db.make_engine(db_url)
    assert db.get_state(engine, "model_selection") == {"engine": "ollama", "adapter": None}
    engine.dispose()
    # A second restore into the now non-empty database is refused, then allowed with force.
    with pytest.raises(InvalidInput, match="already has"):
        restore_backup(archive, settings.model_copy(update={"data_dir": tmp_path / "again"}))
    restore_backup(
        archive, settings.model_copy(update={"data_dir": tmp_path / "again"}), force=True
    )


def _members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def test_files_a_running_job_rewrites_during_the_backup_still_verify(
    instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job replaces its metrics.json and appends to its log while the backup reads them."""
    # metrics.json (15 MB) takes the path of large files, read as tar copies them; the log
    # (6 MB) the path of files read into memory first.
    monkeypatch.setattr(backup, "_IN_MEMORY", 8 * 1024 * 1024)
    job = instance.settings.data_path / "lora_adapters" / "running-job"
    job.mkdir(parents=True)
    metrics, log = job / "metrics.json", job / "train.log"
    history = b'{"history": [' + b'{"loss": 1.0}, ' * 1_000_000  # ~15 MB: slow to read
    metrics.write_bytes(history + b"0]}")
    log.write_bytes(b"step 0 loss 2.5\n" * 400_000)
    stop = threading.Event()

    def job_writes() -> None:
        # As the trainer's write_json does: a new file renamed over the old one, each time.
        n = 0
        with open(log, "ab") as out:
            while not stop.is_set():
                n += 1
                tmp = job / ".metrics.json.tmp"
                tmp.write_bytes(history + str(n).encode() + b"]}")
                os.replace(tmp, metrics)
                out.write(f"step {n} loss 1.0\n".encode())
                out.flush()

    writer = threading.Thread(target=job_writes)
    writer.start()
    try:
        target = tmp_path / "during.tar.gz"
        create_backup(instance.settings, instance.db, target)
    finally:
        stop.set()
        writer.join()
    try:
        verify_backup(target)  # what restore checks first
        with tarfile.open(target) as tar:
            archived_log = tar.extractfile("files/lora_adapters/running-job/train.log").read()
            archived_metrics = tar.extractfile("files/lora_adapters/running-job/metrics.json")
            assert json.loads(archived_metrics.read())["history"]
        assert log.read_bytes().startswith(archived_log)
        assert ".metrics.json.tmp" not in str(_members(target))
    finally:
        shutil.rmtree(job)


def test_files_being_written_are_left_out(instance, tmp_path: Path) -> None:
    """Staging names of atomic writes, torn checkpoints and a re-embed's new index stay out."""
    data = instance.settings.data_path
    run = data / "lora_adapters" / "run"
    orphan = data / "collections" / ("0" * 32)  # a collection the database does not know
    kept = {
        run / "adapter_config.json": b"{}",
        run / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors": b"w2",
        run / "checkpoints" / "checkpoint-2" / "trainer_state.json": b'{"global_step": 2}',
    }
    skipped = {
        run / ".final" / "adapter_model.safetensors": b"half",
        run / ".metrics.json.tmp": b"{",
        run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors": b"w4",
        run / "checkpoints" / "checkpoint-4" / "trainer_state.json": b'{"global_st',
        data / "lora_adapters" / ".merged.merging-x1y2" / "result" / "a.safetensors": b"m",
        data / "exports" / ".e.export-1a2b3c4d" / "a.bin": b"e",
        data / "exports" / ".a.gguf.1a2b3c4d.partial": b"g",
        data / "vector_store" / ".CURRENT-5e6f": b"v9",
        orphan / "index-1" / "CURRENT": b"v1",
    }
    for path, content in {**kept, **skipped}.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    note = tmp_path / "kb.md"
    note.write_text("# Lanterns\nThe lantern room is repainted every spring.")
    created = knowledge.create_collection(instance, "bk-staging")
    try:
        knowledge.ingest(instance, "bk-staging", [note])
        info = instance.knowledge.get("bk-staging")
        building = f"collections/{info.id}/index-2"
        instance.knowledge.set_reembed(info.id, {"index_dir": building, "status": "running"})
        (data / building / "v1").mkdir(parents=True)
        (data / building / "CURRENT").write_text("v1\n")
        (data / building / "v1" / "meta.json").write_text("{}")

        names = set(_members(create_backup(instance.settings, instance.db, tmp_path / "b").path))
        rel = {p: "files/" + p.relative_to(data).as_posix() for p in {**kept, **skipped}}
        assert {rel[p] for p in kept} <= names
        assert not {rel[p] for p in skipped} & names
        assert f"files/{info.index_dir}/CURRENT" in names
        assert not [n for n in names if n.startswith(f"files/{building}/")]
    finally:
        knowledge.delete_collection(instance, created["name"])
        shutil.rmtree(run)
        for path in skipped:
            path.unlink(missing_ok=True)
        shutil.rmtree(orphan, ignore_errors=True)


def test_backup_waits_for_an_ingest_in_another_process(instance, tmp_path: Path) -> None:
    """The store's write lock, held by another process, holds the backup until released."""
    lock = instance.settings.vector_store_dir / ".write.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from loraflow.locks import file_lock\n"
            "with file_lock(Path(sys.argv[1])):\n"
            "    print('held', flush=True); sys.stdin.readline()",
            str(lock),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        waited = threading.Event()
        result: list[object] = []
        worker = threading.Thread(
            target=lambda: result.append(
                create_backup(
                    instance.settings, instance.db, tmp_path / "w.tar.gz", on_wait=waited.set
                )
            )
        )
        worker.start()
        assert waited.wait(60)
        assert not (tmp_path / "w.tar.gz").exists()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        worker.join(120)
        assert result and verify_backup(tmp_path / "w.tar.gz")
    finally:
        holder.kill()
        holder.wait()


def test_restore_over_a_data_dir_in_use_is_refused_until_its_process_is_gone(
    archive: Path, tmp_path: Path
) -> None:
    """A process holding the service lock blocks restore --force; once killed, its file does not."""
    target = tmp_path / "live"
    restore_backup(archive, _settings(target))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from loraflow.locks import service_lock\n"
            "with service_lock(Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(300)",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        (target / "mine.txt").write_text("served")
        with pytest.raises(Conflict, match="in use by a running loraflow service"):
            restore_backup(archive, _settings(target), force=True)
        assert (target / "mine.txt").read_text() == "served"
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the lock file stays behind
        holder.wait()
    assert (target / ".service.lock").exists()
    restore_backup(archive, _settings(target), force=True)
    assert not (target / "mine.txt").exists()
    assert os.listdir(target / "vector_store")


def test_restore_into_an_existing_empty_folder_holds_it_against_a_server(
    archive: Path, tmp_path: Path
) -> None:
    target = tmp_path / "made-for-it"
    target.mkdir()
    starts: list[subprocess.CompletedProcess] = []

    def engine_while_a_server_starts(url: str):
        # Mid-restore (the database is being filled): a server process tries to start here.
        starts.append(
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from pathlib import Path; from loraflow.locks import "
                    "service_lock\nwith service_lock(Path(sys.argv[1])): print('started')",
                    str(target),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        return db.make_engine(url)

    report = restore_backup(archive, _settings(target), make_engine=engine_while_a_server_starts)
    assert report.files > 0
    assert (target / "vector_store" / "CURRENT").exists()
    assert starts[0].returncode != 0
    assert "being restored" in starts[0].stderr


def _open_files_under(*folders: Path) -> list[str]:
    """What this process holds open in `folders` (Linux: read from /proc)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if any(target.startswith(f"{folder}/") for folder in folders):
            held.append(target)
    return sorted(held)


# What an ingest or delete in another worker does to a store: take its write lock, change
# it, save a new version (which deletes the old one). Past the alarm it waits no longer.
_DELETE_IN_ANOTHER_PROCESS = """
import signal, sys
from pathlib import Path
from loraflow.config import Settings
from loraflow.rag.backends import open_index
data, kind, name, dim, doc_id = sys.argv[1:]
settings = Settings(data_dir=Path(data), vector_store=kind, load_local_model=False)
store = open_index(settings, settings.vector_store_dir, name, int(dim))
signal.alarm(15)
with store.write_lock():
    store.delete_document(doc_id)
    store.save()
print("deleted", flush=True)
"""


@pytest.mark.parametrize("kind", ["faiss", "chroma"])
def test_stores_are_writable_while_the_archive_is_written(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete in another process runs mid-archive; the archive holds the store as before it.

    Every store file is held open (FAISS) or copied (Chroma, which rewrites in place), not
    read into memory, so the archive is written from what was taken under the locks.
    """
    monkeypatch.setattr(backup_files, "_SMALL", 0)
    data = tmp_path / "data"
    settings = _settings(data).model_copy(update={"vector_store": kind})
    rt = build_runtime(settings)
    notes = []
    for name, text in {"a.md": "Lighthouse logs at dawn.", "b.md": "Ferry leaves at nine."}.items():
        notes.append(tmp_path / name)
        notes[-1].write_text(f"# {name}\n{text}")
    ingest(rt, notes)
    (data / "NOTES.txt").write_text("kept by hand")  # the data dir's files come first
    before = sorted(d.source for d in rt.store.list_documents())
    doomed = rt.store.get_document_by_source("a.md").doc_id
    out = tmp_path / "out"
    out.mkdir()
    baseline = _open_files_under(data, out)
    archived: list[str] = []
    deletes: list[subprocess.CompletedProcess] = []

    def delete_mid_archive(rel: str, i: int, total: int) -> None:
        archived.append(rel)
        if i == 1:
            assert rel == "NOTES.txt"
            command = [sys.executable, "-c", _DELETE_IN_ANOTHER_PROCESS, str(data), kind]
            command += [rt.embedder.name, str(rt.embedder.dim), doomed]
            deletes.append(subprocess.run(command, capture_output=True, text=True, timeout=120))

    try:
        report = create_backup(settings, rt.db, out / "b.tar.gz", progress=delete_mid_archive)
        assert _open_files_under(data, out) == baseline
        assert deletes[0].returncode == 0, deletes[0].stderr  # the lock was free meanwhile
        assert any(r.startswith(("vector_store/", "chroma/")) for r in archived)
        rt.store.refresh()
        assert "a.md" not in {d.source for d in rt.store.list_documents()}

        verify_backup(report.path)
        restored = _settings(tmp_path / "restored").model_copy(update={"vector_store": kind})
        restore_backup(report.path, restored)
        store = open_index(restored, restored.vector_store_dir, rt.embedder.name, rt.embedder.dim)
        assert sorted(d.source for d in store.list_documents()) == before

        # Interrupted mid-archive, with the store files held: no handle and no file is left.
        baseline = _open_files_under(data, out)

        def interrupt(rel: str, i: int, total: int) -> None:
            assert len(_open_files_under(data, out)) > len(baseline)  # the store files
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt) as interrupted:
            create_backup(settings, rt.db, out / "c.tar.gz", progress=interrupt)
        # Closed, not left to the garbage collector: the traceback still holds the frames.
        assert interrupted.tb is not None and _open_files_under(data, out) == baseline
        assert [p.name for p in out.iterdir()] == ["b.tar.gz"]
    finally:
        close_clients()


def test_a_checkpoint_deleted_while_it_is_archived_is_archived_whole_or_not_at_all(
    instance, tmp_path: Path
) -> None:
    """A training job rotates checkpoints while the backup runs; none is archived in part."""
    data = instance.settings.data_path
    checkpoints = data / "lora_adapters" / "rotating" / "checkpoints"
    files = ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"]
    for step in (2, 4):
        for name in files:
            path = checkpoints / f"checkpoint-{step}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f'{{"global_step": {step}, "file": "{name}"}}')
    baseline = _open_files_under(data, tmp_path)

    def rotate(rel: str, i: int, total: int) -> None:
        if i == 1:
            # Right after the snapshot the job's deletion of checkpoint-4 is under way.
            assert "/checkpoints/" not in rel
            (checkpoints / "checkpoint-4" / "optimizer.pt").unlink()
        if "/checkpoint-2/" in rel and (checkpoints / "checkpoint-2").exists():
            shutil.rmtree(checkpoints / "checkpoint-2")  # rotated while it is archived

    try:
        report = create_backup(instance.settings, instance.db, tmp_path / "b", progress=rotate)
        verify_backup(report.path)
        assert _open_files_under(data, tmp_path) == baseline
        prefix = "files/lora_adapters/rotating/checkpoints/"
        with tarfile.open(report.path) as tar:
            names = [n.removeprefix(prefix) for n in tar.getnames() if n.startswith(prefix)]
            # checkpoint-2 was opened whole before it went; checkpoint-4 was torn: left out.
            assert sorted(names) == [f"checkpoint-2/{name}" for name in files]
            state = tar.extractfile(f"{prefix}checkpoint-2/trainer_state.json").read()
        assert json.loads(state)["global_step"] == 2
    finally:
        shutil.rmtree(checkpoints.parent)
