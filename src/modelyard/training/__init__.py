"""Training: preprocessing, candidate estimators and search spaces, tuning, evaluation, report.

Pure functions over DataFrames: no pipeline, database or object store here (import-linter enforces it).
Import from the submodules: the package itself imports nothing, so a pipeline task pays only for what it uses.
"""
