"""Where the debug endpoint is: one rule for the middleware (which forwards requests to it)
and the endpoint (which builds its links), so the two can never disagree."""

from __future__ import annotations

from starlette.types import Scope


def locate(scope: Scope, prefix: str, prefix_slash: str) -> tuple[str, str] | None:
    """(the endpoint's URL path, the path below it) for a request under ``prefix``, else None.

    As Starlette's routing does, the path includes ``root_path`` (ASGI spec): the match is
    on what follows it, so ``uvicorn --root-path /api`` serves the endpoint at
    ``/api/debug/flight``, where the app's own routes are. ``prefix_slash`` is ``prefix +
    "/"``, passed in so that the per-request check concatenates nothing.
    """
    path = scope.get("path")
    if type(path) is not str:
        return None
    mount = ""
    root = scope.get("root_path")
    if root and type(root) is str and path.startswith(root):
        rest = path[len(root) :]
        if rest == "" or rest[0] == "/":
            mount, path = root, rest
    if path == prefix or path.startswith(prefix_slash):
        return mount + prefix, path[len(prefix) :]
    return None
