"""The API documentation pages work without internet: every asset they load is served by the API itself."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize(("path", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
async def test_docs_page_loads_only_assets_served_by_the_api(client, path, script):
    page = await client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text)
    urls += re.findall(r"""(?:url|spec-url)\s*:\s*["']([^"']+)["']""", page.text)
    assert any(url.endswith(script) for url in urls), urls
    assert not [url for url in urls if re.match(r"(https?:)?//", url)], "a docs page must not load from a CDN"
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    if path == "/redoc":
        assert "fonts.googleapis" not in page.text
