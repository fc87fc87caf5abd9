"""What every marketing email ends with: the sender's postal address and a way out (CAN-SPAM).

CAN-SPAM (15 U.S.C. 7704(a)(5)) wants each commercial email to carry a valid physical postal address
of the sender and a clear way to opt out; RFC 8058 adds the one-click ``List-Unsubscribe`` headers
(``pipeline.unsubscribe``). Templates may place ``{{ unsubscribe_url }}`` where they like; a body
that does not carry it gets the link in the footer, so no email goes out without one.

    text   …body…\\n\\n--\\n<postal address>\\nUnsubscribe: <url>
    html   …body…<footer>…address…<a href="<url>">Unsubscribe</a></footer></body></html>

Pure: strings in, strings out.
"""

from __future__ import annotations

import html
import re

_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def text_footer(text: str, postal_address: str, unsubscribe_url: str) -> str:
    lines = ["", "--", postal_address]
    if unsubscribe_url and unsubscribe_url not in text:
        lines.append(f"Unsubscribe: {unsubscribe_url}")
    return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def html_footer(body: str, postal_address: str, unsubscribe_url: str) -> str:
    link = ""
    if unsubscribe_url and html.escape(unsubscribe_url) not in body and unsubscribe_url not in body:
        link = f' · <a href="{html.escape(unsubscribe_url)}">Unsubscribe</a>'
    footer = (f'<footer style="font-size:12px;color:#666;margin-top:24px">'
              f'{html.escape(postal_address)}{link}</footer>')
    ends = list(_BODY_END.finditer(body))
    if not ends:
        return body + footer
    at = ends[-1].start()
    return body[:at] + footer + body[at:]


def with_footer(parts: dict[str, str], postal_address: str, unsubscribe_url: str) -> dict[str, str]:
    """The email's parts with the footer in both the text and the HTML (a text part is made if there is none,
    so a client that shows only text still sees the address)."""
    out = dict(parts)
    out["text"] = text_footer(out.get("text") or "", postal_address, unsubscribe_url)
    if out.get("html"):
        out["html"] = html_footer(out["html"], postal_address, unsubscribe_url)
    return out
