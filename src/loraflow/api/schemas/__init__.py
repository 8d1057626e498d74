"""Response models of loraflow's JSON routes, so the OpenAPI document (/docs) shows each shape.

Routes return plain dicts built by the services; FastAPI validates them against these models
and serialises only the fields declared here (`response_model_exclude_unset=True` keeps keys
a service leaves out absent, as they were). A field missing here would silently disappear
from responses: tests/unit/test_openapi_schemas.py compares real responses with what the
routes returned.
"""
