"""The start-up model selection: set by a fresh start, kept by a worker started later."""

from __future__ import annotations

from loraflow.engines.remote import is_remote
from loraflow.services.catalog.selection import current_selection, initialise_selection
from loraflow.services.runtime import Runtime


def test_a_worker_started_beside_running_ones_keeps_their_switch(base_rt: Runtime) -> None:
    # The running workers were switched to the remote engine (POST /switch_model).
    assert is_remote(initialise_selection(base_rt, use_lora=False).engine)
    # A worker restarted with the default USE_LORA_DEFAULT=true keeps that switch...
    kept = initialise_selection(base_rt, use_lora=True, keep_current=True)
    assert is_remote(kept.engine) and is_remote(current_selection(base_rt).engine)
    # ...while a fresh start of the service sets the selection from its settings.
    assert initialise_selection(base_rt, use_lora=True).engine == "local"
    assert current_selection(base_rt).engine == "local"
