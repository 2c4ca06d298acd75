"""Write the example data sets into examples/data/ (their outputs are committed; rerun to regenerate).

iris, breast_cancer and digits ship with scikit-learn (no download); they are exported with readable
column names and string class labels. sentiment.csv is composed here from phrase lists with a fixed
seed: short product reviews labelled positive or negative, with the channel they came through.

    .venv/bin/python examples/make_data.py
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
from sklearn.datasets import load_breast_cancer, load_digits, load_iris

DATA_DIR = Path(__file__).resolve().parent / "data"


def iris() -> pd.DataFrame:
    bunch = load_iris(as_frame=True)
    frame = bunch.data.rename(columns=lambda name: name.removesuffix(" (cm)").replace(" ", "_"))
    frame["species"] = [str(bunch.target_names[i]) for i in bunch.target]
    return frame


def breast_cancer() -> pd.DataFrame:
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.data.rename(columns=lambda name: name.replace(" ", "_"))
    frame["diagnosis"] = [str(bunch.target_names[i]) for i in bunch.target]  # malignant / benign
    return frame


def digits() -> pd.DataFrame:
    bunch = load_digits(as_frame=True)
    frame = bunch.data.astype("int64")  # columns pixel_<row>_<column> of the 8x8 image, grey levels 0..16
    frame["digit"] = [str(i) for i in bunch.target]
    return frame


PRODUCTS = [
    "headphones", "blender", "running shoes", "phone case", "coffee maker", "backpack", "desk lamp",
    "charger", "water bottle", "keyboard", "rain jacket", "vacuum cleaner", "tent", "smart watch",
    "frying pan", "office chair", "toaster", "camera bag", "yoga mat", "electric kettle",
]  # fmt: skip
PRAISE = [
    "works perfectly", "exceeded my expectations", "is great value for the money", "arrived quickly",
    "feels sturdy and well made", "is exactly what I needed", "is comfortable to use all day",
    "looks even better than in the photos", "was easy to set up", "has a battery that lasts for days",
    "is surprisingly quiet", "keeps working after months of daily use", "is a joy to use",
    "fits perfectly", "was worth every penny", "is not bad at all", "gives me no complaints whatsoever",
]  # fmt: skip
COMPLAINTS = [
    "stopped working after a week", "feels cheaply made", "was a waste of money", "arrived broken",
    "is nothing like the photos", "was impossible to set up", "has a battery that dies within hours",
    "is uncomfortable after ten minutes", "makes an awful rattling noise", "fell apart on the first day",
    "is not worth the price", "is not what I expected", "smells like burnt plastic", "overheats constantly",
    "broke the second time I used it", "is far too flimsy", "leaks everywhere",
]  # fmt: skip
POSITIVE_OPENERS = ["Honestly,", "Five stars:", "So happy:", "Great purchase!", "Wow,", ""]
NEGATIVE_OPENERS = ["Sadly,", "One star:", "Very disappointed:", "Avoid!", "Ugh,", ""]
POSITIVE_CLOSERS = [
    "Highly recommend.", "Would buy again.", "My whole family loves it.", "Ten out of ten.",
    "Customer service was helpful too.", "",
]  # fmt: skip
NEGATIVE_CLOSERS = [
    "Would not recommend.", "Returning it tomorrow.", "Customer service never answered.",
    "Save your money.", "I want a refund.", "",
]  # fmt: skip
OWNERS = ["my daughter", "my husband", "the office", "our kitchen", "my commute", "a camping trip", "myself"]
CHANNELS = ["web", "mobile_app", "store"]


def _review(rng: random.Random, positive: bool) -> str:
    product = rng.choice(PRODUCTS)
    good, bad = rng.choice(PRAISE), rng.choice(COMPLAINTS)
    main, other = (good, rng.choice(PRAISE)) if positive else (bad, rng.choice(COMPLAINTS))
    opener = rng.choice(POSITIVE_OPENERS if positive else NEGATIVE_OPENERS)
    closer = rng.choice(POSITIVE_CLOSERS if positive else NEGATIVE_CLOSERS)
    shape = rng.randrange(5)
    if shape == 0:
        body = f"the {product} {main}."
    elif shape == 1:
        body = f"bought this {product} for {rng.choice(OWNERS)} and it {main}."
    elif shape == 2:
        body = f"the {product} {main} and {other}."
    elif shape == 3:  # mixed feelings, labelled by the verdict that comes last
        first, last = (bad, good) if positive else (good, bad)
        body = f"at first the {product} {first}, but in the end it {last}."
    else:
        body = f"this {product} {main}."
    if not opener or opener.endswith("!"):
        body = body[0].upper() + body[1:]
    return " ".join(part for part in (opener, body, closer) if part)


def sentiment(rows: int = 320, seed: int = 7) -> pd.DataFrame:
    rng = random.Random(seed)
    records = []
    for index in range(rows):
        positive = index % 2 == 0
        records.append(
            {
                "review": _review(rng, positive),
                "channel": rng.choice(CHANNELS),
                "sentiment": "positive" if positive else "negative",
            }
        )
    rng.shuffle(records)
    return pd.DataFrame.from_records(records)


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, frame in {
        "iris": iris(),
        "breast_cancer": breast_cancer(),
        "digits": digits(),
        "sentiment": sentiment(),
    }.items():
        path = DATA_DIR / f"{name}.csv"
        frame.to_csv(path, index=False, lineterminator="\n")
        print(f"wrote {path} ({len(frame)} rows, {frame.shape[1]} columns)")


if __name__ == "__main__":
    main()
