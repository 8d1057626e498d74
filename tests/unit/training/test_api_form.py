"""The API's /train form declares the device and quantization a job runs with."""

from __future__ import annotations


def test_train_form_offers_device_and_quantization() -> None:
    from fastapi import FastAPI

    from loraflow.api.routes.training import router

    app = FastAPI()
    app.include_router(router)
    schemas = app.openapi()["components"]["schemas"]
    form = next(s for name, s in schemas.items() if name.startswith("Body_train"))
    props = form["properties"]
    assert "TRAINING_DEVICE" in props["device"]["description"]
    assert "none" in props["quantization"]["description"]
