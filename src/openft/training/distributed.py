"""One job on several processes: the process group, DDP or FSDP2, each rank's share of a step, stops
agreed across ranks, and checkpoints that resume on any number of processes.

The worker starts ``n_devices`` ranks of the training child through ``torchrun`` (``launch.py``);
each joins one process group (gloo on the CPU, NCCL on GPUs) and runs the same recipe:

- **LoRA and QLoRA: DDP.** Every rank holds the whole model; the adapters' gradients are averaged
  across ranks after each step's last micro-batch.
- **Full fine-tuning: FSDP2** (``fully_shard`` on every decoder layer, then on the step module):
  parameters, gradients and AdamW state are sharded, each rank holding ``1/N``; a layer's fp32
  weights are gathered for its forward and backward, and its gradients reduce-scattered.
- **``batch_size`` keeps its meaning**: a step trains the same examples as on one device, split
  across ranks by tokens. Each rank's loss is divided by the step-wide count of trained tokens (or
  pairs) and multiplied by the number of ranks, so the averaged gradient equals one process's.
- **Every rank makes the same collective calls**: a rank with fewer micro-batches runs padding rows
  (nothing trained, zero gradients); stops and time-based checkpoints are agreed by a collective at
  each step boundary, so every rank stops at the same step.
- **Checkpoints are consolidated**: rank 0 writes exactly what one process writes (the whole model
  or adapter, the optimizer state by parameter index, RNG states), gathered from the shards under
  FSDP2. So a checkpoint resumes on any number of processes; every rank's RNG state rides along
  and is restored when the number is unchanged, which makes a resumed run exact.
"""

from __future__ import annotations

import contextlib
import inspect
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist

from openft.training.launch import Ranks, launched_ranks
from openft.training.models import causal_lm
from openft.training.objectives import Tally
from openft.training.packing import PackedRow, padding_row
from openft.training.spec import TrainingSpec

if TYPE_CHECKING:
    from openft.training.devices import Device
    from openft.training.labels import TokenizedSequence
    from openft.training.objectives import Objective

Strategy = Literal["single", "ddp", "fsdp"]
StopRequest = Literal["pause", "cancel"]
# Agreed as the largest code across ranks: a cancel anywhere wins over a pause.
_STOP_CODES: dict[str | None, int] = {None: 0, "pause": 1, "cancel": 2}
# A rank waits this long for the others in a collective (rank 0 may be writing a big checkpoint).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class StepModule(torch.nn.Module):
    """One packed row's loss as a module call. The objective runs the decoder and the head itself,
    never the model's own ``forward``, so DDP and FSDP2 wrap this module: their hooks (gradient
    reduction, gathering the root's parameters) run around each call."""

    def __init__(
        self, model: torch.nn.Module, objective: Objective, reference: torch.nn.Module | None = None
    ):
        super().__init__()
        self.model = model
        # DPO's frozen copy of the base (full fine-tuning): a submodule, so FSDP2 shards it as well.
        self.reference = reference
        self.objective = objective

    def forward(self, row: PackedRow, normaliser: int) -> tuple[torch.Tensor, Tally]:
        return self.objective.row_loss(causal_lm(self.model), row, normaliser)

    def train(self, mode: bool = True) -> StepModule:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # never trained: no dropout in the reference policy
        return self


