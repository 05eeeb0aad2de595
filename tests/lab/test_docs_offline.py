"""The API docs work without internet: Swagger UI and ReDoc pages name no outside URL, every script,
style and icon they load answers here, and their policy forbids fetching from elsewhere. (The browser
test draws both with every outside request refused.)"""

from __future__ import annotations

import re

import pytest


@pytest.fixture(params=["sqlite"])
def backend(request) -> str:
    return request.param


@pytest.mark.parametrize("page", ["/api/docs", "/api/redoc"])
def test_docs_pages_load_only_from_this_server(lab, page):
    response = lab.anon.get(page)  # open without credentials, like the OpenAPI document's own page
    assert response.status_code == 200
    html = response.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert "fonts.googleapis" not in html
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 2, assets
    for url in assets:
        assert url.startswith("/"), url
        asset = lab.anon.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > (300 if url.endswith(".svg") else 10_000), url
    assert "/api/v1/openapi.json" in html


def test_favicon(lab):
    for url in ("/favicon.ico", "/static/favicon.svg"):
        response = lab.anon.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
        assert response.text.lstrip().startswith("<svg")
    login = lab.anon.get("/login").text
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in login
