"""qwq_local: a local reasoning assistant (QwQ-32B on llama.cpp, step-level A* search)."""

__version__ = "0.1.0"
