"""Adapter export: merged full model, llama.cpp LoRA GGUF, Ollama Modelfile and deployment."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loraflow.adapters.export import FP32_LOGIT_ATOL, export_merged_model
from loraflow.adapters.gguf import export_gguf_adapter, permute_rows
from loraflow.adapters.ollama_deploy import deploy_to_ollama, modelfile_text, write_modelfile
from loraflow.errors import Conflict, EngineUnavailable, InvalidInput, NotFound

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
N_HEAD, N_KV_HEAD = 4, 2


def build_tiny_llama(dest: Path, tokenizer_dir: Path, hidden: int = 64) -> Path:
    """A random 2-layer Llama with grouped-query attention and the SmolLM2 tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV_HEAD,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def build_adapter(base_dir: Path, dest: Path, *, zero_b: bool = False, seed: int = 1) -> Path:
    """Save a PEFT LoRA on every linear layer; random (non-zero) unless `zero_b`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_LINEAR, init_lora_weights=False
    )
    model = get_peft_model(base, config)
    if zero_b:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.zero_()
    model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("export-base") / "tiny-llama", smollm2_dir)


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    return build_adapter(tiny_base, tmp_path_factory.mktemp("export-adapter") / "style")


@pytest.fixture(scope="module")
def tiny_gguf(
    tmp_path_factory: pytest.TempPathFactory, tiny_adapter: Path, tiny_base: Path
) -> Path:
    out = tmp_path_factory.mktemp("export-gguf") / "style.gguf"
    return export_gguf_adapter(tiny_adapter, tiny_base, out)


def _logits(model: Any, tokenizer: Any, text: str) -> torch.Tensor:
    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt")).logits


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- merged model export ---------------------------------------------------------------------


def test_merged_export_behaves_like_base_plus_adapter(
    tmp_path: Path, tiny_base: Path, tiny_adapter: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    out.mkdir()  # an empty folder is fine to export into
    steps: list[tuple[str, int, int]] = []
    result = export_merged_model(
        tiny_adapter, tiny_base, out, progress=lambda m, d, t: steps.append((m, d, t))
    )

    assert result.output_dir == out
    assert {"config.json", "model.safetensors", "tokenizer.json", "loraflow.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not any(out.glob("*.bin")) and not (out / "adapter_config.json").exists()
    assert result.max_diff_vs_adapter <= FP32_LOGIT_ATOL < result.max_diff_vs_base
    assert steps[-1][0] == "done" and steps[-1][1] == steps[-1][2]
    assert _leftovers(tmp_path) == []

    meta = json.loads((out / "loraflow.json").read_text())
    weights = (tiny_adapter / "adapter_model.safetensors").read_bytes()
    assert meta["adapter_sha256"] == hashlib.sha256(weights).hexdigest() == result.adapter_sha256
    assert meta["source_adapter"] == str(tiny_adapter.resolve())
    assert meta["base_model"] == str(tiny_base.resolve())
    assert meta["check"]["max_logit_diff_vs_adapter"] == result.max_diff_vs_adapter
    assert meta["created_at"]

    # Judged on a prompt the export never saw: the merged model alone acts like base + adapter.
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = "Write a haiku about merging weights"
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    exported, plain = _logits(merged, tokenizer, prompt), _logits(base, tokenizer, prompt)
    with_adapter = _logits(PeftModel.from_pretrained(base, tiny_adapter), tokenizer, prompt)
    assert torch.allclose(exported, with_adapter, atol=FP32_LOGIT_ATOL, rtol=0)
    assert (exported - plain).abs().max() > 100 * FP32_LOGIT_ATOL


def test_zero_adapter_is_refused_and_leaves_nothing(
    tmp_path: Path, tiny_base: Path, tiny_adapter: Path
) -> None:
    zero = build_adapter(tiny_base, tmp_path / "untrained", zero_b=True)
    out = tmp_path / "exports" / "merged"
    with pytest.raises(InvalidInput, match="no effect.*unchanged base model"):
        export_merged_model(zero, tiny_base, out)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_adapter_for_another_base_names_tensor_and_shapes(
    tmp_path: Path, smollm2_dir: Path, tiny_adapter: Path
) -> None:
    out = tmp_path / "merged"
    with pytest.raises(InvalidInput) as caught:
        export_merged_model(tiny_adapter, smollm2_dir, out)
    message = str(caught.value)
    # SmolLM2's first sorted target is layer 0's down_proj: 576 x 1536 against the tiny 64 x 128.
    assert "model.layers.0.mlp.down_proj.weight" in message
    assert "[576, 1536]" in message and "[4, 128]" in message and "[64, 4]" in message
    assert not out.exists() and _leftovers(tmp_path) == []


def test_existing_output_is_a_conflict(tmp_path: Path, tiny_base: Path, tiny_adapter: Path) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("earlier export")
    with pytest.raises(Conflict, match="already exists"):
        export_merged_model(tiny_adapter, tiny_base, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_quantization_choices_and_missing_bitsandbytes(
    tmp_path: Path, tiny_base: Path, tiny_adapter: Path
) -> None:
    import importlib.util

    with pytest.raises(InvalidInput, match=r"'3bit'.*\[None, '8bit', '4bit'\]"):
        export_merged_model(tiny_adapter, tiny_base, tmp_path / "q", quantization="3bit")
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed; the missing-package message cannot show")
    with pytest.raises(InvalidInput, match=r"pip install 'loraflow\[quantization\]'"):
        export_merged_model(tiny_adapter, tiny_base, tmp_path / "q", quantization="4bit")
    assert not (tmp_path / "q").exists()


def test_quantized_export_keeps_the_adapter(
    tmp_path: Path, tiny_base: Path, tiny_adapter: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "merged-8bit"
    result = export_merged_model(tiny_adapter, tiny_base, out, quantization="8bit")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["load_in_8bit"] is True
    check = result.quantized_check
    assert check["mean_diff_vs_adapter"] < check["mean_diff_vs_base"]
    assert json.loads((out / "loraflow.json").read_text())["quantization"] == "8bit"


# --- llama.cpp LoRA GGUF ---------------------------------------------------------------------


def _field(reader: Any, key: str) -> Any:
    return reader.fields[key].contents()


def test_gguf_round_trip_matches_peft_tensors(tiny_gguf: Path, tiny_adapter: Path) -> None:
    import gguf
    from safetensors.torch import load_file

    reader = gguf.GGUFReader(tiny_gguf)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.type") == "adapter"
    assert _field(reader, "adapter.type") == "lora"
    assert _field(reader, "adapter.lora.alpha") == pytest.approx(8.0)

    peft = load_file(tiny_adapter / "adapter_model.safetensors")
    gguf_names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    tensors = {t.name: t for t in reader.tensors}
    expected = {
        f"blk.{i}.{g}.weight.lora_{h}" for i in range(2) for g in gguf_names.values() for h in "ab"
    }
    assert set(tensors) == expected
    for layer in range(2):
        for hf, gg in gguf_names.items():
            prefix = f"base_model.model.model.layers.{layer}.{hf}"
            a, b = peft[f"{prefix}.lora_A.weight"], peft[f"{prefix}.lora_B.weight"]
            ta, tb = (
                tensors[f"blk.{layer}.{gg}.weight.lora_a"],
                tensors[f"blk.{layer}.{gg}.weight.lora_b"],
            )
            # GGUF lists dims innermost first: a is [n_in, r], b is [r, n_out].
            assert list(ta.shape) == [a.shape[1], a.shape[0]]
            assert list(tb.shape) == [b.shape[1], b.shape[0]]
            assert ta.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(np.asarray(ta.data), a.numpy())
            heads = {"attn_q": (N_HEAD, N_HEAD), "attn_k": (N_HEAD, N_KV_HEAD)}.get(gg)
            want_b = permute_rows(b, *heads) if heads else b
            np.testing.assert_array_equal(np.asarray(tb.data), want_b.numpy())


def test_permute_rows_maps_hf_layout_to_the_bundled_llama_cpp_gguf(smollm2_dir: Path) -> None:
    """The bundled SmolLM2 GGUF holds q/k in llama.cpp's row order; HF weights permuted match it."""
    import gguf
    from safetensors import safe_open

    from loraflow.models.bundled import smollm2_gguf_path

    config = json.loads((smollm2_dir / "config.json").read_text())
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    assert n_head != n_kv  # grouped-query attention: k uses its own head count
    reader = gguf.GGUFReader(smollm2_gguf_path())
    ggml = {t.name: t for t in reader.tensors}
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as handle:
        for hf, gg, heads in (("q_proj", "attn_q", n_head), ("k_proj", "attn_k", n_kv)):
            weight = handle.get_tensor(f"model.layers.0.self_attn.{hf}.weight")
            t = ggml[f"blk.0.{gg}.weight"]
            stored = gguf.quants.dequantize(t.data, t.tensor_type).reshape(weight.shape)
            # The safetensors folder was converted from this very GGUF, so the match is exact.
            np.testing.assert_allclose(permute_rows(weight, n_head, heads).numpy(), stored)
            assert not np.allclose(weight.numpy(), stored)


