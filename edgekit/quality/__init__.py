"""What a conversion lost and how fast it runs here: `fidelity` (verify), `profiling` (profile),
`choice` (which of several variants load() opens) and `eval_text` (the text graded on).

The public functions are `edgekit.verify` and `edgekit.profile`; this package re-exports nothing.
"""
