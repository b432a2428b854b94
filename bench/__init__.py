"""``make bench``: measure the services against the ceilings they cannot beat, in one run.

See ``python -m bench --help``. The figures are noisy on a shared machine;
the ratios to ceilings measured in the same run are what to trust.
"""
