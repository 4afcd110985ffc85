"""Offline summaries: `documents` (readers), `chunking` (token-aware cuts), `summarizer`
(summarize(), summarize_many()) and `cluster` (the Ray executor).

The public functions are `edgekit.summarize` and `edgekit.summarize_many`; this package
re-exports nothing.
"""
