"""Plain-text functions shared by the data (balancing, augmentation) and the diagnostics (probes,
bias report): surface patterns of a response, and counterfactual rewrites of one. No torch here."""
