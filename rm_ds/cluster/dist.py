"""The distributed plumbing: process-group setup, the few collectives rm_ds needs, clean exit.

With ``rm_ds.train.engine`` this is one of the two modules that import torch.distributed or deepspeed.
Everything else receives rank and world size as arguments.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    """Ranks on this node (LOCAL_WORLD_SIZE from the launcher or MPI; the world size when unset)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


DEFAULT_TIMEOUT_S = 600.0
DEFAULT_WAIT_TIMEOUT_S = 4 * 3600.0
_long_group = None
"""A second (gloo) group over all ranks with the long timeout, for waits on rank 0 alone."""
_peers: list[tuple[str, int]] = []
"""(host name, pid) of every rank, to say which one failed when a collective does."""


def init(*, mpi_discovery: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
         wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> DistInfo:
    """Join (or create) the process group through deepspeed; gloo on CPU, nccl on GPUs.

    Works under the ``deepspeed`` launcher (one node or ``--no_ssh`` per node), torchrun, and
    mpirun (``mpi_discovery``, or automatically when OpenMPI's variables are set and RANK is not).
    A plain ``python`` run with no launcher variables becomes a world of one. Calling it again
    returns the existing group.
    """
    if tdist.is_initialized():
        return current()
    import deepspeed

    _skip_shm_comm_build()
    via = "launcher"
    if mpi_discovery or "OMPI_COMM_WORLD_SIZE" in os.environ and "RANK" not in os.environ:
        os.environ.update(_mpi_env())
        via = "mpi"
    else:
        for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(k, v)
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(_free_port())
    # the environment is complete, so deepspeed does no discovery of its own. timeout: how long any
    # collective waits for a peer before failing (config dist.timeout_s), instead of DeepSpeed's default
    _set_default_timeout(timeout_s)
    deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False, timeout=timedelta(seconds=timeout_s))
    info = current()
    global _long_group, _peers
    if info.world_size > 1:
        _long_group = tdist.new_group(backend="gloo", timeout=timedelta(seconds=max(wait_timeout_s, timeout_s)))
        _peers = gather_objects((socket.gethostname(), os.getpid()))
    if info.world_size > 1:  # one line per rank: what a multi-node log needs to show who joined what
        # one write, so the lines of ranks sharing a log do not interleave
        sys.stderr.write(f"[rank{info.rank}] rm_ds.cluster.dist: joined world size {info.world_size} "
                         f"as rank {info.rank} "
                         f"(local rank {info.local_rank}, via {via}, master {os.environ['MASTER_ADDR']}:"
                         f"{os.environ['MASTER_PORT']})\n")
        sys.stderr.flush()
    return info


def _set_default_timeout(timeout_s: float) -> None:
    """Make ``timeout_s`` the default of every process group created from now on.

    DeepSpeed creates its own groups (ZeRO's data-parallel group, where a step's gradients are
    reduced) with ``new_group(ranks)``, which takes torch's module default (30 min), not the world
    group's timeout: a stuck rank would block the others that long whatever init was given.
    """
    from torch.distributed import distributed_c10d as c10d

    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        if isinstance(getattr(c10d, name, None), timedelta):
            setattr(c10d, name, timedelta(seconds=timeout_s))


def _mpi_env() -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from MPI (mpi4py).

    DeepSpeed's own discovery takes MASTER_ADDR from the first word of ``hostname -I`` and port
    29500: on a machine whose first address is not loopback, or beside another job, that guess is
    wrong. Here rank 0 decides and broadcasts: MASTER_ADDR/MASTER_PORT from its environment when set
    (``mpirun -x``; launch/train_mpirun.sh sets the hostfile's first host), else 127.0.0.1 when all
    ranks share one node and rank 0's host name otherwise, and a free port.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)  # the ranks on this node
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node.Free()
    n_nodes = comm.allreduce(int(local_rank == 0))
    master = None
    if rank == 0:
        addr = os.environ.get("MASTER_ADDR") or ("127.0.0.1" if n_nodes == 1 else MPI.Get_processor_name())
        port = os.environ.get("MASTER_PORT") or str(_free_port("127.0.0.1" if n_nodes == 1 else ""))
        master = (addr, port)
    addr, port = comm.bcast(master, root=0)
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(local_size), "MASTER_ADDR": addr, "MASTER_PORT": port}


