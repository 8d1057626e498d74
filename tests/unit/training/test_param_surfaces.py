"""The API's /train form, `loraflow train` and the UI's Training form show PARAMS' parameters."""

from __future__ import annotations

from dataclasses import fields

from loraflow.training.params import PARAMS, TrainParams


def test_every_parameter_is_declared_once_with_a_valid_default() -> None:
    assert list(PARAMS) == [f.name for f in fields(TrainParams)]
    for p in PARAMS.values():
        assert p.help, p.name
        if p.choices:
            assert p.default in p.choices, p.name
    TrainParams().check()


def test_the_cli_options_are_the_declared_ones() -> None:
    import typer.main

    from loraflow.cli import app
    from loraflow.cli.training import _AFTER_PARAM, _BEFORE_PARAM

    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    options = {o.name: o for o in train.params}
    for name in (*_BEFORE_PARAM, *_AFTER_PARAM):
        cli = PARAMS[name].cli
        assert cli is not None and options[name].help == cli.help
        flags = cli.flags or ("--" + name.replace("_", "-"),)
        assert list(options[name].opts) == list(flags)


def test_the_api_form_declares_its_fields_by_their_form_names() -> None:
    from fastapi import FastAPI

    from loraflow.api.routes.training import FORM_PARAMS, router

    app = FastAPI()
    app.include_router(router)
    schemas = app.openapi()["components"]["schemas"]
    props = next(s for n, s in schemas.items() if n.startswith("Body_train"))["properties"]
    for name in FORM_PARAMS:
        form = PARAMS[name].form
        field = (form.name if form else None) or name
        assert field in props, field
        assert props[field].get("description") == (form.description if form else None)


def test_the_ui_form_shows_each_parameter_once() -> None:
    from loraflow.ui.training import FORM_PARAMS

    assert len(set(FORM_PARAMS)) == len(FORM_PARAMS)
    assert all(PARAMS[name].ui is not None for name in FORM_PARAMS)
