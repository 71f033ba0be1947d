"""rmlab: train and audit Bradley-Terry reward models."""

from rmlab.hardware import guard_cpu_bf16

__version__ = "0.2.0"  # the one place: pyproject.toml reads it (hatch), checkpoints store it

guard_cpu_bf16()  # before any torch kernel runs: some VMs advertise AMX and then fault on it
