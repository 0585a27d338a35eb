"""Sampling shared by the DataModules: epoch-keyed samplers, Siamese pairs and class batches, mined
training tuples, N-way one-shot episodes and query/database splits."""
