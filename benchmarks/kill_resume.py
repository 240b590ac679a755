"""Kill a training run at random moments and check that --resume finishes it as if nothing happened.

    .venv/bin/python benchmarks/kill_resume.py [--trials 12] [--seed 0]

A synthetic HuSHeM-style folder is trained once without interruption (the reference). Each trial
starts the same command, kills its whole process group with SIGKILL after a delay drawn uniformly
over the reference's wall time (so kills land while images are read, folds train and save, and
the bundle is written), then runs it again with --resume. A trial passes when the resume exits 0,
its predictions.csv equals the reference's byte for byte, every fold's merged history holds every
epoch, and each fit that had a last.ckpt when it was killed went on from it (its next log starts
past epoch 0; a fit started over would give the same predictions, so they alone cannot tell). The unit test (tests/test_training.py) kills at one moment; this looks for the
moments it does not."""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spermhead.data.synthetic import write_synthetic
from spermhead.training.run import read_history

EPOCHS, FOLDS = 30, 3  # long enough that many kills land inside a fit


def command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "spermhead", "train", str(data), "--out", str(out), "--model", "spermnet",
            "--image-size", "24", "--epochs", str(EPOCHS), "--cv", str(FOLDS), "--no-tta", "--no-progress",
            "--threads", "1", "--init", "scratch"]


def checkpointed_fits(out: Path) -> list[Path]:
    """The fit folders holding a readable last.ckpt now (a link to a file that exists)."""
    return [ckpt.parent.parent for ckpt in out.glob("folds/**/checkpoints/last.ckpt") if ckpt.is_file()]


def first_logged_epoch(fit: Path) -> int | None:
    """The first epoch the fit's newest log version holds (None where it logged none: a kill
    after the fit's last checkpoint leaves nothing to train again)."""
    newest = max(fit.glob("logs/version_*"), key=lambda p: int(p.name[8:]))
    if not (newest / "metrics.csv").is_file():
        return None
    with open(newest / "metrics.csv") as fh:
        return min((int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("epoch")), default=None)


def problems(out: Path, reference: Path, checkpointed: list[Path]) -> list[str]:
    found = []
    if (out / "predictions.csv").read_bytes() != (reference / "predictions.csv").read_bytes():
        found.append("predictions differ from the uninterrupted run")
    for fold in sorted((out / "folds").glob("fold*")):
        epochs = [h["epoch"] for h in read_history(fold)]
        if epochs != list(range(EPOCHS)):
            found.append(f"{fold.name} history epochs {epochs}")
    found += [f"{fit.relative_to(out)} started over" for fit in checkpointed if first_logged_epoch(fit) == 0]
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    try:
        write_synthetic(work / "data", "hushem", 20)
        data = work / "data" / "HuSHeM"
        start = time.perf_counter()
        subprocess.run(command(data, work / "reference"), check=True, capture_output=True)
        wall = time.perf_counter() - start
        print(f"reference run: {wall:.1f} s ({FOLDS} folds x {EPOCHS} epochs)")
        failures = resumed = 0
        for trial in range(args.trials):
            out = work / f"trial{trial}"
            delay = rng.uniform(0.0, wall)
            proc = subprocess.Popen(command(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            time.sleep(delay)
            finished_first = proc.poll() is not None
            if not finished_first:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            checkpointed = checkpointed_fits(out)
            done = subprocess.run([*command(data, out), "--resume"], capture_output=True, text=True)
            found = [f"resume exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"] \
                if done.returncode else problems(out, work / "reference", checkpointed)
            failures += bool(found)
            resumed += len(checkpointed)
            state = "finished before the kill" if finished_first else f"killed at {delay:.1f} s"
            print(f"trial {trial}: {state}: {'; '.join(found) or 'resumed to the same predictions'}", flush=True)
        print(f"{args.trials - failures} of {args.trials} trials passed; {resumed} fits went on from a checkpoint")
        sys.exit(1 if failures else 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
