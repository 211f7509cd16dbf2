"""Static files under content-hashed URLs, ready for a CDN: `/static/{digest}/{name}`.

The digest is part of the URL, so a response never changes: `Cache-Control: public, max-age=31536000, immutable`,
a strong ETag (If-None-Match → 304) and a gzip variant prepared once per process. A URL whose digest is not the
file's current one is a 404, never another version's bytes under an immutable URL.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from functools import cache
from importlib.abc import Traversable

from fastapi import FastAPI, Request, Response

STATIC_PREFIX = "/static"
IMMUTABLE = "public, max-age=31536000, immutable"
COMPRESSIBLE = (".js", ".css", ".svg", ".map", ".json", ".html", ".txt")


@dataclass(frozen=True)
class Asset:
    name: str
    digest: str
    body: bytes
    media_type: str

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'

    @property
    def gzip_etag(self) -> str:  # another representation, so another strong tag
        return f'"{self.digest}-gz"'

    @property
    def url(self) -> str:
        return f"{STATIC_PREFIX}/{self.digest}/{self.name}"

    @property
    def compressible(self) -> bool:
        return self.name.endswith(COMPRESSIBLE)


class AssetDirectory:
    """The files of one directory, hashed on first use (once per process: every create_app shares them)."""

    def __init__(self, directory: Traversable) -> None:
        self.directory = directory

    @cache  # noqa: B019 - one instance per directory for the process's lifetime
    def assets(self) -> dict[str, Asset]:
        found = {}
        for entry in self.directory.iterdir():
            if entry.is_file():
                body = entry.read_bytes()
                media_type = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                found[entry.name] = Asset(entry.name, hashlib.sha256(body).hexdigest()[:20], body, media_type)
        return found

    def url(self, name: str) -> str:
        return self.assets()[name].url


@cache
def _gzipped(asset: Asset) -> bytes:
    return gzip.compress(asset.body, compresslevel=9, mtime=0)


def _accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower().removeprefix("q=")
            try:
                return not params.strip() or float(q) > 0
            except ValueError:
                return True
    return False


def _matches(if_none_match: str, tags: tuple[str, ...]) -> bool:
    # weak comparison, as RFC 9110 asks for If-None-Match
    offered = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in offered or any(t in offered for t in tags)


def install_static(app: FastAPI, assets: AssetDirectory) -> None:
    async def serve(digest: str, name: str, request: Request) -> Response:
        asset = assets.assets().get(name)
        if asset is None or asset.digest != digest:
            return Response(status_code=404, headers={"Cache-Control": "no-store"})
        use_gzip = asset.compressible and _accepts_gzip(request.headers.get("accept-encoding", ""))
        headers = {
            "Cache-Control": IMMUTABLE,
            "ETag": asset.gzip_etag if use_gzip else asset.etag,
            "Vary": "Accept-Encoding",
        }
        if _matches(request.headers.get("if-none-match", ""), (asset.etag, asset.gzip_etag)):
            return Response(status_code=304, headers=headers)
        if use_gzip:
            headers["Content-Encoding"] = "gzip"
            body = _gzipped(asset)
        else:
            body = asset.body
        if request.method == "HEAD":
            return Response(headers=headers | {"Content-Length": str(len(body))}, media_type=asset.media_type)
        return Response(body, headers=headers, media_type=asset.media_type)

    app.add_api_route(
        STATIC_PREFIX + "/{digest}/{name}", serve, methods=["GET", "HEAD"], include_in_schema=False, name="static"
    )
