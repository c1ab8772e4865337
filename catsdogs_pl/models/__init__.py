"""Models: the plain network (`cnn`) and the LightningModule that trains it (`classifier`)."""
