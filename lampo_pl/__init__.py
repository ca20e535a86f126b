"""lampo-pl: LamPO and GRPO-family reinforcement learning from verifiable rewards in PyTorch Lightning."""

__version__ = "0.1.0"
