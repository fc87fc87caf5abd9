"""Herald's stores behind small interfaces: one module per store."""
