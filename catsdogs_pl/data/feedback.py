"""Users' labels as training data: the labelled captures exported as class folders, and the flags
`prepare` puts on the ones whose label contradicts a confident answer.

`export` writes `DIR/<class>/<id>.jpg` (the image bytes as the server received them) and
`DIR/feedback.csv` (file, label, answered, confidence, version). `prepare --add DIR` takes the
folder beside the original source; a photo labelled against an answer given with at least
CONFIDENT probability is rejected there with the reason `feedback_conflict`: someone looks at it,
and moves it to a folder without feedback.csv (the source, or a reviewed folder added beside it) to
trust it. A wrong label is cheap to give and expensive to learn.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from catsdogs_pl.capture import Store

LIST = "feedback.csv"
COLUMNS = ("file", "label", "answered", "confidence", "version")
CONFIDENT = 0.9  # an answer this sure, contradicted by a user's label, is checked, not trusted


def export(store: Store, out: Path) -> dict[str, int]:
    """Write every labelled capture of `store` into `out`; the count per label. Files already
    there are rewritten (the later label of an id stands, so a relabelled photo moves class)."""
    rows = []
    for answer in store.captures():
        given = store.feedback(answer.id)
        if given is None:
            continue
        try:
            data = store.image(answer.id)
        except OSError:  # pruned since it was listed
            continue
        name = f"{given.label}/{answer.id}.jpg"
        for other in out.glob(f"*/{answer.id}.jpg"):
            other.unlink()  # relabelled: it leaves its old class folder
        (out / given.label).mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
        confidence = answer.probabilities.get(answer.label, 0.0)
        rows.append((name, given.label, answer.label, f"{confidence:.6f}", answer.version))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / LIST).write_text(text.getvalue())
    counts: dict[str, int] = {}
    for _, label, *_ in rows:
        counts[label] = counts.get(label, 0) + 1
    return counts


def conflicts(folder: Path) -> dict[str, str]:
    """file (relative to `folder`) -> why its label is not trusted, from `folder`'s feedback.csv
    (empty without one: a plain folder of class sub-folders)."""
    path = folder / LIST
    if not path.exists():
        return {}
    found = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            confidence = float(row["confidence"])
            if row["label"] != row["answered"] and confidence >= CONFIDENT:
                found[row["file"]] = (
                    f"labelled {row['label']}, but v{row['version']} answered {row['answered']} "
                    f"with {confidence:.2f}: look at the photo; to trust the label, move it to a "
                    "folder without feedback.csv (the source, or a reviewed folder added beside it)"
                )
    return found
