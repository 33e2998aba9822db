"""replicas: the roles that wire the layers together, and a replica's home on disk.

Nouns: a *home* is a replica's directory (identity keys, database, config); a *replica* is
an opened full node (home + engine); *inspect* turns state into what the CLI reports.
"""
