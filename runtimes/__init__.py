"""Runtimes: backends that load edgekit artifacts and run them (llama.cpp for GGUF, ONNX Runtime for
ONNX), chosen through registry.py by what each declares.

Installed as `edgekit.runtimes`. Never imports `edgekit.converters`.
"""
