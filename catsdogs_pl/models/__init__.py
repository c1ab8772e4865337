"""Models: the plain networks (`cnn`, `backbone`, `efficientnet_lite`) and the LightningModule that
trains them (`classifier`)."""
