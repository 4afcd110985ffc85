"""edgekit serve, the OpenAI-compatible local server.

The public function is `edgekit.serve`; this package re-exports nothing.
"""
