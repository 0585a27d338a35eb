"""Image search over a folder: build an incremental on-disk index with a trained checkpoint, query it."""
