"""The static export: same views, relative links, copied images, openable from disk."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote


def _local_refs(html: str) -> list[str]:
    refs = re.findall(r'(?:href|src)="([^"]+)"', html)
    return [r for r in refs if not re.match(r"^[a-z]+:", r) and not r.startswith("#")]


def test_export_static(tmp_path, populated):
    from dashboards.export import export_static

    store, art_root = populated
    index = export_static(store, art_root, tmp_path / "site")
    assert index == tmp_path / "site" / "index.html" and index.is_file()
    pages = sorted((tmp_path / "site").rglob("*.html"))
    names = {p.relative_to(tmp_path / "site").as_posix() for p in pages}
    assert {"index.html", "models/lite0-demo/index.html", "models/lite0-demo/neurons/espresso.html",
            "models/lite0-demo/compare/1_vs_2.html", "models/lite1-prod/compare/1_vs_3.html"} <= names
    n_images = 0
    for page in pages:
        html = page.read_text()
        assert str(art_root.parent) not in html          # no machine paths
        assert "?" not in "".join(_local_refs(html))     # no query links: the files cannot answer them
        assert "<form" not in html                        # no filter or version picker without a server
        for ref in _local_refs(html):
            assert not ref.startswith("/"), (page, ref)
            target = (page.parent / unquote(ref.split("?")[0])).resolve()
            assert target.is_file(), (page, ref)
            assert target.is_relative_to((tmp_path / "site").resolve())
            n_images += ref.endswith(".png")
    assert n_images > 20
    model = (tmp_path / "site/models/lite0-demo/index.html").read_text()
    assert model.index("espresso") < model.index("egyptian-cat")
    assert 'badge-fail">FAIL' in (tmp_path / "site/models/lite0-demo/neurons/espresso.html").read_text()


def test_export_empty_store(tmp_path, empty_store):
    from dashboards.export import export_static

    store, root = empty_store
    index = export_static(store, root, tmp_path / "out")
    assert "No audits yet" in index.read_text()
    assert (tmp_path / "out/static/style.css").is_file()
