"""Beyond Python: the MLflow pyfunc model, models:/ and runs:/ URIs, export to SavedModel / TFLite / ONNX."""
