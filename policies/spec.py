"""What a policy is made of, as names and numbers: the cores, cells and encoders there are, and
``PolicySpec``, which rebuilds a policy (stored in checkpoints). No torch here: the command line
checks its flags against these (``agents.config``) before any network is built, so that
``rims --help`` and a bad flag do not wait for torch to import."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

CORES = ("rims", "lstm", "gru", "ff")
CELLS = ("lstm", "gru")  # the cell of each RIM
ENCODERS = ("auto", "minigrid", "minigrid-cells", "mlp", "nature", "impala")

# Fields that runs saved before the field existed lack, with the value those runs had (read by
# PolicySpec.from_dict and TrainConfig.from_dict): the communication output was linear, and
# the policy did not read the mission.
SAVED_BEFORE_FIELD: dict[str, object] = {"comm_gate": False, "mission": False}


@dataclass(frozen=True)
class PolicySpec:
    """Everything needed, with the spaces, to rebuild a policy (stored in checkpoints)."""

    core: str = "rims"
    feature_size: int = 64
    hidden_size: int = 32
    num_units: int = 6
    k: int = 4
    cell: str = "lstm"
    input_heads: int = 1
    input_key_size: int = 64
    input_value_size: int | None = None
    comm_heads: int = 4
    comm_key_size: int = 32
    comm_value_size: int = 32
    comm_gate: bool = True
    dropout: float = 0.0
    head_hidden_size: int = 64
    encoder: str = "auto"
    spatial: bool = False
    bf16_matmuls: bool = False
    centre_features: bool = False
    centre_keep_size: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> PolicySpec:
        names = {f.name for f in fields(cls)}
        saved = {**SAVED_BEFORE_FIELD, **data}
        return cls(**{k: v for k, v in saved.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def state_size(self) -> int:
        """Total recurrent state width; LSTM/GRU/ff cores get the same as RIMs."""
        return self.num_units * self.hidden_size


def triton_unsupported(input_heads: int, dropout: float) -> str | None:
    """Why the Triton kernels (``policies.triton_steps``) cannot run a RIMs configuration
    (either cell, either communication output, any sizes), or None where they can."""
    if input_heads != 1:
        return f"the kernels implement one input head, not {input_heads}"
    if dropout > 0:
        return f"the kernels implement no attention dropout, not {dropout}"
    return None
