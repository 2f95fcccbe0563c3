"""The run folder: where a run writes, how it is made, swapped in, resumed or left.

A fresh run (and ``--overwrite``) builds in a temporary sibling folder and swaps
it in at the end; ``--resume`` continues in the existing run folder. A folder
unlearnkit did not make (no marker) is never written into or replaced.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from unlearnkit.config import RunConfig
from unlearnkit.data.spec import parse_spec
from unlearnkit.errors import TrainingError
from unlearnkit.rundir import (
    MARKER,
    check_outputs,
    read_marker,
    remove_leftovers,
    remove_stale_tmp_inside,
    swap_in,
    temp_sibling,
    write_marker,
)
from unlearnkit.training.checkpoint import checkpoints_of, resumable_leftover

# Keys of the config that may change between a run and its resumption.
RESUMABLE_CHANGES = {("train", "max_steps"), ("train", "epochs"), ("train", "save_every"), ("train", "progress"),
                     ("train", "keep_checkpoints"), ("train", "report_to"), ("train", "push_to_hub"),
                     ("train", "hub_repo_id"), ("train", "hub_private")}


def _config_diff(a: dict, b: dict, prefix=()) -> list[tuple]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        path = (*prefix, key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs.extend(_config_diff(va, vb, path))
        elif va != vb:
            diffs.append(path)
    return diffs




class RunFolder:
    """The folder of one run: ``final_dir`` is where it is found, ``run_dir`` where it writes now."""

    def __init__(self, cfg: RunConfig, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.final_dir = cfg.run_dir
        self.run_dir = cfg.run_dir
        self.adopt: Path | None = None

    def inputs(self) -> list[tuple[str, Path]]:
        """Every local file or folder the run reads: the model and each data source."""
        cfg = self.cfg
        out: list[tuple[str, Path]] = []
        model_path = Path(cfg.model.name).expanduser()
        if model_path.exists():
            out.append(("input model", model_path))
        sources = {"data.forget": cfg.data.forget, "data.random": cfg.data.random}
        sources.update({f"data.retain[{i}]": ds for i, ds in enumerate(cfg.data.retain_sources)})
        sources.update({f"eval.nll.{k}": ds for k, ds in cfg.eval.nll.items()})
        for key, ds in sources.items():
            if ds is None:
                continue
            location = Path(parse_spec(ds.spec)[1]).expanduser()
            if location.exists():
                out.append((f"data file of {key}", location))
        return out

    def check(self) -> None:
        """Decide where the run writes, before anything is loaded or written.

        A fresh run (and ``--overwrite``) builds in a temporary sibling folder and
        swaps it in at the end; ``--resume`` continues in the existing run folder.
        """
        from unlearnkit.config import check_for_unlearn

        check_for_unlearn(self.cfg)  # data.forget and the method's data, before any folder is touched
        from unlearnkit.outputs import preflight

        preflight(self.cfg)  # trackers installed, hub reachable when the run will push
        final = self.final_dir
        out_root = final.parent
        if out_root.exists() and not out_root.is_dir():
            raise TrainingError(f"output_dir {out_root} is a file, not a folder; set output_dir to a folder.")
        if final.exists() and not final.is_dir():
            raise TrainingError(f"the run folder {final} is a file, not a folder; choose another name (--set name=...).")
        hint = "choose another output_dir or name (--set name=...)."
        check_outputs([("run folder", final), ("temporary run folder", temp_sibling(final))], self.inputs(), hint)
        self.adopt = None
        if self.resume:
            if not final.exists():
                # A fresh run killed after a checkpoint left its temporary folder: continue that one.
                self.adopt = resumable_leftover(final)
                if self.adopt is None:
                    raise TrainingError(f"--resume: there is no run folder {final} to resume (and no checkpoint of an "
                                        "interrupted run beside it); start the run without --resume.")
                self.run_dir = self.adopt
            marker = read_marker(self.run_dir)
            legacy = (self.run_dir / "config.yaml").is_file() and (self.run_dir / "manifest.json").is_file()
            if marker is None and not legacy:
                raise TrainingError(f"--resume: {self.run_dir} was not made by unlearnkit (it has no {MARKER}); "
                                    "there is nothing to resume in it.")
            if marker is not None and marker.get("kind") != "run":
                raise TrainingError(f"--resume: {self.run_dir} holds an unlearnkit {marker.get('kind')} output, not a run.")
            done = (self.run_dir / "summary.json").exists()
            if not self.checkpoints() and not done:
                raise TrainingError(f"--resume: {self.run_dir} has no checkpoint to resume from.")
            saved = self.run_dir / "config.yaml"
            if saved.exists():
                import yaml

                old = yaml.safe_load(saved.read_text())
                new = self.cfg.model_dump(mode="json")
                diffs = [d for d in _config_diff(old, new) if d[:2] not in RESUMABLE_CHANGES]
                if diffs:
                    keys = ", ".join(".".join(map(str, d)) for d in diffs)
                    raise TrainingError(f"--resume: the config differs from the run's saved config in {keys}; resume with the same config.")
            return
        if final.exists() and any(final.iterdir()):
            marker = read_marker(final)
            if marker is None:
                raise TrainingError(
                    f"{final} already exists and is not an unlearnkit run folder (it has no {MARKER}); unlearnkit "
                    "never writes into or replaces a folder it did not create: move it away or choose another name "
                    "(--set name=...) or output_dir."
                )
            if marker.get("kind") != "run":
                raise TrainingError(f"{final} holds an unlearnkit {marker.get('kind')} output, not a run; choose another name.")
            done = (final / "summary.json").exists()
            if (done or checkpoints_of(final)) and not self.overwrite:
                raise TrainingError(
                    f"run folder {final} already holds a run; use --resume to continue it, "
                    "--overwrite to replace it (once the new run has finished), or another name (--set name=...)."
                )
        self.run_dir = temp_sibling(final)

    def prepare(self) -> None:
        """Main process: clean what killed runs left, then create (or adopt) the folder to write."""
        final = self.final_dir
        if self.resume:
            if self.adopt is not None:
                os.rename(self.adopt, final)
                print(f"Continuing the interrupted run left in {self.adopt.name}; it is now {final}.", flush=True)
                self.run_dir = final
            remove_leftovers(final)
            remove_stale_tmp_inside(final)
            if read_marker(final) is None:
                write_marker(final, "run", name=self.cfg.name)
            return
        remove_leftovers(final, keep=self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        write_marker(self.run_dir, "run", name=self.cfg.name)

    def finish(self, ok: bool) -> str | None:
        """Main process, fresh runs: swap the finished folder in, or decide what an unfinished one leaves.

        Returns a sentence for the user when the run did not finish.
        """
        final, work = self.final_dir, self.run_dir
        if self.resume or work == final or not work.exists():
            return None
        if ok:
            swap_in(work, final)
            self.run_dir = final
            return None
        ckpts = checkpoints_of(work)
        if ckpts and not final.exists():
            # Resumable: keep it as the run folder (it has no summary.json, so it does not look finished).
            swap_in(work, final)
            self.run_dir = final
            return f"the run stopped after its checkpoint {ckpts[-1].name} in {final}; continue it with --resume."
        shutil.rmtree(work, ignore_errors=True)
        if final.exists():
            return f"nothing of this run was kept; the earlier run in {final} is unchanged."
        return "the run stopped before its first checkpoint, so nothing was kept; run it again to start over."

    def checkpoints(self) -> list[Path]:
        return checkpoints_of(self.run_dir)

