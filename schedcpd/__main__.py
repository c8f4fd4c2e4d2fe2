"""``python -m schedcpd`` runs the daemon."""

from schedcpd.daemon import main

main()
