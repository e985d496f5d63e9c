# cython: language_level=3
__all__ = []
