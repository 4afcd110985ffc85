"""Runtimes: backends that load edgekit artifacts and run them (llama.cpp for GGUF).

Installed as `edgekit.runtimes`. Never imports `edgekit.converters`.
"""
