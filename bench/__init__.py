"""The benchmark (bench/README.md). Its scripts are modules of this package, run from the
repository's root as ``python -m bench.run`` (and ``bench.servers``, ``bench.inproc``, …), so
that they import ``linksvc`` and ``tests.support`` as packages."""
