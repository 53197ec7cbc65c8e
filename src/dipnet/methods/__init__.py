"""Training methods that plug into :mod:`dipnet.engine` (see :mod:`dipnet.engine.method`).

Importing this package registers every built-in component.
"""
