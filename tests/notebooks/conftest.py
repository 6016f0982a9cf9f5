"""These notebooks are fixtures that tests run in subprocesses (nbconvert, nbval,
a browser); a ``pytest --nbval`` over tests/ must not collect them on its own."""

collect_ignore_glob = ["*.ipynb"]
