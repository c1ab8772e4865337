"""`python -m catsdogs_pl.demo_loop` (`make demo-loop`): users' labels back into training, end to end.

v1 trained on the demo's drawings (as `make demo`) is served with every answer captured; users send
it pictures taken at night (the drawings at 30% brightness), which it never saw and calls all cats,
and label its answers through POST /feedback on the monitor's port (with a labeller's key); the
monitor's gauges show the accuracy on those labels; the labelled captures are exported, a reviewer
keeps the labels that contradict a confident answer (prepare would reject them; the decision is
recorded and the export made again), they join the training data (`prepare --add`), v2 is fitted
on the grown data, and the promotion gate decides on a trusted folder whether v2 replaces v1.
Last: both versions' accuracy on the same labelled pictures. No download, no external service.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

from catsdogs_pl import fit, places, prometheus
from catsdogs_pl.data import feedback as data_feedback
from catsdogs_pl.data import synthetic
from catsdogs_pl.demo import DEMO_CONFIG, step
from catsdogs_pl.errors import exit_code
from catsdogs_pl.monitoring import feedback, labellers
from catsdogs_pl.registry import MlflowSettings
from catsdogs_pl.serving import deploy, gate, serve
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.predict import predict

HARD_SEED, TRUSTED_SEED = 101, 202  # the users' pictures and the gate's: drawn apart from training
NIGHT = 0.3  # the brightness of the users' pictures: v1 answers "cat" to every one (0.5 accuracy)


def draw(folder: Path, per_class: int, seed: int, night: bool) -> list[tuple[Path, str]]:
    """Drawn pictures in `folder/<class>/`, darkened to NIGHT if asked: (path, true class) each."""
    synthetic.generate(folder, per_class=per_class, seed=seed)
    photos = [(p, p.parent.name) for p in sorted(folder.glob("*/*.jpg"))]
    for path, _ in photos:
        if night:
            Image.eval(Image.open(path), lambda v: int(v * NIGHT)).save(path, quality=90)
    return photos


def accuracy(version: str, photos: list[tuple[Path, str]]) -> str:
    score = gate.score(version, photos)
    return f"v{version}: {score.correct}/{score.count} right ({score.acc:.3f})"


def labelled_gauges() -> str:
    text = ts.call("monitor", "GET", "/metrics", token=False).body.decode()
    return "\n".join(line for line in text.splitlines() if line.startswith("catsdogs_labelled"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catsdogs_pl.demo_loop", description=__doc__)
    parser.add_argument("--per-class", type=int, default=150, help="users' pictures per class")
    parser.add_argument("--epochs", type=int, help="the fits' max_epochs (default: demo.yaml's)")
    args = parser.parse_args(argv)
    places.home().mkdir(parents=True, exist_ok=True)
    os.chdir(places.home())  # the config's relative paths (drawn pictures, data, checkpoints) too
    os.environ["TS_CAPTURE_FRACTION"] = "1"  # this server keeps every answer: users label them
    epochs = [] if args.epochs is None else [f"--trainer.max_epochs={args.epochs}"]
    quiet = ["--config", str(DEMO_CONFIG), "--trainer.enable_progress_bar=false", *epochs]
    registry = MlflowSettings.from_config(DEMO_CONFIG)
    work = Path(tempfile.mkdtemp(prefix="catsdogs-loop-"))
    store = feedback.default_store()
    step(f"1/7 fit v1 on the demo drawings, serve it with capture on (state in {places.home()})")
    first = fit.main(quiet)
    version1 = str(first.version)
    print(serve.start())
    monitor = None
    try:
        monitor = prometheus.expose(  # what `python -m catsdogs_pl.monitor --serve` publishes
            "monitor",
            lambda: feedback.gauges(feedback.tally(store)),
            {"/feedback": feedback.route(store)},
        )
        print(deploy.deploy_version(version=version1, mlflow=registry))
        step(f"2/7 users send {2 * args.per_class} pictures taken at night; each answer has an id")
        users = draw(work / "users", args.per_class, HARD_SEED, night=True)
        answers = []
        for path, truth in users:
            status, answer = predict(path)
            if status == 200:
                answers.append((answer["id"], truth, answer["label"]))
        wrong = sum(truth != said for _, truth, said in answers)
        print(f"{len(answers)} answered, {wrong} of them wrong; {len(store.captures())} captured")
        step("3/7 users label the answers: POST /feedback on the monitor's port")
        key = labellers.add("demo-user")  # python -m catsdogs_pl.feedback labeller add demo-user
        codes: dict[int, int] = {}
        for answer_id, truth, _ in answers:
            code = feedback.send(answer_id, truth, key)[0]
            codes[code] = codes.get(code, 0) + 1
        print(f"answers of /feedback: {codes}")
        step("4/7 the live accuracy on users' labels (the monitor's gauges)")
        print(labelled_gauges())
        step("5/7 export the labelled captures; a reviewer checks the flagged; v2 fits on them")
        labels = work / "labels"
        summary = data_feedback.export(store, labels, max_share=1.0)  # one labeller: all of it
        print(f"exported: {summary} into {labels}")
        flagged = data_feedback.conflicts(labels)
        for name in flagged:  # these users are right by construction: the reviewer keeps all
            feedback.review(store, Path(name).stem, "keep", "demo-reviewer")
        print(
            f"{len(flagged)} labels contradict an answer given with >= {data_feedback.CONFIDENT} "
            "(prepare rejects them as feedback_conflict); a reviewer kept them "
            "(python -m catsdogs_pl.feedback review ID keep)"
        )
        summary = data_feedback.export(store, labels, max_share=1.0)  # the decisions applied
        print(f"exported again: {summary}; flagged now: {len(data_feedback.conflicts(labels))}")
        grown = [f"--data.added=[{labels}]", "--data.data_dir=data/prepared-demo-loop"]
        second = fit.main([*quiet, *grown])
        step("6/7 the gate: v2 against v1 on trusted pictures, by day and at night")
        trusted = work / "trusted"
        draw(trusted / "day", args.per_class // 3, TRUSTED_SEED, night=False)
        draw(trusted / "night", args.per_class // 3, TRUSTED_SEED + 1, night=True)
        for label in ("cat", "dog"):  # one folder per class, as the gate reads them
            for path in trusted.glob(f"*/{label}/*.jpg"):
                (trusted / label).mkdir(exist_ok=True)
                path.rename(trusted / label / f"{path.parent.parent.name}-{path.name}")
        for sub in ("day", "night"):
            shutil.rmtree(trusted / sub)
        version2 = str(second.version)
        passed, said = deploy.deploy_gated(trusted, version=version2, mlflow=registry)
        print(said)
        step("7/7 accuracy on the users' labelled pictures, before and after")
        print(f"before: {accuracy(version1, users)}")
        if passed:  # a refused v2 is no longer served
            print(f"after:  {accuracy(version2, users)}")
            print("(v2 trained on all of them: users' labels join the training split only)")
    finally:
        if monitor is not None:
            monitor.shutdown()
        print(serve.stop())
        shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(exit_code(main))
