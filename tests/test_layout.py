"""The architecture's import rules, read from the source: the page sees only the server's
public face, and only the serve command's composition root knows the page."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            names.add(".".join(p for p in (base, node.module or "") if p))
    return names


def test_the_page_imports_only_the_service_face_and_the_public_api():
    for path in sorted((ROOT / "ui").glob("*.py")):
        ours = {m for m in imported_modules(path) if m.split(".")[0] == "steering"}
        assert ours <= {"steering", "steering.serve"}, (path.name, ours)


def test_only_the_composition_root_imports_the_page():
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "steering").rglob("*.py"))
        if any(m == "ui" or m.startswith("ui.") for m in imported_modules(path))
    ]
    assert importers == ["steering/serve/app.py"]
