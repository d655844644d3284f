"""Triton kernels behind the ops: filled in by the Triton-kernel work."""
AVAILABLE = False
UNAVAILABLE_REASON = "no Triton kernels are implemented yet"
