"""A small JSON REST API over FastCGI: a to-do list kept in memory.

    GET    /todos          list all
    POST   /todos          create from {"title": ...}; 201 with the new item
    GET    /todos/<id>     one item, or 404
    DELETE /todos/<id>     remove it; 204, or 404

Serve it with ``python examples/rest_api.py`` behind a web server that passes
REQUEST_METHOD and PATH_INFO (or DOCUMENT_URI), e.g. nginx's fastcgi_params.
"""

from __future__ import annotations

import functools
import itertools
import json

import trio

import trio_fastcgi

MAX_BODY = 64 * 1024


class TodoStore:
    def __init__(self) -> None:
        self.items: dict[int, dict[str, object]] = {}
        self._ids = itertools.count(1)

    def add(self, title: str) -> dict[str, object]:
        item_id = next(self._ids)
        item: dict[str, object] = {"id": item_id, "title": title, "done": False}
        self.items[item_id] = item
        return item


async def send_json(request: trio_fastcgi.Request, payload: object, status: int = 200) -> None:
    await request.respond(
        json.dumps(payload) + "\n", status=status, content_type="application/json"
    )


async def api(request: trio_fastcgi.Request, store: TodoStore) -> None:
    method = request.params.get("REQUEST_METHOD", "GET")
    path = request.params.get("PATH_INFO") or request.params.get("DOCUMENT_URI", "/")
    parts = [part for part in path.split("/") if part]
    if parts == ["todos"]:
        if method == "GET":
            return await send_json(request, list(store.items.values()))
        if method == "POST":
            try:
                body = json.loads(await request.stdin.receive_all(MAX_BODY))
                title = body["title"]
                if not isinstance(title, str):
                    raise TypeError("title must be a string")
            except (trio_fastcgi.InputError, ValueError, KeyError, TypeError) as exc:
                return await send_json(request, {"error": f"bad request: {exc}"}, 400)
            return await send_json(request, store.add(title), 201)
        return await send_json(request, {"error": "method not allowed"}, 405)
    if len(parts) == 2 and parts[0] == "todos" and parts[1].isdigit():
        item_id = int(parts[1])
        if item_id not in store.items:
            return await send_json(request, {"error": "not found"}, 404)
        if method == "GET":
            return await send_json(request, store.items[item_id])
        if method == "DELETE":
            del store.items[item_id]
            return await request.respond(status=204, content_type=None)
        return await send_json(request, {"error": "method not allowed"}, 405)
    return await send_json(request, {"error": "not found"}, 404)


def make_handler() -> trio_fastcgi.Handler:
    """A handler with its own empty store."""
    return functools.partial(api, store=TodoStore())


if __name__ == "__main__":
    print("serving the to-do API over FastCGI on 127.0.0.1:9000")
    trio.run(functools.partial(trio_fastcgi.serve_tcp, make_handler(), 9000, host="127.0.0.1"))
