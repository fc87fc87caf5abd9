"""Herald's HTTP API: Starlette routes, auth, errors, health and metrics (assembled in ``api.app``)."""
