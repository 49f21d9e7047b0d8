"""Sweeps that reproduce and extend Pan & Li, "Toward Understanding Why Adam Converges Faster Than SGD
for Transformers"."""
