"""Training on several processes (one per GPU, or per CPU share) with torchrun and DistributedDataParallel.

* Who asks for it: ``train.nproc_per_node`` (processes on this machine) or, winning over it,
  ``$LUNGXRAY_NPROC_PER_NODE``; several machines: ``$LUNGXRAY_NNODES`` with ``$LUNGXRAY_RDZV_ENDPOINT``
  (``host:port`` of the rendezvous, the same on every machine) and optionally ``$LUNGXRAY_RDZV_ID`` (a job name).
  :func:`launch_command` is the ``torchrun`` command line the train stage re-launches itself with
  (``python -m torch.distributed.run``), so the DVC stage command stays ``python stages/train.py <model>``. A
  process started by torchrun (``$WORLD_SIZE`` set) is never re-launched: running
  ``torchrun ... stages/train.py <model>`` by hand works too.
* Inside a worker, :func:`init_world` joins the process group: NCCL on GPUs (each process on ``cuda:$LOCAL_RANK``),
  gloo on the CPU. :class:`World` is what the training loop needs of it: rank, size, a barrier, sums and a broadcast;
  without torchrun every call is a no-op, so the single-process path stays what it was. Under torchrun the group is
  joined whatever its size, so ``torchrun --nproc_per_node=1`` on one GPU runs the NCCL and DistributedDataParallel
  path exactly as several GPUs would (``benchmarks/gpu_check.py`` proves it on one).
* ``train.batch_size`` is the global batch: each of the ``size`` processes takes ``batch_size / size`` images of every
  step (it must divide evenly), so the number of optimiser steps per epoch, the learning rate and the results do not
  depend on how many processes share the work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch

from lungxray.core.errors import LungxrayError

ENV_NPROC, ENV_NNODES, ENV_ENDPOINT, ENV_ID = ("LUNGXRAY_NPROC_PER_NODE", "LUNGXRAY_NNODES", "LUNGXRAY_RDZV_ENDPOINT",
                                               "LUNGXRAY_RDZV_ID")


# --- launching --------------------------------------------------------------------------------------------------------


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the process-group variables)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def main_process() -> bool:
    """Whether this is the process that prints and writes: rank 0, or the only one."""
    return os.environ.get("RANK", "0") == "0"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise LungxrayError(f"${name}={value!r}: expected a whole number >= 1 (or unset it)")
    return int(value)


def launch_command(script: str, args: list[str], nproc_per_node: int) -> list[str] | None:
    """The torchrun command that runs ``script args`` on several processes, or None when one process is asked for
    (or this process is already one of torchrun's)."""
    if under_torchrun():
        return None
    nproc = _env_int(ENV_NPROC) or nproc_per_node
    nnodes = _env_int(ENV_NNODES) or 1
    if nproc == 1 and nnodes == 1:
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        cmd.append("--standalone")  # a local rendezvous on a free port
    else:
        endpoint = os.environ.get(ENV_ENDPOINT, "").strip()
        if not endpoint:
            raise LungxrayError(f"${ENV_NNODES}={nnodes} needs ${ENV_ENDPOINT}=host:port (the rendezvous, the same on "
                                f"every machine, reachable from all of them)")
        cmd += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
                f"--rdzv_id={os.environ.get(ENV_ID, 'lungxray')}"]
    return cmd + [script, *args]


def die_with_parent(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; elsewhere nothing). torchrun starts
    its processes in sessions of their own, so a ``kill -9`` of the stage (or of DVC) would leave them training."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call
            os.kill(os.getpid(), sig)


def launch(cmd: list[str]) -> None:
    """Run the torchrun command (stopped when this process dies: it then stops its processes); a failed worker becomes
    one error (its own message is printed above by torchrun)."""
    import signal

    code = subprocess.run(cmd, preexec_fn=lambda: die_with_parent(signal.SIGTERM)).returncode
    if code != 0:
        raise LungxrayError(f"a training process failed (torchrun exit status {code}; its message is above). Fix it "
                            f"and rerun: the run resumes from its last checkpoint")


# --- inside a worker --------------------------------------------------------------------------------------------------


@dataclass
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    group: bool = False  # a process group was joined (under torchrun): the collectives run, even for one process

    @property
    def backend(self) -> str | None:
        """The process group's backend (nccl, gloo), or None without one."""
        return torch.distributed.get_backend() if self.group else None

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files, prints and logs to MLflow."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.group:
            torch.distributed.barrier()

    def sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the processes (float64, on this process's device)."""
        t = torch.as_tensor(values, dtype=torch.float64, device=self.device)
        if self.group:
            torch.distributed.all_reduce(t)
        return t

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (any picklable object)."""
        if not self.group:
            return obj
        box = [obj if self.main else None]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) in every process."""
        if self.group:
            for b in model.buffers():
                torch.distributed.broadcast(b, src=0)

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.size:
            raise LungxrayError(f"train.batch_size {batch_size} is the global batch of the {self.size} training "
                                f"processes: make it a multiple of {self.size}")
        return batch_size // self.size


def init_world(device: torch.device) -> World:
    """Join the process group when started by torchrun (NCCL on CUDA, gloo on the CPU), whatever its size; else a
    world of one without a group."""
    if not under_torchrun():
        return World(device=device)
    import signal

    die_with_parent(signal.SIGKILL)  # torchrun's agent killed: nothing may go on writing checkpoints
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise LungxrayError(f"process {local} of this machine has no GPU ({torch.cuda.device_count()} visible): "
                                f"set train.nproc_per_node (or --nproc_per_node) to at most the GPU count")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(torch.distributed.get_rank(), torch.distributed.get_world_size(), device, group=True)


def close_world(world: World) -> None:
    if world.group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The model that trains: DistributedDataParallel (gradients averaged over the processes at each step; buffers
    such as BatchNorm statistics broadcast from rank 0) in a process group, else the model itself."""
    if not world.group:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)

