"""The Model custom resource: its schema (generated from the pydantic models), the kopf handlers that
train, serve and roll out each version, and the analysis that judges a candidate."""
