"""corral.runtime: the OCI low-level runtime as a library.

Keep imports here empty: `corral-runtime` start-up cost is a feature.
"""
