"""The docs site (mkdocs.yml): ``mkdocs build --strict`` passes — every link between pages
and every cross-reference in the docstrings resolves — with README.md as the front page
and the API reference from the docstrings; and a broken link does fail it."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "docs" / "hooks"


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
         "--site-dir", str(site)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("site_hooks", HOOKS / "site.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly_with_the_readme_as_front_page(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WARNING" not in result.stderr
    front = (site / "index.html").read_text(encoding="utf-8")
    assert 'id="jetstream-bridge-python">jetstream-bridge (Python)<' in front  # README's title
    assert 'href="OPERATIONS/"' in front and 'href="docs/' not in front
    catalog = (site / "api" / "catalog" / "index.html").read_text(encoding="utf-8")
    assert 'id="bridge.catalog.document.asyncapi"' in catalog  # rendered from docstrings
    assert ":class:" not in catalog and ":func:" not in catalog  # roles became links
    assert (site / "asyncapi" / "system_a.json").is_file()  # the catalog is published too


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    page = docs / "console.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n[gone](NO_SUCH_PAGE.md)\n", "utf-8")
    config: dict[str, Any] = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(HOOKS / "site.py")]
    python = config["plugins"][1]["mkdocstrings"]["handlers"]["python"]
    python["paths"] = [str(ROOT / "src")]
    python["options"]["extensions"] = [str(HOOKS / "sphinx_roles.py")]
    copy = tmp_path / "mkdocs.yml"
    copy.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0
    assert "NO_SUCH_PAGE.md" in result.stderr


def test_links_leaving_docs_point_to_their_pages_or_become_paths() -> None:
    site = hooks()

    page = SimpleNamespace(file=SimpleNamespace(src_uri="index.md"))  # what mkdocs passes

    readme = (
        "[ops](docs/OPERATIONS.md#exit-codes) [img](docs/img/a.png) ![shot](docs/img/a.png) "
        "[log](CHANGELOG.md) [dash](deploy/README.md) [code](src/bridge/config.py) "
        "[web](https://example.test/x.md) [here](#install)"
    )
    assert site.on_page_markdown(readme, page=page, config=None, files=None) == (
        "[ops](OPERATIONS.md#exit-codes) [img](img/a.png) ![shot](img/a.png) "
        "[log](changelog.md) [dash](deploy.md) code (`src/bridge/config.py` in the repository) "
        "[web](https://example.test/x.md) [here](#install)"
    )
    page.file.src_uri = "OPERATIONS.md"
    assert (
        site.on_page_markdown(
            "[a](../deploy/README.md) [b](console.md) [c](../README.md#install) [d](../LICENSE)",
            page=page,
            config=None,
            files=None,
        )
        == "[a](deploy.md) [b](console.md) [c](index.md#install) d (`LICENSE` in the repository)"
    )


def test_the_api_reference_lists_every_public_module_and_no_private_one() -> None:
    pages = hooks().api_pages(ROOT / "src")
    modules = {
        line.split()[1] for _, _, text in pages for line in text.splitlines()
        if line.startswith(":::")
    }  # fmt: skip
    assert {"bridge", "bridge.catalog.diff", "bridge.config", "bridge.cli"} <= modules
    assert not any("._" in module for module in modules)
    expected = {
        ".".join(p.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "src" / "bridge").rglob("*.py")
        if not any(part.startswith("_") and part != "__init__.py"
                   for part in p.relative_to(ROOT / "src").parts)
    }  # fmt: skip
    assert modules == expected
