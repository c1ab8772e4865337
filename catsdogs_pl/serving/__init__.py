"""Serving: archive a registered version, run TorchServe, deploy and roll back, ask it, smoke-test it."""
