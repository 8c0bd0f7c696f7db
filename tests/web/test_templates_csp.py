"""Templates stay within the Content-Security-Policy without a browser: no style="" attribute and
no inline <script> or <style> without the nonce (e-mails are not pages and keep inline styles)."""

import re
from pathlib import Path

from django.conf import settings

TEMPLATES = Path(settings.BASE_DIR) / "templates"
# A style="" or on...="" attribute, or a <script>/<style> tag with neither src= nor nonce=.
REFUSED = re.compile(r"\sstyle=\"|\son[a-z]+=\"|<(?:script|style)\b(?![^>]*\b(?:src|nonce)=)[^>]*>",
                     re.IGNORECASE)
COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)


def _pages():
    return [p for p in TEMPLATES.rglob("*.html") if "emails" not in p.relative_to(TEMPLATES).parts]


def test_no_page_template_has_a_style_attribute_or_an_inline_script_without_the_nonce():
    problems = []
    for path in _pages():
        text = COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text())
        for match in REFUSED.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"{path.relative_to(TEMPLATES)}:{line}: {match.group(0).strip()}")
    assert problems == []
