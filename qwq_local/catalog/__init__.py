"""Model catalog, downloads (the only place importing huggingface_hub) and GGUF metadata."""
