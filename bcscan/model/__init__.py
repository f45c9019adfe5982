"""The VGG-16 model: architecture and verified model files (`network`), the cell classifier
that runs it on TensorFlow or ONNX Runtime (`classifier`, `onnx_backend`)."""
