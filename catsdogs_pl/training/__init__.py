"""Training: the fit command (LightningCLI + MLflow), publishing a run (plots, servable export,
registry version), robustness, plots."""
