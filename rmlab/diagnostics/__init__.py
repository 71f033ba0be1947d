"""Reward-model bias diagnostics: surface-pattern detectors and adversarial probes."""
