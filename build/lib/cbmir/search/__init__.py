"""Nearest neighbours: exact (FAISS or torch, ties broken by database index), approximate (factory strings, PCA,
fp16) and placement (one GPU, replicated, sharded or CPU). Pure functions on arrays; imports no other floor."""
