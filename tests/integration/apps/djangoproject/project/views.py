"""Views the integration tests call: an upload digest, a streamed body, the
absolute URL Django builds for the request."""

from __future__ import annotations

import hashlib

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

# The test imports the same generator to know what to expect; trio-fastcgi
# runs with the repository as its working directory.
from tests.integration.apps.payload import stream_bytes


@csrf_exempt
def upload(request: HttpRequest) -> JsonResponse:
    """Size and sha256 of the uploaded file ``file``, and the form field ``name``."""
    uploaded = request.FILES["file"]
    digest = hashlib.sha256()
    size = 0
    for chunk in uploaded.chunks():
        digest.update(chunk)
        size += len(chunk)
    return JsonResponse(
        {
            "name": request.POST.get("name"),
            "filename": uploaded.name,
            "size": size,
            "sha256": digest.hexdigest(),
        }
    )


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """``size`` bytes from ``seed``, streamed."""
    size = int(request.GET["size"])
    seed = int(request.GET["seed"])
    return StreamingHttpResponse(stream_bytes(size, seed), content_type="application/octet-stream")


def absolute(request: HttpRequest) -> JsonResponse:
    """The URLs and host Django sees for this request."""
    return JsonResponse(
        {
            "absolute_uri": request.build_absolute_uri(),
            "host": request.get_host(),
            "script_name": request.META.get("SCRIPT_NAME", ""),
        }
    )


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django over FastCGI!\n", content_type="text/plain")
