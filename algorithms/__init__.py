"""One self-contained file per method; `ALGORITHMS` maps CLI names to their modules.

Each module exposes a frozen dataclass `Config` (every field documented, tuned defaults)
and `train(config) -> dict` (the final evaluation). Shared run plumbing: `algorithms.common`.
"""

ALGORITHMS: dict[str, str] = {
    "bc": "Behaviour cloning: MSE (deterministic) or tanh-Gaussian likelihood head",
    "cqlsac": "Soft actor-critic with CQL's conservative critic (offline); plain SAC with --online",
    "dynamics": "Probabilistic dynamics ensemble (holdout early stopping), saved for mopo/mppi to reuse",
    "mopo": "MOPO: SAC on uncertainty-penalized rollouts of the learned dynamics ensemble",
    "mppi": "MPPI planning on the learned dynamics ensemble (optional policy prior/value); PETS-style with --online",
}
