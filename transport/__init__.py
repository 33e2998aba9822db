"""transport: the sans-IO sync protocol and its aiohttp adapters (the Sync issue)."""
