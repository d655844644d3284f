"""C++ CPU kernels (``fitnets_fast._C``) behind the ops: filled in by the CPU-kernel work."""
AVAILABLE = False
UNAVAILABLE_REASON = "no C++ kernels are implemented yet"
