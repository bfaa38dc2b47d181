"""A stand-in "tlsgw" for ``tests/bench/run.py --tlsgw-src tests/bench/floor``: the floor.

See ``__main__.py``. Never installed, never imported by the real package or its tests.
"""