def current() -> DistInfo:
    """The DistInfo of an already initialised process group."""
    world = tdist.get_world_size()
    return DistInfo(rank=tdist.get_rank(), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                    local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def _skip_shm_comm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory comm op on CPU (~60 s per fresh machine).

    That op only speeds up inference all-reduce; training goes through gloo. RM_DS_SHM_COMM=1 keeps it.
    """
    if os.environ.get("RM_DS_SHM_COMM") == "1":
        return
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is not None:
            deepspeed.ops.__compatible_ops__[builder.NAME] = False


def _free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def all_reduce_sum(values: list[float] | torch.Tensor) -> torch.Tensor:
    """Sum a small float64 vector over ranks (one collective)."""
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


GRAD_BUCKET_MIN = 1 << 18
"""Tensors of at least this many elements are all-reduced in place one by one; smaller ones share one flat copy."""
SPARSE_ROWS_MAX = 0.5
"""A row-sparse tensor is reduced row-wise only while its rows non-zero on some rank are at most this share."""


def all_reduce_sum_(tensors: list[torch.Tensor], row_sparse: tuple[int, ...] = ()) -> None:
    """Sum same-shaped tensor lists over ranks in place (gradients): large tensors need no copy, the many small
    ones (norms, biases) one collective. Every rank passes its tensors in the same order.

    ``row_sparse`` names (by position) 2-D tensors most of whose rows are zero on every rank: an embedding's
    gradient, non-zero only in the rows of the tokens a step read. Those exchange one small mask of the rows
    non-zero on any rank, then reduce only those rows (the others sum to zero already): exact, and for a 30k
    vocabulary a few hundred rows instead of the whole matrix.
    """
    if not (tdist.is_initialized() and tdist.get_world_size() > 1):
        return
    dense = set(range(len(tensors))) - set(row_sparse)
    if row_sparse:
        masks = [tensors[i].ne(0).any(dim=1) for i in row_sparse]
        union = torch.cat(masks).to(torch.uint8)
        tdist.all_reduce(union, op=tdist.ReduceOp.MAX)  # rows non-zero on any rank
        for i, rows in zip(row_sparse, torch.split(union.bool(), [m.numel() for m in masks]), strict=True):
            idx = rows.nonzero().squeeze(1)
            if idx.numel() > SPARSE_ROWS_MAX * rows.numel():
                dense.add(i)
            elif idx.numel():
                part = tensors[i].index_select(0, idx)
                tdist.all_reduce(part, op=tdist.ReduceOp.SUM)
                tensors[i].index_copy_(0, idx, part)
    small = [tensors[i] for i in sorted(dense) if tensors[i].numel() < GRAD_BUCKET_MIN]
    for i in sorted(dense):
        if tensors[i].numel() >= GRAD_BUCKET_MIN:
            tdist.all_reduce(tensors[i], op=tdist.ReduceOp.SUM)
    if small:
        flat = torch._utils._flatten_dense_tensors(small)
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        for t, r in zip(small, torch._utils._unflatten_dense_tensors(flat, small), strict=True):
            t.copy_(r)


def all_reduce_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return float(t.item())


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """All-gather a (n_local, k) float64 tensor whose n_local differs by rank.

    gloo needs equal sizes: exchange row counts, pad to the maximum, gather, trim each rank's block.
    Returns the concatenation in rank order, on every rank.
    """
    local = local.to(torch.float64).contiguous()
    if not (tdist.is_initialized() and tdist.get_world_size() > 1):
        return local
    world = tdist.get_world_size()
    n = torch.tensor([local.shape[0]], dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    tdist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    width = local.shape[1]
    padded = torch.zeros((max(sizes), width), dtype=torch.float64)
    padded[: local.shape[0]] = local
    blocks = [torch.empty_like(padded) for _ in range(world)]
    tdist.all_gather(blocks, padded)
    return torch.cat([b[:s] for b, s in zip(blocks, sizes)], dim=0)


def gather_objects(obj) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank."""
    if not (tdist.is_initialized() and tdist.get_world_size() > 1):
        return [obj]
    out = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.barrier()


def wait_for_all() -> None:
    """A barrier with the long timeout (dist.wait_timeout_s): for ranks that wait while rank 0 alone
    works (filling the tokenised cache, exporting a big model), which must not trip dist.timeout_s."""
    if _long_group is not None:
        tdist.barrier(group=_long_group)
    else:
        barrier()


@contextmanager
def main_rank_first(info: DistInfo):
    """Each node's local rank 0 runs the body first (e.g. to fill a node-local cache), then the rest.

    Every rank passes the same two barriers, so the ordering holds across nodes too. When the body
    fails on local rank 0 (bad data, say), the others still get through and usually meet the same
    error themselves, instead of a broken connection while rank 0 exits.
    """
    if info.local_rank != 0:
        wait_for_all()
    try:
        yield
    finally:
        if info.local_rank == 0:
            wait_for_all()


def set_threads(info: DistInfo) -> None:
    """The cores this process may use (its CPU affinity: a Slurm or taskset allocation, else the machine), shared
    out between the ranks on the node, unless OMP_NUM_THREADS says otherwise (oversubscription is 7x slower)."""
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // max(1, info.local_world_size)))


def shutdown(exit_code: int = 0) -> None:
    """Tear down and leave without running interpreter finalisers.

    gloo ranks can abort at interpreter exit ("terminate called without an active exception"); a
    destroyed process group, flushed streams and ``os._exit`` make a successful run exit 0 every time.
    """
    try:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    except Exception as e:  # pragma: no cover - best effort on the way out
        log.warning("destroy_process_group failed: %s", e)
    mpi = sys.modules.get("mpi4py.MPI")  # only if the run used MPI; importing it would start MPI
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def _launcher_rank() -> int:
    """This process's rank before (or without) a process group: from the launcher's variables."""
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def exit_with_error(message: str, code: int) -> None:
    """End this process with ``code`` after printing ``message`` as one line on rank 0 only.

    Every rank usually meets the same config or data error. The other ranks wait a moment first: the
    launchers (deepspeed, torchrun, mpirun) kill the remaining ranks once rank 0 has exited, so the
    line is printed once. A rank that is still alive after the wait (its error was its own) prints it
    too, with its rank, so no error goes unreported. Without a process group (``rm-ds inspect``, ``label``,
    a one-process ``score``) it raises ``SystemExit(code)``.
    """
    rank = tdist.get_rank() if tdist.is_initialized() else _launcher_rank()
    line = " ".join(message.splitlines())
    if rank != 0:
        time.sleep(3.0)
        line = f"[rank{rank}] {line}"
    sys.stderr.write(line + "\n")
    if not tdist.is_initialized() and "mpi4py.MPI" not in sys.modules:
        raise SystemExit(code)  # one process, no process group: a plain exit (callers in-process can catch it)
    shutdown(code)


_PEER_FAILURE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out", "timed out",
                 "Socket Timeout", "connection refused", "Connection refused")


