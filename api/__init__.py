"""Herald's HTTP API: Starlette routes, auth, errors, health and metrics (assembled in ``api.app``)."""

from starlette.convertors import register_url_convertor

from api.inputs import Int64Convertor

# Before any module under api/ builds its routes: every {id:int} path parameter is bounded to 64 bits.
register_url_convertor("int", Int64Convertor())  # type: ignore[arg-type]
