"""Kubeflow Pipelines v2 components and pipelines: thin wrappers over the training core."""
