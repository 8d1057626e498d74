"""The web UI (Gradio, one module per tab), mounted into the API app at /ui."""

import os

# Set before any module of this package imports gradio: no usage reports leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
