"""Small mechanisms shared across the package, each written once.

- :mod:`.cli`: how entry points report user errors (one line, exit 2), print on rank zero, find ``conf/``;
- :mod:`.files`: atomic writes, free-space checks, the cache root;
- :mod:`.nets`: unwrapping a compiled network, the global batch size.
"""