class Group:
    """This process's place among the job's ranks, and every operation that differs with their
    number. With one process (``size == 1``) each is the identity, and the recipe computes exactly
    what it computed before distributed training existed."""

    def __init__(self, ranks: Ranks | None = None, strategy: Strategy = "single") -> None:
        self.ranks = ranks
        self.strategy: Strategy = strategy
        self.rank = ranks.rank if ranks else 0
        self.size = ranks.world_size if ranks else 1

    @property
    def writes(self) -> bool:
        """Rank 0 alone reports progress and writes files."""
        return self.rank == 0

    def describe(self, spec: TrainingSpec) -> str | None:
        """The event that says how the ranks share the work (None for one process)."""
        if self.size == 1:
            return None
        share = f"each rank trains its share of the {spec.batch_size} examples of every step"
        if self.strategy == "fsdp":
            return (
                f"{self.size} ranks (torchrun, {dist.get_backend()}) with FSDP2: weights, gradients and "
                f"optimizer state are sharded, each rank holding 1/{self.size}; {share}."
            )
        return (
            f"{self.size} ranks (torchrun, {dist.get_backend()}) with DDP: every rank holds the whole "
            f"model, adapter gradients are averaged across ranks; {share}."
        )

    # -- the model -------------------------------------------------------------------------
    def wrap(
        self, model: torch.nn.Module, objective: Objective, reference: torch.nn.Module | None = None
    ) -> torch.nn.Module:
        """The module each micro-batch is called through: ``step(row, normaliser) -> (loss, tally)``.
        Build the optimizer after this: FSDP2 replaces the parameters with sharded ones."""
        step = StepModule(model, objective, reference)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # Rank 0's adapters for everyone (LoRA's random start); the frozen base is the same
            # file on every rank and is not broadcast (gigabytes, or 4-bit tensors for QLoRA).
            for parameter in model.parameters():
                if parameter.requires_grad:
                    dist.broadcast(parameter.data, src=0)
            # Buffers (rotary frequencies) are computed alike everywhere: no broadcast per forward.
            # Newer torch renamed the option (and warns about the old name); older releases know only it.
            no_buffer_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else {"broadcast_buffers": False}
            )
            return DistributedDataParallel(step, init_sync=False, **no_buffer_sync)
        if self.strategy == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(_device_type(), (self.size,))
            for module in (model, reference):
                for layer in decoder_layers(module) if module is not None else []:
                    fully_shard(layer, mesh=mesh)
            # The root: embeddings, final norm and head, gathered around each call.
            fully_shard(step, mesh=mesh)
        return step

    @contextlib.contextmanager
    def accumulating(self, step: torch.nn.Module, last: bool):
        """Around one micro-batch's forward and backward: gradients are reduced across ranks only
        after the step's last micro-batch (every rank has the same number, see ``padded``)."""
        if self.strategy == "ddp" and not last:
            with step.no_sync():
                yield
            return
        if self.strategy == "fsdp":
            step.set_requires_gradient_sync(last)
        yield

    def reshard(self, step: torch.nn.Module) -> None:
        """After forwards without a backward (evaluation): FSDP2 keeps the root's weights gathered
        after its forward, for the backward that usually follows; shard them again, or the model's
        parameters are no longer the ones the optimizer holds."""
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import FSDPModule

            for module in step.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """DDP and FSDP2 average gradients over ranks; the loss is already divided by the step-wide
        count, so each rank's share is multiplied back by the number of ranks."""
        return loss if self.size == 1 else loss * self.size

    # -- the data --------------------------------------------------------------------------
    def share(self, units: list[list[TokenizedSequence]]) -> list[list[TokenizedSequence]]:
        """This rank's examples of a step: the longest first to the rank with the fewest tokens so
        far (deterministic), kept in the step's order."""
        if self.size == 1:
            return units
        loads = [0] * self.size
        owner = [0] * len(units)
        sizes = [sum(len(s) for s in unit) for unit in units]
        for index in sorted(range(len(units)), key=lambda i: -sizes[i]):
            rank = min(range(self.size), key=lambda r: loads[r])
            loads[rank] += sizes[index]
            owner[index] = rank
        return [unit for index, unit in enumerate(units) if owner[index] == self.rank]

    def padded(self, rows: list[PackedRow], device: torch.device | None) -> list[PackedRow]:
        """``rows`` plus padding rows up to the most any rank has: FSDP2 gathers weights in every
        forward and DDP reduces in the last backward, so every rank must make as many."""
        if self.size == 1:
            return rows
        most = int(self._reduce([len(rows)], dist.ReduceOp.MAX)[0])
        return rows + [padding_row(device) for _ in range(most - len(rows))]

    # -- sums and agreements ---------------------------------------------------------------
    def sum(self, value: int) -> int:
        return value if self.size == 1 else int(self._reduce([value], dist.ReduceOp.SUM)[0])

    def total(self, tally: Tally) -> Tally:
        """The step's (or an evaluation's) tally over every rank."""
        if self.size == 1:
            return tally
        loss_sum, correct, count = self._reduce(
            [tally.loss_sum, tally.correct, tally.count], dist.ReduceOp.SUM
        )
        return Tally(loss_sum, int(correct), int(count))

    def agree(self, stop: StopRequest | None) -> StopRequest | None:
        """The stop every rank makes at this step boundary: the strongest any rank was asked for (the
        worker signals torchrun's agent, which signals every rank, each in its own time)."""
        if self.size == 1:
            return stop
        code = int(self._reduce([_STOP_CODES[stop]], dist.ReduceOp.MAX)[0])
        return next(kind for kind, value in _STOP_CODES.items() if value == code)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (each rank's clock says when a checkpoint is due)."""
        return flag if self.size == 1 else bool(self._reduce([float(flag)], dist.ReduceOp.MAX)[0])

    def _reduce(self, values: list[float], op) -> list[float]:
        # float64 holds every integer count exactly; on the device NCCL reduces, on the CPU gloo
        tensor = torch.tensor(values, dtype=torch.float64, device=_device_type())
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    # -- checkpoints -----------------------------------------------------------------------
    def full_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """FSDP2: the whole model's weights gathered onto rank 0's CPU, for it to save (a collective:
        every rank calls it). Otherwise None: the model holds them already."""
        if self.strategy != "fsdp":
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.writes:
            return None
        # Tied parameters (an LM head sharing the embeddings) come back as separate copies: make them
        # one tensor again, so that save_pretrained stores it once, as one process would.
        first: dict[int, str] = {}
        for name, parameter in model.named_parameters(remove_duplicate=False):
            owner = first.setdefault(id(parameter), name)
            if owner != name and owner in weights and name in weights:
                weights[name] = weights[owner]
        return weights

    def optimizer_state(self, step: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state as one process's ``optimizer.state_dict()`` holds it (state by
        parameter index), gathered from the shards under FSDP2 (a collective; empty off rank 0)."""
        if self.strategy != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        by_name = get_optimizer_state_dict(
            step, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.writes:
            return {}
        index: dict[str, int] = {}
        groups = []
        for group in by_name["param_groups"]:
            ids = [index.setdefault(name, len(index)) for name in group["params"]]
            groups.append({**group, "params": ids})
        return {"state": {index[name]: v for name, v in by_name["state"].items()}, "param_groups": groups}

    def load_optimizer_state(
        self, step: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        """Restore ``optimizer_state`` (saved by any number of ranks) into this rank's optimizer."""
        if self.strategy != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = {id(p): name for name, p in step.named_parameters()}
        ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        by_name = {
            "state": {ordered[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [
                {**group, "params": [ordered[int(i)] for i in group["params"]]}
                for group in state["param_groups"]
            ],
        }
        set_optimizer_state_dict(
            step, optimizer, optim_state_dict=by_name, options=StateDictOptions(full_state_dict=True)
        )

    def rng_states(self, device: Device) -> list[dict[str, Any]] | None:
        """Every rank's RNG state, in rank order (a collective); None for one process."""
        if self.size == 1:
            return None
        states: list[Any] = [None] * self.size
        dist.all_gather_object(states, device.rng_state())
        return states

    def restore_rng(self, device: Device, state: dict[str, Any]) -> None:
        """Each rank's own RNG state when the checkpoint was written by as many ranks; otherwise rank 0
        restores the saved one and the others keep their seeds (a resharded run is exact only up to
        dropout masks)."""
        saved = state.get("rank_rng") or []
        if self.size > 1 and len(saved) == self.size:
            device.restore_rng_state(saved[self.rank])
        elif self.rank == 0:
            device.restore_rng_state(state["rng"])

    def diverge_rng(self, seed: int) -> None:
        """After the model is built (the same start everywhere): each rank its own dropout masks.
        Rank 0 keeps the seed's stream, so one process and rank 0 draw alike."""
        if self.rank > 0:
            torch.manual_seed(seed * 1_000_003 + self.rank)

    def leave(self) -> None:
        """Every rank together, once no collective is left (rank 0 may still be writing): a rank
        that tears its group down while a peer still talks to it can abort at exit."""
        if self.size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks FSDP2 shards one by one: the classes transformers names in
    ``_no_split_modules`` (``LlamaDecoderLayer``, ...)."""
    names = set(getattr(causal_lm(model), "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise RuntimeError(
            f"{type(causal_lm(model)).__name__} names no decoder layer class (_no_split_modules); "
            "FSDP2 cannot shard it layer by layer. Train it on one device."
        )
    return layers


def _device_type() -> str:
    return "cuda" if dist.is_initialized() and dist.get_backend() == "nccl" else "cpu"


def join(spec: TrainingSpec, device: Device) -> Group:
    """Join the job's process group when torchrun started this process; one process otherwise."""
    ranks = launched_ranks()
    size = ranks.world_size if ranks else 1
    if size != spec.n_devices:
        raise RuntimeError(
            f"The job trains on n_devices={spec.n_devices} but {size} process(es) were started; the worker "
            "launches one per device (torchrun --nproc-per-node N)."
        )
    if ranks is None or size == 1:
        return Group()
    if device.kind == "cuda":
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=device.torch_device)
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return Group(ranks, "fsdp" if spec.fine_tuning_type == "full" else "ddp")
