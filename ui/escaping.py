"""Text put into the page's HTML views: every piece escaped, template characters included.

A ``gr.HTML`` fills its template in the browser (``${value}``, Handlebars), so beyond what
``html.escape`` covers, ``$``, braces and backticks are written as character references too:
a token or a label can never become markup or template code.
"""

from __future__ import annotations

from html import escape

TEMPLATE = str.maketrans({"$": "&#36;", "{": "&#123;", "}": "&#125;", "`": "&#96;"})


def text(value: object) -> str:
    """``value`` as text safe in HTML content and in a quoted attribute."""
    return escape(str(value), quote=True).translate(TEMPLATE)
