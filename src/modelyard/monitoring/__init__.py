"""Monitoring: drift and accuracy statistics, alert rules and dashboards as code, reports, retraining.

The statistics here know nothing of transports: the model server hands them arrays (numeric columns,
text columns, probabilities) and registers their collectors on its own Prometheus registry. This package
never imports serving, training or the pipelines, so any of them may use it.
"""
