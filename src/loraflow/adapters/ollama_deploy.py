"""Hand a GGUF LoRA to Ollama: a Modelfile on disk, or a model created over its HTTP API."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loraflow.adapters.inspect import sha256_file
from loraflow.errors import EngineUnavailable, InvalidInput, NotFound

GGUF_MAGIC = b"GGUF"
# Failing fast on an absent server matters more than patience with a slow connect.
CONNECT_TIMEOUT = 5.0
PARAMETER_NAME = re.compile(r"[A-Za-z0-9_]+")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")


@dataclass
class OllamaDeployment:
    """What Ollama was asked to create and what it answered."""

    model: str
    base: str
    digest: str
    adapter_file: str
    uploaded: bool
    status: str


def modelfile_text(
    *,
    base: str,
    adapter_file: str,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> str:
    """An Ollama Modelfile: FROM the base, ADAPTER the GGUF LoRA, optional SYSTEM and PARAMETERs."""
    lines = [f"FROM {_quote(base, 'FROM')}", f"ADAPTER {_quote(adapter_file, 'ADAPTER')}"]
    if system is not None:
        lines.append(f"SYSTEM {_quote(system, 'SYSTEM', allow_empty=True)}")
    for name, value in (parameters or {}).items():
        if not PARAMETER_NAME.fullmatch(str(name)):
            raise InvalidInput(
                f"Modelfile parameter name {name!r} may hold only letters, digits and '_'"
            )
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            lines.append(f"PARAMETER {name} {_quote(_param_value(item), f'PARAMETER {name}')}")
    return "\n".join(lines) + "\n"


def write_modelfile(
    path: Path,
    *,
    base: str,
    adapter_file: str,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> Path:
    """Write the Modelfile to `path` (ADAPTER paths are read relative to its folder by Ollama)."""
    path = Path(path)
    text = modelfile_text(
        base=base, adapter_file=adapter_file, system=system, parameters=parameters
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def deploy_to_ollama(
    base_url: str,
    model_name: str,
    *,
    base: str,
    adapter_gguf: Path,
    timeout: float,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> OllamaDeployment:
    """Upload the GGUF LoRA as a blob and create `model_name` = `base` + adapter in Ollama."""
    adapter_gguf = Path(adapter_gguf)
    _check_gguf(adapter_gguf)
    _check_model_name(model_name)
    if not base.strip():
        raise InvalidInput("the Ollama base model name is empty")
    digest = "sha256:" + sha256_file(adapter_gguf)
    url = base_url.rstrip("/")
    client = _client(url, timeout)
    with client:
        try:
            uploaded = _upload_blob(
                client,
                url,
                digest,
                adapter_gguf,
                checking="checking for the adapter blob",
                uploading="uploading the adapter blob",
            )
            request: dict[str, Any] = {
                "model": model_name,
                "from": base,
                "adapters": {adapter_gguf.name: digest},
                "stream": False,
            }
            if system is not None:
                request["system"] = system
            if parameters:
                request["parameters"] = parameters
            created = client.post("/api/create", json=request)
        except httpx.TransportError as exc:
            raise _unreachable(url, exc) from exc
    if created.status_code == 404:
        raise NotFound(
            f"Ollama at {url} has no base model {base!r}: {_error_text(created)}",
            hint=f"ollama pull {base}",
        )
    _check(created, url, f"creating model {model_name!r}")
    status = _final_status(created, url, model_name)
    return OllamaDeployment(
        model=model_name,
        base=base,
        digest=digest,
        adapter_file=adapter_gguf.name,
        uploaded=uploaded,
        status=status,
    )


@dataclass
class OllamaModelDeployment:
    """A full model folder created in Ollama from its safetensors files."""

    model: str
    files: dict[str, str]
    uploaded: int
    status: str


# The files of a Hugging Face folder Ollama imports (weights, config, tokenizer).
_MODEL_SUFFIXES = (".safetensors", ".json", ".model", ".txt")


def deploy_model_to_ollama(
    base_url: str,
    model_name: str,
    model_dir: Path,
    *,
    timeout: float,
    quantize: str | None = None,
) -> OllamaModelDeployment:
    """Upload a merged safetensors model folder as blobs and create `model_name` from them.

    Ollama imports fp16/fp32 safetensors (optionally quantizing them itself with
    `quantize`, e.g. q8_0); it cannot read bitsandbytes weights, so those are refused.
    """
    model_dir = Path(model_dir)
    _check_model_name(model_name)
    config = model_dir / "config.json"
    if not config.is_file() or not any(model_dir.glob("*.safetensors")):
        raise NotFound(f"{model_dir} is not a safetensors model folder (config.json + weights)")
    if "quantization_config" in json.loads(config.read_text(encoding="utf-8")):
        raise InvalidInput(
            f"{model_dir} holds bitsandbytes-quantized weights, which Ollama cannot import",
            hint="merge without --quantization and let Ollama quantize (quantize=q8_0)",
        )
    files = sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file() and p.suffix in _MODEL_SUFFIXES and p.name != "loraflow.json"
    )
    url = base_url.rstrip("/")
    digests = {p.name: "sha256:" + sha256_file(p) for p in files}
    uploaded = 0
    client = _client(url, timeout)
    with client:
        try:
            for path in files:
                uploaded += _upload_blob(
                    client,
                    url,
                    digests[path.name],
                    path,
                    checking=f"checking for blob {path.name}",
                    uploading=f"uploading {path.name}",
                )
            request: dict[str, Any] = {"model": model_name, "files": digests, "stream": False}
            if quantize:
                request["quantize"] = quantize
            created = client.post("/api/create", json=request)
        except httpx.TransportError as exc:
            raise _unreachable(url, exc) from exc
    _check(created, url, f"creating model {model_name!r}")
    status = _final_status(created, url, model_name)
    return OllamaModelDeployment(model_name, digests, uploaded, status)


def _check_model_name(model_name: str) -> None:
    if not MODEL_NAME.fullmatch(model_name):
        raise InvalidInput(
            f"Ollama model name {model_name!r} must start with a letter or digit and hold only "
            f"letters, digits and . _ : / -"
        )


def _client(url: str, timeout: float) -> httpx.Client:
    return httpx.Client(
        base_url=url, timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))
    )


def _upload_blob(
    client: httpx.Client, url: str, digest: str, path: Path, *, checking: str, uploading: str
) -> bool:
    """Upload `path` as blob `digest` unless Ollama has it; whether it was uploaded."""
    head = client.head(f"/api/blobs/{digest}")
    if head.status_code == 200:
        return False
    _check(head, url, checking, ok=(404,))
    with path.open("rb") as body:
        posted = client.post(f"/api/blobs/{digest}", content=body)
    _check(posted, url, uploading)
    return True


def _unreachable(url: str, exc: httpx.TransportError) -> EngineUnavailable:
    return EngineUnavailable(
        f"Ollama is not reachable at {url}: {type(exc).__name__}: {exc}",
        hint="start Ollama (ollama serve) or set the Ollama URL",
    )


def _quote(value: str, what: str, *, allow_empty: bool = False) -> str:
    """Quote a value the way Ollama's Modelfile parser reads it back unchanged."""
    value = value.replace("\r\n", "\n")
    bad = sorted({c for c in value if (ord(c) < 32 and c not in "\n\t") or ord(c) == 127})
    if bad:
        raise InvalidInput(
            f"{what} value {value[:60]!r} holds control characters {bad}, which a Modelfile "
            f"cannot carry"
        )
    if not value and not allow_empty:
        raise InvalidInput(f"{what} value is empty")
    # The parser takes the rest of the line, trimmed; quotes are needed only to keep
    # newlines, outer whitespace, or a leading quote. It has no escapes, so a value with
    # three quotes in a row cannot be written at all.
    if value and "\n" not in value and value == value.strip() and not value.startswith('"'):
        return value
    if '"""' in value:
        raise InvalidInput(
            f'{what} value {value[:60]!r} contains """, which a Modelfile cannot quote'
        )
    if "\n" not in value and '"' not in value:
        return f'"{value}"'
    return f'"""{value}"""'


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise InvalidInput(
        f"Modelfile parameter value {value!r} must be a string, number or boolean "
        f"(or a list of them)"
    )


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise NotFound(f"GGUF adapter file {path} does not exist")
    if path.suffix.lower() != ".gguf":
        raise InvalidInput(f"adapter file {path} must end in .gguf (Ollama picks the format by it)")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise InvalidInput(f"{path} is not a GGUF file (it does not start with 'GGUF')")


