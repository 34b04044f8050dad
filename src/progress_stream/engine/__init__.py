"""The engine: the stream table, the batcher, the ONNX runtime and durability. It imports nothing from the server."""
