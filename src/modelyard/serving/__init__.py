"""The model server: a KServe predictor for modelyard bundles. It reads bundles, never training code."""
