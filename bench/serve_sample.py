"""Send every file of petimages-fullsize-sample.zip to the running server; print JSON.

For each file of the sample's defect table the HTTP status and the reason, and the accuracy on the
sample's photos (a sanity check only: the same photos appear, resized, in petimages-180.zip).

Usage: python -m catsdogs_pl.serving.serve start; python -m catsdogs_pl.serving.deploy --alias champion;
       python bench/serve_sample.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

from catsdogs_pl.serving import torchserve as ts

SPECIAL = [
    "Cat/666.jpg",
    "Dog/11702.jpg",
    "Cat/Thumbs.db",
    "Dog/Thumbs.db",
    "Cat/10001.jpg",
    "Dog/10002.jpg",
    "Cat/10003.jpg",
    "Dog/10004.jpg",
    "Cat/10005.jpg",
    "Dog/10006.jpg",
    "Cat/10007.jpg",
    "Dog/10007.jpg",
    "Dog/10008.jpg",
    "Cat/10009.jpg",
    "Cat/10010.jpg",
    "Dog/10011.jpg",
]


def send(data: bytes) -> tuple[int, dict]:
    headers = {"Content-Type": "application/octet-stream"}
    response = ts.call("inference", "POST", "/predictions/catsdogs", data=data, headers=headers)
    return response.status, response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    args = parser.parse_args()
    sample = args.data / "petimages-fullsize-sample.zip"
    special, correct, photos, codes = {}, 0, 0, {}
    with zipfile.ZipFile(sample) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        for name in names:
            rel = name.removeprefix("PetImages/")
            status, answer = send(zf.read(name))
            codes[status] = codes.get(status, 0) + 1
            if rel in SPECIAL:
                special[rel] = {"status": status, **answer}
            elif status == 200:
                photos += 1
                correct += answer["label"] == rel.split("/")[0].lower()
    result = {
        "files_sent": len(names),
        "status_counts": codes,
        "special_files": special,
        "photo_accuracy": round(correct / max(photos, 1), 4),
        "photos": photos,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
