"""Read a request body up to a size limit, refusing a larger one before it is read whole."""

from __future__ import annotations

from starlette.requests import Request

from lightning_accel.serving.inputs import RequestError


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, or a 413 as soon as it is known to exceed ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before any of the body is read; a
    body without one (chunked) is read chunk by chunk and refused at the chunk that crosses it.

    Raises:
        RequestError: 413 over the limit; 400 a ``Content-Length`` that is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r} is not a number") from None
        if length > max_bytes:
            raise RequestError(413, _too_large(f"{length} bytes", max_bytes))
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise RequestError(413, _too_large(f"more than {max_bytes} bytes", max_bytes))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: str, max_bytes: int) -> str:
    return (
        f"body too large: {size}, the limit is {max_bytes} bytes; send fewer samples per request "
        "(or start the server with a larger max_body_bytes)"
    )
