"""DVC stage 'code': one manifest per stage of the code it runs, in code/<stage>.txt.

Each manifest lists the stage's script and every package module the script imports, at any
depth, with their sha256 (pipeline.codedeps). The other stages depend on their manifest, so an
edit re-runs exactly the stages whose code it touches: an edit to the report's rendering re-runs
the report, never the training.

Each DVC project runs this stage from its own folder (the root's dvc.yaml, and paper/dvc.yaml,
which is a DVC project of its own) and gets the manifests of the stages its dvc.yaml runs, in its
own code/ folder: a project's stages then depend only on files that project writes.
"""

import os
from pathlib import Path

import yaml

from pipeline.codedeps import stage_manifest
from pipeline.errors import UserError
from pipeline.fileio import atomic_write_text

OUT = Path("code")


def stage_scripts(pipeline_file: Path, project: Path) -> list[Path]:
    """The stage scripts ``pipeline_file``'s stages run (``python <path>/stages/<name>.py``), this
    stage's own excepted; each must be one of ``project``'s stages/."""
    stages = yaml.safe_load(pipeline_file.read_text())["stages"]
    scripts = set()
    for name, stage in stages.items():
        words = str(stage["cmd"]).split()
        script = Path(os.path.normpath(pipeline_file.parent.absolute() / words[1])) if len(words) > 1 else None
        if words[0] != "python" or script is None or script.parent != project / "stages":
            raise UserError(f"{pipeline_file}: stage {name!r} runs {stage['cmd']!r}; "
                            f"valid: 'python <path to {project / 'stages'}>/<script>.py'")
        if script.stem != "code":
            scripts.add(script)
    return sorted(scripts)


def main() -> str:
    # The project's files as DVC sees them: the checkout this script was started from (not
    # wherever the `pipeline` package was imported from).
    project = Path(os.path.normpath(Path(__file__).absolute())).parents[1]
    OUT.mkdir(exist_ok=True)
    changed = []
    scripts = stage_scripts(Path("dvc.yaml"), project)
    for script in scripts:
        target, text = OUT / f"{script.stem}.txt", stage_manifest(script, project)
        if not target.is_file() or target.read_text() != text:
            atomic_write_text(target, text)
            changed.append(script.stem)
    for stale in set(OUT.glob("*.txt")) - {OUT / f"{s.stem}.txt" for s in scripts}:
        stale.unlink()
    return f"{len(scripts)} stage manifests in {OUT}/; changed: {', '.join(changed) or 'none'}"


if __name__ == "__main__":
    try:
        said = main()
    except UserError as error:
        raise SystemExit(f"error in stage code: {error}") from None
    print(f"code: {said}", flush=True)
