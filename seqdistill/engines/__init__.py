"""The engine layer: every call to a model at inference time (vLLM, OpenAI-compatible, batch)."""
