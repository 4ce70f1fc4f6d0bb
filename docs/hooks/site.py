"""MkDocs hooks of the docs site (mkdocs.yml ``hooks:``): the repository's own Markdown
files outside docs/ become pages, and every link stays valid both on the code host
(where docs/*.md are read in place) and in the built site.

- **Pages from outside docs/** (:data:`INCLUDED`): README.md is the front page
  (``index.md``) — it stays the one source, nothing is copied into docs/ — and
  CHANGELOG.md and deploy/README.md are pages of their own.
- **The API reference** (``api/``): every public module of ``src/bridge`` (no
  ``_private`` part), a page per stage package, rendered from its docstrings by
  mkdocstrings — generated from the source tree, so a new module is in it at once.
- **Links** (every page): a relative link whose target is one of those files points
  to its page; one into docs/ (``docs/OPERATIONS.md`` from the README) is made
  relative to the site; any other target outside docs/ (``src/...``, ``LICENSE``)
  becomes the path as code, since the site does not hold it.  Links inside docs/ are
  left to MkDocs, which checks them: ``mkdocs build --strict`` fails on a broken one.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

#: Repository file → the page it becomes.
INCLUDED = {
    "README.md": "index.md",
    "CHANGELOG.md": "changelog.md",
    "deploy/README.md": "deploy.md",
}
# [text](target) and ![alt](target), not inside code spans (good enough for these docs:
# their code blocks hold no Markdown links)
_LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:|^#|^/", re.IGNORECASE)


#: The repository (this file is docs/hooks/site.py) and its docs folder, as the
#: README's links name it.
ROOT = Path(__file__).resolve().parents[2]
DOCS = "docs"


#: The nav entry (mkdocs.yml) replaced by the API reference's pages.
API_NAV = "API reference"
API_INTRO = """# {title}

From the docstrings. What an application imports is the package `bridge` (its
`__all__`); everything else is reached by its stage package
([Architecture]({up}ARCHITECTURE.md)).
"""


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Put the API reference's pages (one per stage package) in the nav."""
    pages = [{package: page} for package, page, _ in api_pages(ROOT / "src")]
    config.nav = [
        {API_NAV: pages} if isinstance(item, dict) and API_NAV in item else item
        for item in config.nav or []
    ]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the pages of :data:`INCLUDED` and the API reference (module doc)."""
    for source, page in INCLUDED.items():
        content = (ROOT / source).read_text(encoding="utf-8")
        files.append(File.generated(config, page, content=content))
    for _, page, content in api_pages(ROOT / "src"):
        files.append(File.generated(config, page, content=content))
    return files


def api_pages(src: Path) -> list[tuple[str, str, str]]:
    """(package, page, Markdown) of the API reference: ``::: module`` for each public
    module, one page per stage package (top-level modules on the ``bridge`` page)."""
    sections: dict[str, list[str]] = {}
    for path in sorted((src / "bridge").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if any(part.startswith("_") for part in parts):
            continue
        top_level = len(parts) == 1 or (len(parts) == 2 and path.parent == src / "bridge")
        package = "bridge" if top_level else ".".join(parts[:2])  # bridge.config: top level
        sections.setdefault(package, []).append(".".join(parts))
    pages = []
    for package, modules in sections.items():
        page = "api/index.md" if package == "bridge" else f"api/{package.split('.')[1]}.md"
        lines = [API_INTRO.format(title=f"API reference: `{package}`", up="../")]
        for module in modules:
            options = "\n    options:\n      members: false" if module == "bridge" else ""
            lines.append(f"::: {module}{options}\n")
        pages.append((package, page, "\n".join(lines)))
    return pages


def on_page_markdown(
    markdown: str, page: Page, config: MkDocsConfig, files: Files, **_: Any
) -> str:
    """Rewrite the links of ``page`` (module doc)."""
    docs = DOCS
    source = _source_path(page.file.src_uri, docs)
    where = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        target = match["target"]
        if _EXTERNAL.match(target):
            return match[0]
        path, _, anchor = target.partition("#")
        in_repo = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        if in_repo in INCLUDED:
            new_target = INCLUDED[in_repo]
        elif in_repo == docs or in_repo.startswith(f"{docs}/"):
            new_target = in_repo[len(docs) + 1 :]
        else:
            return f"{match['text']} (`{in_repo}` in the repository)"
        relative = posixpath.relpath(new_target, where or ".")
        suffix = f"#{anchor}" if anchor else ""
        return f"{match['bang']}[{match['text']}]({relative}{suffix})"

    return _LINK.sub(rewrite, markdown)


def _source_path(src_uri: str, docs: str) -> str:
    """Where the page's Markdown lives in the repository (links are relative to it)."""
    for source, page in INCLUDED.items():
        if page == src_uri:
            return source
    return f"{docs}/{src_uri}"
