"""NeMo models: loading, built-in architectures, the quantizable rewrite and ONNX export."""
