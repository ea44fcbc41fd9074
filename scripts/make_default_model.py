"""Train the small T1 model shipped inside the package (src/aigxctl/pretrained/t1), the one that
``aigxctl allocate --method gdm`` and ``aigxctl.load_model()`` use when no model is given.

Collects T1 data with the library, trains the GDM on the CPU, evaluates it on fresh T1 draws
(other seeds than the data's) and writes the checkpoint with a ``pretrained`` entry in its
config.json: the script, the command line, its fraction of the optimum and what it was measured
on. Refuses to write a model below ``--min-fraction`` of the optimum, and to replace the
shipped one without ``--force``. Rerun it from the repository root:

    python scripts/make_default_model.py --force
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from aigxctl import checkpoint, data, scenarios
from aigxctl.errors import UserError
from aigxctl.evaluate import evaluate
from aigxctl.train import TrainConfig, train

SCRIPT = "scripts/make_default_model.py"
OUT = Path(__file__).resolve().parents[1] / "src" / "aigxctl" / "pretrained" / "t1"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="Checkpoint directory to write.")
    ap.add_argument("--hidden", type=int, default=64, help="Hidden width of the denoiser.")
    ap.add_argument("--steps", type=int, default=3000, help="Optimizer steps.")
    ap.add_argument("--samples", type=int, default=50_000, help="T1 training samples.")
    ap.add_argument("--data-seed", type=int, default=1, help="Seed of the training data.")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the weights and batches.")
    ap.add_argument("--eval-samples", type=int, default=5000, help="Fresh T1 draws to score.")
    ap.add_argument("--eval-seed", type=int, default=2024, help="Seed of those draws.")
    ap.add_argument("--min-fraction", type=float, default=0.995,
                    help="Write nothing below this fraction of the optimum.")  # fmt: skip
    ap.add_argument("--device", default="cpu", choices=("cpu", "auto", "cuda"),
                    help="Where to train (cpu: the same weights on every machine).")  # fmt: skip
    ap.add_argument("--force", action="store_true", help="Replace the model already in --out.")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.eval_seed == args.data_seed:
        raise UserError("--eval-seed must differ from --data-seed (fresh draws)")
    checkpoint.claim(args.out, force=args.force)  # fail now, not after training
    t1 = scenarios.get("t1")
    with tempfile.TemporaryDirectory(prefix="aigxctl-default-") as tmp:
        dataset = Path(tmp) / f"t1-{args.samples}-seed{args.data_seed}.npz"
        data.collect_to_file(t1, args.samples, args.data_seed, dataset, overwrite=False)
        start = time.perf_counter()
        train(TrainConfig(data=[str(dataset)], out=str(Path(tmp) / "model"), hidden=args.hidden,
                          steps=args.steps, seed=args.seed, device=args.device))  # fmt: skip
        seconds = time.perf_counter() - start
        model = checkpoint.load_model(Path(tmp) / "model")
    gains = scenarios.draw(t1, args.eval_samples, args.eval_seed)
    result = evaluate(model, gains, baselines=("equal",))
    fraction = float(result["fraction_of_optimum"])
    print(f"hidden {args.hidden}, {args.steps} steps in {seconds:.1f} s: {fraction:.4%} of the "
          f"optimum on {args.eval_samples:,} fresh T1 draws (seed {args.eval_seed})")  # fmt: skip
    if fraction < args.min_fraction:
        print(f"below --min-fraction {args.min_fraction:.2%}: nothing written", file=sys.stderr)
        return 1
    cfg = model.config or {}
    # The datasets lived in a temporary folder: keep their names, not the paths.
    names = [Path(d["path"]).name for d in cfg.get("data", [])]
    given = sys.argv[1:] if argv is None else argv
    command = ["python", SCRIPT, *(a for a in given if a != "--force")]
    extra = {
        "data": [{**d, "path": name} for d, name in zip(cfg.get("data", []), names, strict=True)],
        "train": {**cfg.get("train", {}), "data": names},
        "pretrained": {
            "name": "t1",
            "script": SCRIPT,
            "command": shlex.join(command),
            "fraction_of_optimum": round(fraction, 6),
            "eval": f"{args.eval_samples:,} fresh T1 draws, seed {args.eval_seed}",
        },
    }
    checkpoint.save_model(model, args.out, extra)
    size = (args.out / checkpoint.WEIGHTS).stat().st_size
    print(f"wrote {args.out} ({size:,} bytes of weights)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
