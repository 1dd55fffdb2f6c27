"""The pack as the Comfy Registry (where ComfyUI-Manager installs from) takes it: comfy-cli's own `comfy node validate`,
the check `comfy node publish` runs first, passes with no warning. It reads pyproject.toml as the registry does, then
runs ruff's exec / eval / one-line-statements rules over the pack, rules comfy-cli 1.23.0 says will soon refuse a
publish."""
import os
import subprocess

from comfy_host import comfy_cli, copy_pack


def test_comfy_node_validate_passes_with_no_warning(tmp_path):
    cli = comfy_cli()
    copy_pack(tmp_path)
    out = subprocess.run([cli, "--skip-prompt", "node", "validate"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    said = out.stdout + out.stderr
    assert out.returncode == 0, said[-3000:]
    assert "All validation checks passed" in said and "warning" not in said.lower(), said[-3000:]
