"""The layering rules of the package, enforced by import-linter's contracts in .importlinter."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_every_module_has_a_docstring():
    missing = []
    for path in sorted((ROOT / "operator" / "slm_operator").rglob("*.py")):
        source = path.read_text()
        import ast
        if source.strip() and ast.get_docstring(ast.parse(source)) is None:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"modules without a docstring: {missing}"