@pytest.mark.integration
def test_bundled_smollm2_adapter_exports_to_gguf(tmp_path: Path, smollm2_dir: Path) -> None:
    import gguf

    adapter = build_adapter(smollm2_dir, tmp_path / "smol-style")
    path = export_gguf_adapter(adapter, smollm2_dir, tmp_path / "smol-style.gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert len(tensors) == 30 * len(ALL_LINEAR) * 2
    # k_proj has 3 kv heads of 64: lora_b is [r, 192] in GGUF order, lora_a [576, r].
    assert list(tensors["blk.29.attn_k.weight.lora_b"].shape) == [4, 192]
    assert list(tensors["blk.29.attn_k.weight.lora_a"].shape) == [576, 4]
    assert list(tensors["blk.0.ffn_down.weight.lora_a"].shape) == [1536, 4]


def test_gguf_refuses_other_architectures_and_no_op_adapters(
    tmp_path: Path, tiny_base: Path, tiny_adapter: Path
) -> None:
    other = tmp_path / "qwen-like"
    shutil.copytree(tiny_base, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["Qwen2ForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="'Qwen2ForCausalLM'.*Llama family"):
        export_gguf_adapter(tiny_adapter, other, tmp_path / "x.gguf")

    zero = build_adapter(tiny_base, tmp_path / "untrained", zero_b=True)
    with pytest.raises(InvalidInput, match="no effect"):
        export_gguf_adapter(zero, tiny_base, tmp_path / "zero.gguf")
    assert not list(tmp_path.glob("*.gguf")) and _leftovers(tmp_path) == []


def test_gguf_existing_file_is_a_conflict(
    tmp_path: Path, tiny_adapter: Path, tiny_base: Path
) -> None:
    target = tmp_path / "taken.gguf"
    target.write_bytes(b"old")
    with pytest.raises(Conflict, match="already exists"):
        export_gguf_adapter(tiny_adapter, tiny_base, target)
    assert target.read_bytes() == b"old"


# --- Ollama Modelfile ------------------------------------------------------------------------


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """A line-for-line port of Ollama's parser (parser/parser.go) for the commands written here."""
    commands: list[tuple[str, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.lstrip().partition(" ")
        if name.lower() == "parameter":
            name, _, value = value.partition(" ")
        buffer = value
        while True:
            trimmed = buffer.strip(" \t\r\n")
            if trimmed.startswith('"""'):
                done = len(trimmed) >= 6 and trimmed.endswith('"""')
                result = trimmed[3:-3]
            elif trimmed.startswith('"'):
                done = len(trimmed) >= 2 and trimmed.endswith('"')
                result = trimmed[1:-1]
            else:
                done, result = True, trimmed
            if done:
                break
            buffer += "\n" + lines[i]
            i += 1
        commands.append((name.lower(), result))
    return commands


def test_modelfile_text_round_trips_through_ollamas_parser(tmp_path: Path) -> None:
    system = 'You are "Story Bot".\nAnswer in two lines.'
    path = write_modelfile(
        tmp_path / "Modelfile",
        base="llama3.2:1b",
        adapter_file="./my adapter.gguf",
        system=system,
        parameters={"temperature": 0.2, "stop": ["<|im_end|>", " User:"], "penalize": True},
    )
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[:2] == ["FROM llama3.2:1b", "ADAPTER ./my adapter.gguf"]
    assert f'SYSTEM """{system}"""' in text
    assert 'PARAMETER stop " User:"' in text
    assert parse_modelfile(text) == [
        ("from", "llama3.2:1b"),
        ("adapter", "./my adapter.gguf"),
        ("system", system),
        ("temperature", "0.2"),
        ("stop", "<|im_end|>"),
        ("stop", " User:"),
        ("penalize", "true"),
    ]
    edge = modelfile_text(base='"quoted"', adapter_file="a.gguf", system="")
    assert parse_modelfile(edge) == [("from", '"quoted"'), ("adapter", "a.gguf"), ("system", "")]


def test_modelfile_refuses_what_it_cannot_write() -> None:
    with pytest.raises(InvalidInput, match='contains """'):
        modelfile_text(base="b", adapter_file="a.gguf", system='multi\nline """ quote')
    with pytest.raises(InvalidInput, match="parameter name 'top k'"):
        modelfile_text(base="b", adapter_file="a.gguf", parameters={"top k": 3})
    with pytest.raises(InvalidInput, match="control characters"):
        modelfile_text(base="b\x00", adapter_file="a.gguf")


# --- Ollama deployment -----------------------------------------------------------------------


class FakeOllama(ThreadingHTTPServer):
    """The blob and create endpoints of Ollama's API, checking digests like the real server."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), OllamaHandler)
        self.blobs: dict[str, bytes] = {}
        self.models = {"llama3.2:1b"}
        self.created: list[dict[str, Any]] = []
        self.uploads = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class OllamaHandler(BaseHTTPRequestHandler):
    server: FakeOllama

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_HEAD(self) -> None:
        digest = self.path.removeprefix("/api/blobs/")
        self._reply(200 if digest in self.server.blobs else 404)

    def do_POST(self) -> None:
        if self.path.startswith("/api/blobs/"):
            digest = self.path.removeprefix("/api/blobs/")
            data = self._body()
            if digest != "sha256:" + hashlib.sha256(data).hexdigest():
                return self._reply(400, {"error": "digest mismatch"})
            self.server.blobs[digest] = data
            self.server.uploads += 1
            return self._reply(201)
        if self.path == "/api/create":
            request = json.loads(self._body())
            self.server.created.append(request)
            if request["from"] not in self.server.models:
                return self._reply(404, {"error": f"model '{request['from']}' not found"})
            for digest in request.get("adapters", {}).values():
                if digest not in self.server.blobs:
                    return self._reply(400, {"error": f"missing blob {digest}"})
            self.server.models.add(request["model"])
            return self._reply(200, {"status": "success"})
        return self._reply(404, {"error": "not found"})


@pytest.fixture
def fake_ollama() -> Any:
    server = FakeOllama()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_deploy_uploads_blob_once_and_creates_model(
    fake_ollama: FakeOllama, tiny_gguf: Path
) -> None:
    digest = "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    first = deploy_to_ollama(
        fake_ollama.url, "story-bot", base="llama3.2:1b", adapter_gguf=tiny_gguf, timeout=10
    )
    assert (first.uploaded, first.digest, first.status) == (True, digest, "success")
    assert fake_ollama.blobs[digest] == tiny_gguf.read_bytes()
    assert fake_ollama.created[-1] == {
        "model": "story-bot",
        "from": "llama3.2:1b",
        "adapters": {"style.gguf": digest},
        "stream": False,
    }
    assert "story-bot" in fake_ollama.models

    again = deploy_to_ollama(
        fake_ollama.url, "story-bot-2", base="llama3.2:1b", adapter_gguf=tiny_gguf, timeout=10
    )
    assert again.uploaded is False and fake_ollama.uploads == 1


def test_deploy_sends_what_the_official_client_sends(
    fake_ollama: FakeOllama, tiny_gguf: Path
) -> None:
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=fake_ollama.url)
    digest = client.create_blob(tiny_gguf)
    client.create(model="by-client", from_="llama3.2:1b", adapters={"style.gguf": digest})
    deploy_to_ollama(
        fake_ollama.url, "by-client", base="llama3.2:1b", adapter_gguf=tiny_gguf, timeout=10
    )
    official, ours = fake_ollama.created[-2:]
    assert ours == official


def test_deploy_reports_ollama_errors(fake_ollama: FakeOllama, tiny_gguf: Path) -> None:
    with pytest.raises(NotFound, match="no base model 'missing:7b'.*ollama pull missing:7b"):
        deploy_to_ollama(
            fake_ollama.url, "bot", base="missing:7b", adapter_gguf=tiny_gguf, timeout=10
        )
    with pytest.raises(InvalidInput, match="not a GGUF file"):
        fake = tiny_gguf.parent / "fake.gguf"
        fake.write_bytes(b"PK\x03\x04 not gguf")
        deploy_to_ollama(fake_ollama.url, "bot", base="llama3.2:1b", adapter_gguf=fake, timeout=10)


def test_deploy_to_unreachable_ollama_names_the_url(tiny_gguf: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(EngineUnavailable, match=f"not reachable at {url}"):
        deploy_to_ollama(url, "bot", base="llama3.2:1b", adapter_gguf=tiny_gguf, timeout=5)
