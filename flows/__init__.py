"""The Prefect orchestration layer: thin tasks over ``gpt.pipeline.steps``, flows that wire them."""

import os

# Route the library's `gpt.*` loggers into Prefect's run logs (visible in the UI).
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "gpt")
