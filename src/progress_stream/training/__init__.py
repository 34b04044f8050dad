"""Training the ProgressHead (PyTorch): data, synthetic families, the recipe, evaluation, search and reports."""
