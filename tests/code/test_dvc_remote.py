"""DVC remote storage round trip on a local-directory remote (the S3 set-up is in docs/scaleout.md).

A tiny ``dvc init --no-scm`` project with a file output and a directory output: ``dvc repro``,
``dvc push`` to ``dvc remote add -d local <tmpdir>``, then the cache and the outputs are deleted,
``dvc pull`` restores them byte-identical, and ``dvc status`` (also ``--cloud``) is clean.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

STAGES = {
    "stages": {
        "make": {
            "cmd": (
                "python -c \"import os, pathlib; pathlib.Path('data/parts').mkdir(parents=True, exist_ok=True); "
                "pathlib.Path('data/blob.bin').write_bytes(os.urandom(200_000)); "
                "[pathlib.Path(f'data/parts/{i}.txt').write_text(f'part {i}\\\\n' * 50) for i in range(5)]\""
            ),
            "outs": ["data/blob.bin", "data/parts"],
        },
        "digest": {
            "cmd": "python -c \"import hashlib, pathlib; pathlib.Path('digest.txt').write_text("
            "hashlib.sha256(pathlib.Path('data/blob.bin').read_bytes()).hexdigest())\"",
            "deps": ["data/blob.bin"],
            "outs": ["digest.txt"],
        },
    }
}
OUTPUTS = ("data/blob.bin", "data/parts/0.txt", "data/parts/4.txt", "digest.txt")


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    result = subprocess.run([sys.executable, "-m", "dvc", *args], check=False, cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, f"dvc {' '.join(args)}: {result.stdout[-1500:]}{result.stderr[-1500:]}"
    return result


def _digests(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in OUTPUTS}


def test_push_and_pull_through_a_local_remote(tmp_path: Path) -> None:
    project = tmp_path / "project"
    remote = tmp_path / "remote-storage"
    project.mkdir()
    (project / "dvc.yaml").write_text(yaml.safe_dump(STAGES, sort_keys=False))
    _dvc(["init", "--no-scm", "-q"], project)
    _dvc(["remote", "add", "-d", "local", str(remote)], project)
    assert "local" in _dvc(["remote", "list"], project).stdout

    _dvc(["repro"], project)
    before = _digests(project)
    pushed = _dvc(["push"], project)
    assert "pushed" in pushed.stdout, pushed.stdout
    assert any(p.is_file() for p in (remote / "files" / "md5").rglob("*"))
    assert "in sync" in _dvc(["status", "--cloud"], project).stdout  # the remote has everything

    # a fresh machine: no cache, no outputs (dvc.yaml + dvc.lock stay, as in a git checkout)
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data")
    (project / "digest.txt").unlink()

    _dvc(["pull"], project)
    assert _digests(project) == before
    assert "up to date" in _dvc(["status"], project).stdout
    repro = _dvc(["repro"], project)
    assert "Running stage" not in repro.stdout, repro.stdout  # pulled outputs count as up to date
