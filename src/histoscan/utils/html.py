"""HTML pages rendered from the package's jinja2 templates (histoscan/templates/*.html.j2), autoescaped."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def _environment() -> Any:
    import jinja2  # lazy: only the commands that write a report pay for the import

    return jinja2.Environment(
        loader=jinja2.PackageLoader("histoscan", "templates"),
        autoescape=True,  # every value is escaped unless the template marks it safe (none does)
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the render instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(template: str, **context: Any) -> str:
    """The page `template` (a file name under histoscan/templates) rendered with `context`."""
    return _environment().get_template(template).render(**context)
