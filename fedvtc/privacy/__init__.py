"""Privacy of what clients share: differential privacy of the class statistics (``dp``) and
measurements of what the synthetic images reveal about a client's training data (``leakage``)."""
