"""mkdocs hook: the site's front page is README.md, so the two never drift apart.

docs/index.md is a stub; on build its Markdown is replaced by README.md's, with the README's links into docs/
(``](docs/data.md)``, right on GitHub) made relative to the docs folder (``](data.md)``). The strict build then
checks those links like any page's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    readme = Path(config["config_file_path"]).parent / "README.md"
    return re.sub(r"\]\(docs/", "](", readme.read_text())
