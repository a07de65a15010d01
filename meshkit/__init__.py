"""meshkit: the shared runtime every StockMesh service uses, written once.

Configuration, logging, server start-up (health, reflection, graceful shutdown),
identity from Envoy's verified JWT, error mapping, database / bus / cache helpers,
exact decimals, migrations, the launcher and the `stockmesh` command line.
"""
