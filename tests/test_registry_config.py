"""`package` and `deploy` look for versions under the registered model and in the store that the
fit config's `mlflow:` section names, the same ones `fit` wrote to."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs_pl import registry
from catsdogs_pl.errors import ConfigError
from catsdogs_pl.registry import MlflowSettings
from catsdogs_pl.serving import package
from tests.helpers.serving import make_export


def test_package_reads_the_registered_model_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(make_export(tmp_path / "export")), "servable")
    registry.register(client, "pets", "servable", run_id, {}, "a renamed registered model")
    config = tmp_path / "fit.yaml"
    config.write_text(f"mlflow:\n  registered_model: pets\n  tracking_uri: {uri}\n")

    assert package.main(["--model-version", "1", "--config", str(config)]) == 0
    assert len(list((tmp_path / "home" / "model-store").glob("catsdogs_v1-*.mar"))) == 1
    # the shipped configs name `catsdogs`, which this registry does not have
    with pytest.raises(registry.NotRegisteredError, match="registered model 'catsdogs'"):
        package.package_version("1", mlflow=MlflowSettings(tracking_uri=uri))


def test_config_with_an_unknown_mlflow_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "fit.yaml"
    config.write_text("mlflow:\n  registered_modle: pets\n")
    with pytest.raises(ConfigError, match=r"unknown mlflow settings \['registered_modle'\]"):
        MlflowSettings.from_config(config)
    assert MlflowSettings.from_config().registered_model == "catsdogs"  # configs/fit.yaml
