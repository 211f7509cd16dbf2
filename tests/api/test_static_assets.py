"""Static assets are CDN-ready: content-hashed URLs, immutable caching, strong ETags with 304s, gzip; the pages
that carry a token in their URL are never stored."""

from __future__ import annotations

import gzip
import re

STATIC_URL = re.compile(r"^/static/[0-9a-f]{20}/[\w.-]+$")


async def asset_urls(client) -> list[str]:
    page = await client.get("/docs")
    return re.findall(r"""(?:src|href)\s*=\s*["'](/static/[^"']+)["']""", page.text)


async def test_the_docs_page_points_at_content_hashed_urls(client):
    page = await client.get("/docs")
    assert page.headers["cache-control"] == "no-cache"  # the page changes with each release; its assets never
    urls = await asset_urls(client)
    assert {u.rsplit("/", 1)[1] for u in urls} >= {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}
    assert all(STATIC_URL.match(u) for u in urls), urls


async def test_an_asset_is_immutable_with_a_strong_etag_and_answers_if_none_match(client):
    url = next(u for u in await asset_urls(client) if u.endswith(".css"))
    first = await client.get(url, headers={"Accept-Encoding": "identity"})
    assert first.status_code == 200
    assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert first.headers["content-type"].startswith("text/css")
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]+"', etag), etag  # strong: no W/
    assert "content-encoding" not in first.headers
    again = await client.get(url, headers={"Accept-Encoding": "identity", "If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag and again.headers["cache-control"] == first.headers["cache-control"]
    other = await client.get(url, headers={"Accept-Encoding": "identity", "If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == first.content


async def test_an_asset_is_gzipped_for_clients_that_accept_it(client):
    url = next(u for u in await asset_urls(client) if u.endswith(".js"))
    plain = await client.get(url, headers={"Accept-Encoding": "identity"})
    zipped = await client.send(client.build_request("GET", url, headers={"Accept-Encoding": "gzip"}), stream=True)
    try:
        raw = b"".join([chunk async for chunk in zipped.aiter_raw()])
    finally:
        await zipped.aclose()
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["vary"] == "Accept-Encoding"
    assert zipped.headers["etag"] != plain.headers["etag"]  # another representation, another strong tag
    assert len(raw) < len(plain.content) / 2
    assert gzip.decompress(raw) == plain.content


async def test_a_digest_that_is_not_the_files_is_not_found(client):
    url = (await asset_urls(client))[0]
    _, _, digest, name = url.split("/")
    stale = await client.get(f"/static/{'0' * len(digest)}/{name}")
    assert stale.status_code == 404
    assert "immutable" not in stale.headers.get("cache-control", "")
    assert (await client.get(f"/static/{digest}/no-such-file.js")).status_code == 404


async def test_pages_with_a_token_in_their_url_are_never_stored(client):
    for path in ("/verify-email?token=abc", "/accept-invitation?token=abc"):
        page = await client.get(path)
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store", path
