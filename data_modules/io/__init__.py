"""General file helpers: data-only pickles and atomic downloads."""
