"""Fit scikit-surprise models on one exported split and print their RMSE, MAE and seconds.

Run by `bench.ratings` with the interpreter of Surprise's own virtual environment (it imports
surprise, never recozoo)::

    python surprise_runner.py --train train.tsv --test test.tsv --seed 0 --json-out out.json

The files are tab-separated ``user, item, rating`` rows with a header. Every model runs with
Surprise's defaults (SVD, SVD++: 20 epochs; BaselineOnly: ALS), ``random_state`` = the seed,
the rating scale of the training ratings, and predictions clipped to it (Surprise's default).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time

import surprise
from surprise import SVD, BaselineOnly, Dataset, Reader, SVDpp, accuracy

MODELS = {"SVD": lambda seed: SVD(random_state=seed),
          "SVDpp": lambda seed: SVDpp(random_state=seed, cache_ratings=True),
          "BaselineOnly": lambda seed: BaselineOnly(verbose=False)}


def read_ratings(path: str) -> list[tuple[str, str, float]]:
    """(user, item, rating) rows of a TSV with a ``user, item, rating`` header (the csv module:
    Surprise's environment has no pandas)."""
    with open(path, newline="") as handle:
        return [(row["user"], row["item"], float(row["rating"]))
                for row in csv.DictReader(handle, delimiter="\t")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json-out", required=True)
    args = parser.parse_args()
    train, testset = read_ratings(args.train), read_ratings(args.test)
    ratings = [rating for _, _, rating in train]
    reader = Reader(line_format="user item rating", sep="\t", skip_lines=1,
                    rating_scale=(min(ratings), max(ratings)))
    trainset = Dataset.load_from_file(args.train, reader).build_full_trainset()
    results = []
    for name in args.models.split(","):
        algo = MODELS[name](args.seed)
        start = time.perf_counter()
        algo.fit(trainset)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        predictions = algo.test(testset)
        test_seconds = time.perf_counter() - start
        results.append({"model": name, "rmse": accuracy.rmse(predictions, verbose=False),
                        "mae": accuracy.mae(predictions, verbose=False),
                        "fit_seconds": round(fit_seconds, 3),
                        "test_seconds": round(test_seconds, 3),
                        "n_train": trainset.n_ratings, "n_test": len(testset)})
    with open(args.json_out, "w") as handle:
        json.dump({"surprise": surprise.__version__, "python": platform.python_version(),
                   "seed": args.seed, "results": results}, handle)


if __name__ == "__main__":
    main()
