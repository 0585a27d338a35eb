"""``cbir-lightning serve``: a small FastAPI app and static page to search indexes."""
