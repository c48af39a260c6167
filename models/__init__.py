"""Catalog manifests and small shipped Q-value heads (installed as qwq_local.models)."""
