"""Training presets: the seed's defaults, per-job overrides, errors that name the parameter."""

from __future__ import annotations

import pytest

from loraflow.errors import InvalidInput
from loraflow.training.params import TrainParams


def test_defaults_are_the_seed_presets() -> None:
    p = TrainParams()
    assert (p.rank, p.alpha, p.dropout, p.epochs) == (16, 32, 0.05, 3)
    assert (p.batch_size, p.grad_accum, p.lr, p.max_len) == (4, 4, 2e-4, 512)
    assert p.targets() == ["q_proj", "v_proj"]


def test_overrides_are_typed() -> None:
    p = TrainParams.from_dict({"epochs": "2", "lr": "1e-3", "target_modules": "all-linear"})
    assert p.epochs == 2.0 and p.lr == 1e-3 and p.targets() == "all-linear"
    assert TrainParams.from_dict({"target_modules": "q_proj, o_proj"}).targets() == [
        "q_proj",
        "o_proj",
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"warmup_ratio": 0.1}, "unknown training parameter"),
        ({"num_train_epochs": 1, "epochs": 2}, "given twice"),
        ({"rank": 0}, "rank=0"),
        ({"batch_size": "many"}, "batch_size='many'"),
        ({"dropout": 1.5}, "dropout"),
        ({"quantization": "8bit"}, "quantization='8bit'"),
        ({"target_modules": " , "}, "target_modules"),
    ],
)
def test_bad_values_name_the_parameter(values: dict, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected.replace("(", r"\(")):
        TrainParams.from_dict(values)


def test_micro_batch_follows_gpu_memory_at_equal_effective_batch() -> None:
    from loraflow.training.model import fit_batch

    gib = 2**30
    assert fit_batch(4, 4, 4 * gib) == (2, 8)
    assert fit_batch(4, 4, 6 * gib) == (4, 4)
    # A "6 GB" card reports a little less: it keeps the 6 GB preset.
    assert fit_batch(4, 4, int(5.8 * gib)) == (4, 4)
    # The seed's 8 GB preset: batch 8 (an "8 GB" card reports ~7.8 GiB).
    assert fit_batch(4, 4, int(7.8 * gib)) == (8, 2)
    assert fit_batch(4, 4, 80 * gib) == (8, 2)
    assert fit_batch(1, 1, 4 * gib) == (1, 1)


def test_gpu_presets_apply_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from loraflow.training import model

    gib = 2**30
    assert model.fit_max_len(512, int(11.7 * gib)) == 1024
    assert model.fit_max_len(512, 8 * gib) == 512
    assert model.fit_max_len(256, 24 * gib) == 256  # a chosen length is kept
    monkeypatch.setattr(model, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(model.importlib.util, "find_spec", lambda name: object())
    plan = model.plan_device(TrainParams(), gpu_bytes=12 * gib)
    assert (plan["batch_size"], plan["grad_accum"], plan["max_len"]) == (8, 2, 1024)
    assert plan["quantization"] == "4bit" and plan["checkpointing"]
    assert "CUDA GPU (12 GiB)" in plan["label"]
    plan = model.plan_device(TrainParams(quantization="none"), gpu_bytes=8 * gib)
    assert plan["quantization"] is None
    assert (plan["batch_size"], plan["max_len"]) == (8, 512)


def test_cpu_ignores_the_gpu_presets() -> None:
    from loraflow.training.model import plan_device

    plan = plan_device(TrainParams(device="cpu"), gpu_bytes=24 * 2**30)
    assert (plan["batch_size"], plan["grad_accum"], plan["max_len"]) == (4, 4, 512)
    assert plan["quantization"] is None


def test_default_device_is_auto() -> None:
    assert TrainParams().device == "auto"


def test_cpu_plan_is_fp32_without_checkpointing_or_quantization() -> None:
    from loraflow.training.model import plan_device

    plan = plan_device(TrainParams())
    assert plan["device"] == "cpu" and not plan["bf16"] and not plan["checkpointing"]
    assert plan["quantization"] is None and "CPU" in plan["label"]
    assert (plan["batch_size"], plan["grad_accum"]) == (4, 4)


def test_hugging_face_and_llama_factory_names_are_aliases() -> None:
    p = TrainParams.from_dict(
        {
            "num_train_epochs": "1",
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 8,
            "learning_rate": 5e-5,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.1,
            "cutoff_len": 256,
        }
    )
    assert (p.epochs, p.batch_size, p.grad_accum, p.lr) == (1.0, 2, 8, 5e-5)
    assert (p.rank, p.alpha, p.dropout, p.max_len) == (4, 8, 0.1, 256)
    # The same value under both names is no clash.
    assert TrainParams.from_dict({"lora_rank": 8, "rank": 8}).rank == 8


def test_unknown_name_lists_every_accepted_one() -> None:
    with pytest.raises(InvalidInput) as caught:
        TrainParams.from_dict({"num_epochs": 1})
    hint = caught.value.hint or ""
    for name in TrainParams.accepted_names():
        assert name in hint
    assert "num_train_epochs (= epochs)" in hint
