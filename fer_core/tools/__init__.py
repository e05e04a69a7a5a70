"""Developer tools: the speed benchmark (``python -m fer_core.tools.bench``)."""
