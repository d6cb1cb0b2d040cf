"""Routes are matched on one level, the reads clients call most first: routing costs every request."""

from fastapi.routing import APIRoute
from starlette.routing import Mount, Route


def test_every_route_is_the_apps_own_with_the_callers_reads_first(client) -> None:
    routes = client.app.routes
    # An included router would be a level of its own, whose routes FastAPI matches again on every request.
    assert all(isinstance(route, APIRoute | Route | Mount) for route in routes), [type(route) for route in routes]
    api_routes = [route for route in routes if isinstance(route, APIRoute)]
    assert (api_routes[0].path, api_routes[0].methods) == ("/users/me", {"GET"})
    paths = [route.path for route in api_routes]
    assert paths.index("/healthz") > paths.index("/users/{user_id}")
