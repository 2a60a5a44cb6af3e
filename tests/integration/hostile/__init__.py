"""Hostile-input suite: a corpus of broken, lying and malicious inputs and a runner that checks
that none of them can stop, crash or leak out of the pipeline (``python -m
tests.integration.hostile``)."""
