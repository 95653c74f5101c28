"""Strategy specifications for ``Trainer(strategy=...)``.

They stand next to the strings (``"ddp"``, ``"fsdp2"``) and Lightning Fabric ``Strategy`` instances.

A specification says *what* parallelism a run wants and is turned into a Fabric strategy once the Trainer
knows the number of processes. It imports nothing heavy: ``import dltrain`` stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass

from dltrain.errors import ConfigurationError

__all__ = ["FSDP2"]


@dataclass(frozen=True)
class FSDP2:
    """FSDP2 over the data-parallel ranks, optionally with tensor parallelism on a 2-D mesh (data x tensor).

    ``Trainer(strategy="fsdp2")`` is ``Trainer(strategy=FSDP2())``. With ``tensor_parallel_size=T`` the world's
    ``W`` processes form a ``(W // T) x T`` mesh with dimensions ``"data_parallel"`` and ``"tensor_parallel"``
    (consecutive global ranks are tensor-parallel peers); the task applies its tensor-parallel plan in
    ``configure_model`` with ``parallelize_module(..., self.device_mesh["tensor_parallel"], plan)`` and dltrain
    then shards it over ``"data_parallel"`` (unless the task called ``fully_shard`` itself). Data is split, and
    metrics are reduced, over the data-parallel ranks: tensor-parallel peers read the same samples.

    Args:
        tensor_parallel_size: ranks of each tensor-parallel group; must divide the number of processes.
        cpu_offload: keep the sharded parameters, gradients and optimizer state in CPU memory (FSDP2's
            ``CPUOffloadPolicy``): each unit's parameters are copied to the device for its forward and backward,
            and the optimizer steps on the CPU. Trades speed for device memory; the results are the same.

    Example:
        >>> import dltrain
        >>> # not run: a 2 x 2 mesh needs 4 processes (torchrun --nproc_per_node=4), one device each
        >>> trainer = dltrain.Trainer(strategy=dltrain.FSDP2(tensor_parallel_size=2), devices=4)  # doctest: +SKIP
    """

    tensor_parallel_size: int = 1
    cpu_offload: bool = False

    def __post_init__(self) -> None:
        tp = self.tensor_parallel_size
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ConfigurationError(f"FSDP2(tensor_parallel_size={tp!r}): use a whole number, 1 or more")
        if not isinstance(self.cpu_offload, bool):
            raise ConfigurationError(f"FSDP2(cpu_offload={self.cpu_offload!r}): use True or False")

    def data_parallel_size(self, world_size: int) -> int:
        """Data-parallel ranks of a run of ``world_size`` processes.

        Raises:
            ConfigurationError: ``tensor_parallel_size`` does not divide ``world_size``.
        """
        return data_parallel_size(world_size, self.tensor_parallel_size, f"FSDP2(tensor_parallel_size="
                                                                         f"{self.tensor_parallel_size})")


def data_parallel_size(world_size: int, tensor_parallel_size: int, asked: str) -> int:
    """``world_size // tensor_parallel_size``; a ConfigurationError naming both numbers when that leaves a rest."""
    if world_size % tensor_parallel_size:
        fits = [t for t in range(1, world_size + 1) if world_size % t == 0]
        more = -(-world_size // tensor_parallel_size) * tensor_parallel_size
        raise ConfigurationError(
            f"{asked}: the tensor-parallel size {tensor_parallel_size} does not divide the world size {world_size} "
            f"(processes = devices x nodes); the ranks form a data-parallel x tensor-parallel grid, so the world "
            f"size must be a multiple of it. Use tensor_parallel_size in {fits}, or launch {more} processes"
        )
    return world_size // tensor_parallel_size
