"""bench/results: every markdown file is what its script renders from the JSON beside it, and
docs/results.md is what bench/results_page.py writes; no hand edits survive."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_results_markdown_is_rendered_from_its_json(tmp_path):
    # Render in a copy, so the test writes nothing into the repository.
    shutil.copytree(ROOT / "bench", tmp_path / "bench", ignore=shutil.ignore_patterns("work", "__pycache__"))
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "results.md", tmp_path / "docs" / "results.md")
    scripts = sorted(p for p in (tmp_path / "bench").glob("*.py") if "add_render_flag(" in p.read_text())
    assert len(scripts) >= 10
    for script in scripts:
        out = subprocess.run([sys.executable, str(script), "--render"], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, (script.name, out.stderr[-2000:])
    # NOTES.md is the one hand-written file: dated notes, kept apart from the figures.
    rendered = sorted(p for p in (tmp_path / "bench" / "results").glob("*.md") if p.name != "NOTES.md")
    assert {p.name for p in rendered} == {p.name for p in (ROOT / "bench" / "results").glob("*.md")} - {"NOTES.md"}
    for path in rendered:
        assert path.read_text() == (ROOT / "bench" / "results" / path.name).read_text(), f"{path.name} differs from its render"
    check = subprocess.run([sys.executable, "bench/results_page.py", "--check"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
