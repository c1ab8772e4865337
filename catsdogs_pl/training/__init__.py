"""Training: the fit command, MLflow tracking and registry rules, plots, the servable export."""
