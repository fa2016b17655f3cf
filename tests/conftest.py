import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import envs  # noqa: E402,F401  (picks MuJoCo's headless GL backend before any test imports dm_control)
