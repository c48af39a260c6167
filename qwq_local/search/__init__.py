"""Step-level search over a small LM protocol: pure Python, no llama_cpp, no I/O."""
