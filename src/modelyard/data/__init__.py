"""Data: load a spec's source, decide and validate its features, fingerprint it, profile it for drift.

Import from the submodules: the package itself imports nothing, so a pipeline task pays only for what it uses.
"""
