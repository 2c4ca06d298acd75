"""Putting modelyard on Kubernetes: the Helm chart (render, values docs, manifests), install, deploy."""
