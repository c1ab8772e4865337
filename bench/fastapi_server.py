"""The original project's serving design, kept only as the baseline of bench/serve.py.

FastAPI + uvicorn in one process: `POST /predict` with an upload field `file` answers
`{"label", "probabilities"}`; no auth, no batching, the model runs inside the request. It serves the
same export with the same preprocessing as our TorchServe handler, so only the server design differs.

Bench-only extras, not project dependencies: pip install fastapi uvicorn python-multipart

Usage: python bench/fastapi_server.py --export-dir DIR [--port 18090] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, UploadFile

from catsdogs_pl.predictor import Predictor
from catsdogs_pl.preprocessing import BadImage


def create_app(export_dir: Path) -> FastAPI:
    """The app answering with the export in `export_dir` (eager PyTorch, the original design)."""
    predictor = Predictor.load(export_dir, runtime="eager")
    app = FastAPI()

    @app.post("/predict")
    async def predict(file: UploadFile):  # no return annotation: FastAPI would validate it
        answers = predictor.predict([await file.read()])
        if isinstance(answers.results[0], BadImage):
            raise HTTPException(400, str(answers.results[0]))
        label = answers.labels(predictor.classes)[0]
        return {"label": label, "probabilities": answers.results[0]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    app = create_app(args.export_dir)
    # warning: no access-log line per request on the terminal (TorchServe writes its own to a file)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
