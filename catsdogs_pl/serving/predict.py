"""`python -m catsdogs_pl.serving.predict IMAGE... [--url URL] [--model-version N]`: ask the server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from catsdogs_pl import places
from catsdogs_pl.errors import exit_code
from catsdogs_pl.serving import torchserve as ts

REMOTE_KEY = "CATSDOGS_INFERENCE_KEY"


def predict(image: Path, url: str | None = None, version: str | None = None) -> tuple[int, Any]:
    """(HTTP status, answer) for one image file sent as raw bytes. The state folder's key goes
    only to its own server; another `url` gets $CATSDOGS_INFERENCE_KEY (`serve key` there)."""
    path = f"/predictions/{places.MODEL_NAME}" + (f"/{version}" if version else "")
    headers = {"Content-Type": "application/octet-stream"}
    if url not in (None, places.address("inference")) and os.environ.get(REMOTE_KEY):
        headers["Authorization"] = f"Bearer {os.environ[REMOTE_KEY]}"
    response = ts.call("inference", "POST", path, image.read_bytes(), headers, base=url)
    try:
        return response.status, response.json()
    except json.JSONDecodeError:
        return response.status, response.body.decode(errors="replace")


def answer_line(image: Path, status: int, answer: Any) -> str:
    if status == 200 and isinstance(answer, dict) and "label" in answer:
        probs = ", ".join(f"{k} {v:.3f}" for k, v in answer["probabilities"].items())
        return f"{image}: {answer['label']}  ({probs})  model v{answer['model_version']}"
    return f"{image}: HTTP {status} {answer}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs_pl.serving.predict", description=__doc__
    )
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument(
        "--url",
        help=f"inference API (default {places.address('inference')}); the key for another "
        f"server comes from ${REMOTE_KEY}, never from this state folder",
    )
    parser.add_argument("--model-version", help="a specific version instead of the default")
    args = parser.parse_args(argv)
    failed = 0
    for image in args.images:
        if not image.is_file():
            print(f"{image}: no such file", file=sys.stderr)
            failed += 1
            continue
        status, answer = predict(image, args.url, args.model_version)  # unreachable: exit 2
        print(answer_line(image, status, answer))
        failed += status != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
