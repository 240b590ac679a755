"""`make demo`: synthesise a HuSHeM-style dataset, train the default model under 5-fold CV,
write the report, and print how to look at it and serve the model. About 1.5 minutes on 2 free cores."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from spermhead.data.synthetic import write_synthetic
from spermhead.training.options import build_run_config
from spermhead.training.run import train_run

DEMO_DIR = Path("demo")


def main(argv: list[str] | None = None) -> int:
    console = Console()
    data_dir = DEMO_DIR / "data"
    if not (data_dir / "HuSHeM").is_dir():
        console.print(f"[bold]1/2[/] synthesising 4 x 40 HuSHeM-style heads into {data_dir}")
        write_synthetic(data_dir, "hushem", n_per_class=40, seed=0)
    else:
        console.print(f"[bold]1/2[/] using the synthetic heads already in {data_dir}")
    # from scratch: a source model rendered by the same generator as the demo's heads would make
    # the demo both slower (a few minutes more) and too easy to say anything
    cfg = build_run_config("hushem", str(DEMO_DIR / "run"), data_dir=str(data_dir), cv=5, epochs=40,
                           init="scratch")
    console.print(f"[bold]2/2[/] training {cfg.model.name} under 5-fold CV ({cfg.train.epochs} epochs per fold; "
                  "about a minute on 2 free cores, longer while other work shares them)")
    # bars on a terminal; elsewhere (a CI log) each fold's line and its final bar, so it is not silent
    result = train_run(cfg, overwrite=True, progress=True)
    m = result.metrics
    console.print(f"\naccuracy {m['accuracy']:.3f} (+/- {m.get('accuracy_std', 0):.3f} across folds), "
                  f"average recall {m['balanced_accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}")
    console.print(f"report:    {result.out / 'report.html'}")
    console.print(f"serve it:  .venv/bin/spermhead serve --model {result.out / 'model'}")
    console.print(f"classify:  .venv/bin/spermhead predict --model {result.out / 'model'} {data_dir / 'HuSHeM'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
