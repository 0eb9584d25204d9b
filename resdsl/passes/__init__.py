"""Passes on ONNX graphs: small functions from a ModelProto to a new one, each with stated pre/post-conditions."""
