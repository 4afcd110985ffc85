"""Converters: read and check a Hugging Face checkpoint and write deployable artifacts (GGUF, ONNX).

Installed as `edgekit.converters`. Never imports `edgekit.runtimes`.
"""
