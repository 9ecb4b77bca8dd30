"""Train seeded classifiers on the UCI handwritten digits and write metrics and the model.

Reads the dataset from a read-only mount, writes only to the outputs folder. With
--ignore-seed the job draws its randomness from the operating system instead: that is the
deliberately nondeterministic example, so reprun has something to catch.
"""
import argparse
import json
import os
import pathlib
import pickle
import time

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split


def load_digits(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    if path.is_dir():
        path = next(p for p in sorted(path.iterdir()) if p.name.startswith("digits.csv"))
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def score(model, x_test, y_test) -> dict:
    return {
        "accuracy": float(accuracy_score(y_test, model.predict(x_test))),
        "log_loss": float(log_loss(y_test, model.predict_proba(x_test))),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--ignore-seed", action="store_true")
    args = parser.parse_args()
    params = json.loads(os.environ.get("REPRUN_PARAMS", "{}"))

    seed = int.from_bytes(os.urandom(4), "little") if args.ignore_seed else args.seed
    x, y = load_digits(args.data)
    x = x / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y)

    started = time.perf_counter()
    logreg = LogisticRegression(C=float(params.get("C", 1.0)), max_iter=2000)
    logreg.fit(x_train, y_train)
    forest = RandomForestClassifier(
        n_estimators=int(params.get("n_estimators", 100)), random_state=seed, n_jobs=1)
    forest.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - started

    metrics = {
        "logreg": score(logreg, x_test, y_test),
        "forest": score(forest, x_test, y_test),
        "samples": {"train": len(y_train), "test": len(y_test)},
        "fit_seconds": fit_seconds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(args.out / "model.pkl", "wb") as handle:
        pickle.dump({"logreg": logreg, "forest": forest}, handle, protocol=5)
    print(f"logreg accuracy {metrics['logreg']['accuracy']:.4f}, "
          f"forest accuracy {metrics['forest']['accuracy']:.4f}, fit {fit_seconds:.2f}s")


if __name__ == "__main__":
    main()