def peer_failure(exc: BaseException) -> str | None:
    """For an exception that a failed collective raised (a peer died, or stopped answering until the
    timeout): a one-line diagnosis naming the rank(s) at fault where this node can tell; else None."""
    if not tdist.is_initialized() or tdist.get_world_size() < 2:
        return None
    text = f"{type(exc).__name__}: {exc}"
    if not (isinstance(exc, tdist.DistError) or any(m in text for m in _PEER_FAILURE)):
        return None
    me = tdist.get_rank()
    found, remote = _faulty_peers(me)
    if not found:  # the launcher terminates the survivors once it sees the dead rank: say why first
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for _ in range(30):  # a killed peer's sockets close before the kernel has finished ending it
        if found:
            break
        time.sleep(0.1)
        found, remote = _faulty_peers(me)
    if not found:
        elsewhere = f"; ranks {remote} run elsewhere" if remote else ""
        found = [f"no rank on this node is dead or stopped{elsewhere}, so a rank is stuck or its host failed"]
    kind = "timed out (dist.timeout_s)" if "imed out" in text or "Timeout" in text else "failed"
    first = " ".join(str(exc).splitlines()[:1])[:300]
    return (f"rank {me}: a collective {kind}: a rank stopped responding: {'; '.join(found)}. "
            f"Resume with resume=auto from the last complete checkpoint. ({type(exc).__name__}: {first})")


def _faulty_peers(me: int) -> tuple[list[str], list[int]]:
    """(what is wrong with the other ranks on this node, the ranks on other nodes)."""
    host = socket.gethostname()
    found, remote = [], []
    for r, (h, pid) in enumerate(_peers):
        if r == me:
            continue
        if h != host:
            remote.append(r)
            continue
        state = _process_state(pid)
        if state is None:
            found.append(f"rank {r} (pid {pid}) has exited or was killed")
        elif state in ("T", "t"):
            found.append(f"rank {r} (pid {pid}) is stopped (SIGSTOP or a debugger)")
    return found, remote


def _process_state(pid: int) -> str | None:
    """The state letter of a local process from /proc (R, S, D, T, Z, ...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"
    return None if state in ("Z", "X") else state


def exit_peer_lost(message: str, code: int) -> None:
    """Print the diagnosis at once on this rank (every survivor says what it saw) and exit."""
    sys.stderr.write(" ".join(message.splitlines()) + "\n")
    shutdown(code)
