"""Users' labels as training data: the labelled captures exported as class folders, and the flags
`prepare` puts on the ones whose label contradicts a confident answer.

`export` writes a snapshot, `DIR/<class>/<id>.jpg` (the image bytes as the server received them)
and `DIR/feedback.csv` (file, label, answered, confidence, version, sha256, giver, votes,
reviewed): built in a folder beside DIR and moved into its place whole, so an interrupted export
leaves the previous snapshot (or no DIR), never images without their list, and a photo whose
capture is gone since leaves with it. No giver makes more than `max_share` of an export
(MAX_SHARE; the earliest labels of a giver over it are the ones exported): one key holder cannot
outvote the rest. `prepare --add DIR` takes the folder beside the original source and refuses it
when the list is unreadable or does not match the images (`conflicts`; a listed photo a reviewer
moved out is not a mismatch): a label read from a broken list would be trusted. A photo labelled
against an answer given with at least CONFIDENT probability, or labelled differently by two
givers, is rejected there with the reason `feedback_conflict`: someone looks at it and records a
decision (`python -m catsdogs_pl.feedback review ID keep|drop|LABEL`), which every later export
applies (a reviewed label is trusted, a dropped one left out). A wrong label is cheap to give and
expensive to learn.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from catsdogs_pl.capture import Feedback, Store
from catsdogs_pl.errors import ConfigError

LIST = "feedback.csv"
COLUMNS = (
    *("file", "label", "answered", "confidence", "version", "sha256"),
    *("giver", "votes", "reviewed"),
)
CONFIDENT = 0.9  # an answer this sure, contradicted by a user's label, is checked, not trusted
MAX_SHARE = 0.10  # of an export, at most this share from any one giver


@dataclass(frozen=True)
class Summary:
    """What an export holds: photos per label, per giver the labels given and exported, and how
    many a reviewer decided (kept or relabelled, and dropped)."""

    labels: dict[str, int]
    given: dict[str, int]
    exported: dict[str, int]
    reviewed: int = 0
    dropped: int = 0

    def __str__(self) -> str:
        found = ", ".join(f"{k}={n}" for k, n in sorted(self.labels.items())) or "none"
        givers = "; ".join(
            f"{g}: {self.exported.get(g, 0)} of {n} exported" for g, n in sorted(self.given.items())
        )
        review = f"; {self.reviewed} reviewed, {self.dropped} dropped by review"
        return f"{found} ({givers or 'no givers'}{review if self.reviewed + self.dropped else ''})"


def cap(given: dict[str, int], max_share: float) -> int:
    """The most labels any one giver may have in an export, so that no giver makes more than
    `max_share` of it: the largest c with c <= max_share * sum(min(n, c)) over the givers."""
    for c in range(max(given.values(), default=0), 0, -1):
        if c <= max_share * sum(min(n, c) for n in given.values()) + 1e-9:
            return c
    return 0


def export(store: Store, out: Path, max_share: float = MAX_SHARE) -> Summary:
    """Write the labelled captures of `store` as a new snapshot in `out` (replacing an earlier
    export there, never another folder), each giver held to `max_share` of it."""
    if not 0 < max_share <= 1:
        raise ConfigError(f"max share {max_share}: use a number above 0, at most 1")
    if out.exists() and not (out / LIST).exists() and any(out.iterdir()):
        raise ConfigError(
            f"{out} holds files but no {LIST}: it is not a feedback export, and exporting would "
            "replace it; give --out a new folder"
        )
    partial, old = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.old")
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted export left
    partial.mkdir(parents=True)
    labelled = sorted(store.labelled(), key=lambda pair: pair[1].time)  # a giver's earliest first
    given = Counter(_giver(feedback) for _, feedback in labelled)
    most, taken = cap(given, max_share), Counter()
    rows, dropped = [], 0
    for answer, feedback in labelled:
        review = store.review(answer.id)  # a reviewer's decision stands over the giver's label
        if review is not None and review.label is None:
            dropped += 1
            continue
        if review is None and taken[_giver(feedback)] >= most:
            continue
        try:
            data = store.image(answer.id)
        except OSError:  # pruned since it was listed
            continue
        taken[_giver(feedback)] += review is None
        label = review.label if review else feedback.label
        name = f"{label}/{answer.id}.jpg"
        (partial / label).mkdir(exist_ok=True)
        (partial / name).write_bytes(data)
        confidence = answer.probabilities.get(answer.label, 0.0)
        digest = hashlib.sha256(data).hexdigest()
        votes = ";".join(f"{g}={label}" for g, label in sorted(feedback.votes.items()))
        row = (label, answer.label, f"{confidence:.6f}", answer.version, digest, _giver(feedback))
        rows.append((name, *row, votes or "-", review.reviewer if review else "-"))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    (partial / LIST).write_text(text.getvalue())
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    partial.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    reviewed = sum(row[-1] != "-" for row in rows)
    labels = dict(Counter(row[1] for row in rows))
    return Summary(labels, dict(given), dict(taken), reviewed, dropped)


def _giver(feedback: Feedback) -> str:
    return feedback.giver or "unknown"  # a label given before labels named their giver


def _listed(folder: Path) -> list[dict[str, str]]:
    """The rows of `folder`'s list, each checked against its image; ConfigError naming the first
    thing wrong (the list unreadable, a row cut short, an image changed or unlisted). A listed
    image that is gone is what review does (moved to a trusted folder), not an error."""
    fix = f"export it again (python -m catsdogs_pl.data feedback-export --out {folder})"
    try:
        with open(folder / LIST, newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or ()
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{folder / LIST} cannot be read ({exc}): {fix}") from exc
    if missing := set(COLUMNS) - set(header):
        raise ConfigError(f"{folder / LIST} lacks the columns {sorted(missing)}: {fix}")
    for line, row in enumerate(rows, start=2):
        if any(row.get(column) in (None, "") for column in COLUMNS):
            raise ConfigError(f"{folder / LIST} line {line} is cut short: {fix}")
        try:
            float(row["confidence"])
        except ValueError as exc:
            raise ConfigError(f"{folder / LIST} line {line} ({row['file']}): {exc}: {fix}") from exc
        image = folder / row["file"]
        if not image.exists():  # a reviewer moved it out: nothing trains on it from here
            continue
        if hashlib.sha256(image.read_bytes()).hexdigest() != row["sha256"]:
            raise ConfigError(f"{folder / row['file']} is not the image its list names: {fix}")
    images = {p.relative_to(folder).as_posix() for p in folder.glob("*/*") if p.is_file()}
    if unlisted := sorted(images - {row["file"] for row in rows}):
        raise ConfigError(
            f"{folder} has {len(unlisted)} images its {LIST} does not list ({unlisted[0]}, ...): "
            f"their labels would be trusted unchecked; {fix}, or move reviewed photos to a folder "
            f"without {LIST}"
        )
    return rows


def conflicts(folder: Path) -> dict[str, str]:
    """file (relative to `folder`) -> why its label is not trusted, from `folder`'s feedback.csv
    (empty without one: a plain folder of class sub-folders)."""
    if not (folder / LIST).exists():
        return {}
    found = {}
    for row in _listed(folder):
        if row["reviewed"] != "-":  # a reviewer decided: trusted
            continue
        confidence = float(row["confidence"])
        votes = dict(vote.split("=", 1) for vote in row["votes"].split(";") if "=" in vote)
        if len(set(votes.values())) > 1:
            found[row["file"]] = (
                f"givers disagree ({', '.join(f'{g}: {v}' for g, v in sorted(votes.items()))}): "
                f"look at the photo and decide: python -m catsdogs_pl.feedback review "
                f"{Path(row['file']).stem} keep|drop|LABEL"
            )
        elif row["label"] != row["answered"] and confidence >= CONFIDENT:
            found[row["file"]] = (
                f"labelled {row['label']}, but v{row['version']} answered {row['answered']} "
                f"with {confidence:.2f}: look at the photo and decide: python -m "
                f"catsdogs_pl.feedback review {Path(row['file']).stem} keep|drop|LABEL"
            )
    return found
