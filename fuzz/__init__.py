"""Fuzz harness for secagg (hypothesis-based). Run ``python -m fuzz --minutes N``."""
