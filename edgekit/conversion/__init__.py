"""The conversion job: `pipeline` holds convert() (staging, the fidelity gate, the manifest).

The public function is `edgekit.convert`; this package re-exports nothing, so that importing one
of its modules never runs another.
"""
