"""Data: load a spec's source, decide and validate its features, fingerprint it, profile it for drift."""

from modelyard.data.fingerprint import fingerprint_file, fingerprint_frame
from modelyard.data.loading import load_frame, read_file
from modelyard.data.profile import histogram_counts, reference_statistics
from modelyard.data.validation import (
    ValidationSummary,
    infer_features,
    min_rows_per_class,
    resolve_features,
    validate_frame,
)

__all__ = [
    "ValidationSummary",
    "fingerprint_file",
    "fingerprint_frame",
    "histogram_counts",
    "infer_features",
    "load_frame",
    "min_rows_per_class",
    "read_file",
    "reference_statistics",
    "resolve_features",
    "validate_frame",
]
