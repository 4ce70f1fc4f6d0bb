"""A Griffe extension for the docs site's API reference (mkdocs.yml, mkdocstrings): the
library's docstrings cross-reference with Sphinx roles (``:class:`~bridge.errors.ConfigError```,
``:meth:`Bridge.start```); this turns each into an autorefs link the site checks.

- a dotted target (``bridge.errors.ConfigError``) must resolve: ``mkdocs build --strict``
  fails on a reference to something that does not exist or is not documented;
- a name relative to the docstring's package (``.audit``, ``~.web.Web.read_form``)
  is made absolute, and must resolve too;
- a bare name (``Report``, ``Bridge.start``) is looked up in the docstring's module:
  it links when found and stays code otherwise (it cannot be checked without
  guessing where Sphinx would have found it).
- ``~`` shows only the last component, as Sphinx does; ``()`` after a function is kept.

Role targets inside private modules (``bridge._envelope_limits``) are not rendered in
the reference, so they stay code too.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:class|func|meth|mod|data|attr|exc|obj):`(?P<tilde>~?)(?P<target>\.?[A-Za-z_][\w.]*)"
    r"(?P<call>\(\))?`"
)


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring to Markdown autorefs (module doc)."""

    def on_instance(self, *, obj: griffe.Object, **_: Any) -> None:
        if obj.docstring is None:
            return
        module = obj.module
        package = module.path if module.is_package else module.path.rsplit(".", 1)[0]
        obj.docstring.value = _ROLE.sub(
            lambda m: _link(m, module.path, package), obj.docstring.value
        )


def _link(match: re.Match[str], module: str, package: str) -> str:
    target, call = match["target"], match["call"] or ""
    if target.startswith("."):  # relative to the docstring's package: a full path
        target = package + target
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    title = f"<code>{shown}{call}</code>"
    if target.startswith("bridge.") or target == "bridge":
        if any(part.startswith("_") for part in target.split(".")):
            return f"`{shown}{call}`"  # private: not in the reference
        return f"[`{shown}{call}`][{target}]"
    # relative to the docstring's module: an optional reference (no failure if absent)
    return f'<autoref identifier="{module}.{target}" optional>{title}</autoref>'
