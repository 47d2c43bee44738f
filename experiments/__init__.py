"""Research experiments built on lmjax, each a package with its command,
config, output and results (`python -m experiments.NAME.main` from the
checkout's root)."""
