"""Export of a checkpoint to the stepwise ONNX cell (and a Triton repository), with parity checks."""
