"""The paper's experiments: data, models and losses (and the runner behind the CLI)."""

from .data import load_digits
from .models import half_sum_mse, mlp

__all__ = ["half_sum_mse", "load_digits", "mlp"]