def _check(response: httpx.Response, url: str, doing: str, ok: tuple[int, ...] = ()) -> None:
    if response.is_success or response.status_code in ok:
        return
    code = response.status_code
    message = f"Ollama at {url} refused {doing}: {_error_text(response)} (HTTP {code})"
    if code >= 500:
        raise EngineUnavailable(message)
    raise InvalidInput(message)


def _error_text(response: httpx.Response) -> str:
    if response.request.method == "HEAD":
        return "no body"
    try:
        data = response.json()
    except ValueError:
        return response.text[:300] or "empty answer"
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])[:300]
    return response.text[:300]


def _final_status(response: httpx.Response, url: str, model_name: str) -> str:
    # Without streaming Ollama sends one JSON object; tolerate progress lines before it.
    lines = [line for line in response.text.splitlines() if line.strip()]
    try:
        data = json.loads(lines[-1]) if lines else {}
    except ValueError as exc:
        raise EngineUnavailable(
            f"Ollama at {url} answered creating {model_name!r} with something that is not "
            f"JSON: {response.text[:200]!r}"
        ) from exc
    if not isinstance(data, dict):
        data = {}
    if data.get("error"):
        raise InvalidInput(f"Ollama at {url} could not create {model_name!r}: {data['error']}")
    status = str(data.get("status", ""))
    if status != "success":
        raise EngineUnavailable(
            f"Ollama at {url} did not confirm creating {model_name!r}: it answered {data!r}"
        )
    return status
