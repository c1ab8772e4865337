"""Model monitoring: statistics of what is served, the training reference, drift and confidence."""
