"""Kernels: one module per family, each with run() on the fabric and cost() in closed form."""
