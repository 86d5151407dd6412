"""seqdistill: distil reasoning LLMs the DeepSeek-R1 way (teacher traces with vLLM, verified, then SFT)."""

__version__ = "0.1.0"
