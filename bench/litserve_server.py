"""LitServe serving the same model folder as our TorchServe handler: the peer of bench/serve.py.

Lightning's LitServe with TorchServe's shipped settings: `--workers` processes of `--torch-threads`
threads, batches of up to `--batch-size` gathered for `--batch-timeout` seconds. It loads the staged
model folder through the handler's predict path (catsdogs_pl/predictor.py: the same decoding,
limits, forward pass and calibrated softmax), so only the server differs. `POST /predict` with a multipart field `file` answers
`{"label", "probabilities"}`; a bad image is a 400.

Bench-only extra, not a project dependency: pip install litserve

Usage: python bench/litserve_server.py --model-dir DIR [--port 18100] [--workers 2]
       [--torch-threads 1] [--batch-size 8] [--batch-timeout 0.001] [--runtime auto]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import torch
from fastapi import HTTPException

from catsdogs_pl import servable
from catsdogs_pl.predictor import Predictor
from catsdogs_pl.preprocessing import BadImage


class CatsDogsAPI(ls.LitAPI):
    def __init__(self, model_dir: Path, runtime: str, threads: int, **batching: Any) -> None:
        super().__init__(**batching)
        self.model_dir, self.runtime, self.threads = model_dir, runtime, threads

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        self.predictor = Predictor.load(self.model_dir, runtime=self.runtime, threads=self.threads)

    def decode_request(self, request) -> np.ndarray:  # unannotated: LitServe parses the form
        try:
            return self.predictor.decode(request["file"].file.read())[0]
        except BadImage as exc:
            raise HTTPException(400, str(exc)) from exc

    def predict(self, images: list[np.ndarray]) -> list[list[float]]:
        return self.predictor.probabilities(images).tolist()

    def encode_response(self, probs: list[float]) -> dict[str, Any]:
        classes = self.predictor.classes
        label = classes[probs.index(max(probs))]
        return {"label": label, "probabilities": dict(zip(classes, probs, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a staged model folder")
    parser.add_argument("--port", type=int, default=18100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.001, help="seconds")
    parser.add_argument("--runtime", choices=("auto", *servable.RUNTIMES, "eager"), default="auto")
    args = parser.parse_args()
    api = CatsDogsAPI(
        args.model_dir,
        args.runtime,
        args.torch_threads,
        max_batch_size=args.batch_size,
        batch_timeout=args.batch_timeout,
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
