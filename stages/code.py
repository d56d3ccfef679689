"""DVC stage 'code': one manifest per stage of the code it runs, in code/<stage>.txt.

Each manifest lists the stage's script and every package module the script imports, at any
depth, with their sha256 (pipeline.codedeps). The other stages depend on their manifest, so an
edit re-runs exactly the stages whose code it touches: an edit to the report's rendering re-runs
the report, never the training.
"""

from pathlib import Path

from pipeline.codedeps import stage_manifest
from pipeline.fileio import atomic_write_text

OUT = Path("code")


def main() -> str:
    # The project's files, as DVC sees them (not wherever the `pipeline` package was imported from).
    root = Path.cwd()
    OUT.mkdir(exist_ok=True)
    changed = []
    scripts = sorted(p for p in (root / "stages").glob("*.py") if p.stem not in ("__init__", "code"))
    for script in scripts:
        target, text = OUT / f"{script.stem}.txt", stage_manifest(script, root)
        if not target.is_file() or target.read_text() != text:
            atomic_write_text(target, text)
            changed.append(script.stem)
    for stale in set(OUT.glob("*.txt")) - {OUT / f"{s.stem}.txt" for s in scripts}:
        stale.unlink()
    return f"{len(scripts)} stage manifests in {OUT}/; changed: {', '.join(changed) or 'none'}"


if __name__ == "__main__":
    print(f"code: {main()}", flush=True)
