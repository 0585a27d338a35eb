"""ONNX export of a checkpoint's embedder (``cbir-lightning export``) and an ONNX Runtime embedder that
``index`` / ``search`` / ``recommend`` use with ``--model model.onnx`` (no checkpoint needed)."""
