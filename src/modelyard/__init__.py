"""modelyard: a declared classification problem, trained by a KFP pipeline, served by KServe."""

__version__ = "0.1.0"
