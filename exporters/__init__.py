"""Exporters: PyTorch -> ONNX (checked against PyTorch), cached by content."""
