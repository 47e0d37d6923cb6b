"""Running models: onnxruntime sessions, predictions, model files, graph augmenters."""
