"""The daemon's entry point: the ``schedcpd`` command and ``python -m schedcpd``.

sqlite-utils imports numpy and pandas when they are installed, only to map
their scalar types to SQLite columns. The daemon never hands it such values,
and numpy alone adds ~12 MB to the daemon's RSS (docs/performance.md), so when
they share a virtual environment with schedcp (a checkout with the bench extra)
they are kept out of this process before anything imports sqlite-utils.
"""

import sys

for _unused in ("numpy", "pandas"):
    if _unused not in sys.modules:
        sys.modules[_unused] = None  # type: ignore[assignment]  # import raises ImportError

from schedcpd.daemon import main  # noqa: E402

if __name__ == "__main__":
    main()
