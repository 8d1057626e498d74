"""Request dependencies: the runtime of this process, as an annotated alias."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from loraflow.errors import EngineUnavailable
from loraflow.services.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    rt = getattr(request.app.state, "runtime", None)
    if rt is None:
        raise EngineUnavailable("the service is still starting; retry in a few seconds")
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
