"""Converters: read a Hugging Face checkpoint and write deployable artifacts (GGUF; ONNX to come).

Installed as `edgekit.converters`. Never imports `edgekit.runtimes`.
"""
