"""General datasets: in-memory indexed images, image-folder trees, photo files decoded on access and
streamed class batches."""
