"""Optimisation algorithms that take operators and priors (PDHG for (directional) TV)."""
