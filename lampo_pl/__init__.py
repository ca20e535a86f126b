"""lampo-pl: LamPO and GRPO-family reinforcement learning from verifiable rewards in PyTorch Lightning."""

from lampo_pl.console import quiet_known_noise

quiet_known_noise()  # before bitsandbytes, peft and Lightning are imported (lampo_pl/console.py says why)

__version__ = "0.1.0"
