"""Analyses over runs: the SysNoise matrix, layer localization, sensitivity, ONNX test data."""
