"""Distributed training with Ray Train (``train``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raysl.errors import check

Precision = Literal["auto", "fp32", "bf16", "fp16"]


MIN_NODE_WAIT_S = 5.0


@dataclass(frozen=True)
class TrainConfig:
    """Distributed training with Ray Train."""

    epochs: int = 100
    num_workers: int = 2  # Ray Train workers (one per GPU on a GPU cluster)
    # Elastic worker count (spot or preemptible nodes): 0 = always num_workers. With
    # 1 <= min_workers < num_workers, training starts with the workers that fit (min_workers
    # must), a restart after a lost node goes on with the workers that still fit (never fewer
    # than min_workers), and the group grows back to num_workers when nodes return (Ray Train
    # checks every 60 s; each resize restarts from the last checkpoint: see
    # checkpoint_every_steps). The global batch, and so the schedule, stay the same.
    min_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 0.0  # 0 = auto: share the CPUs left after reserving some for Ray Data
    data_cpus: float = 1.0  # logical CPUs kept free for Ray Data beside the train workers
    # Pin train workers to nodes with the `train_node` resource and, when such nodes are up,
    # augmentation to `data_node` nodes (cluster.yaml's node types). No effect without them.
    node_markers: bool = True
    precision: Precision = "auto"  # auto = bf16 (fp16 on pre-Ampere) autocast on GPU, fp32 on CPU
    # NHWC activations and weights, which tensor-core convolutions want; auto = ResNets on GPU.
    channels_last: Literal["auto", "on", "off"] = "auto"
    # Micro-batches per optimizer step: data.batch_size_global stays the images per step. For
    # contrastive losses this does NOT add negatives (each micro-batch only sees its own).
    grad_accumulation: int = 1
    sync_bn: bool = False  # BatchNorm statistics over all workers (SyncBatchNorm; GPU only)
    seed: int = 0
    run_name: str = ""  # same name again = resume that run; empty = a new unique name
    storage_path: str = ""  # checkpoints; empty = ./ray_results; shared storage on multi-node
    # Worker-group restarts from the last checkpoint before the run fails: a killed worker or a
    # lost node costs at most the work since that checkpoint, not the run. 2 rides out a
    # preempted node and a second fault; errors a restart cannot fix (config, data, a collapse
    # with stop_on_collapse) are not retried (train/permanent.py). -1 = forever; 0 = never.
    max_failures: int = 2
    # How long the run waits for the nodes its workers need (at its start, and after a lost node
    # before restarting from the last checkpoint). Past it, the run ends FAILED with its
    # checkpoints kept, saying how to resume (train.run_name) or to go on with fewer workers
    # (train.min_workers), instead of waiting forever. Ray looks again every min(this, 60) s;
    # an autoscaling cluster's new node takes minutes, so keep it above that.
    node_wait_s: float = 600.0
    keep_checkpoints: int = 2
    # Also checkpoint every N optimizer steps inside an epoch (0 = at epoch ends only): a lost
    # worker or node then costs at most N steps, not the epoch. A resumed run continues the
    # interrupted epoch at its step: the schedule and the epoch's number of steps are an
    # uninterrupted run's; the epoch's remaining batches are those after the first N of a new
    # pass over the data (Ray Data does not replay an order, so they may differ image by image).
    # Not in sweeps: Tune's schedulers count whole epochs.
    checkpoint_every_steps: int = 0
    # End the run (FAILED in MLflow, with the reason) when the label-free monitors see the
    # representation collapse after warm-up (eval.monitor_every); off = a warning line only.
    stop_on_collapse: bool = False
    address: str = ""  # Ray cluster to use; empty = RAY_ADDRESS if set, else start a local one
    # Train in the command's own process (as Ray Train's local mode does) instead of in a worker
    # group: no controller, worker processes, process group or split coordinator to start (~16 s
    # on 2 cores). "auto" does it for one worker on a one-node cluster on this machine, with
    # checkpoints on a local path (a sweep decides for all its trials). What it costs: no
    # automatic restart after a fault (train.max_failures is not applied; run the same command
    # again to resume from the last checkpoint; a sweep's trial is retried by Tune). "on"
    # insists (an error where it cannot), "off" never.
    local_mode: Literal["auto", "on", "off"] = "auto"

    @property
    def elastic(self) -> bool:
        """Whether the worker count may change during the run (``min_workers < num_workers``)."""
        return 0 < self.min_workers < self.num_workers

    @property
    def fewest_workers(self) -> int:
        """The fewest workers this run trains with."""
        return self.min_workers if self.elastic else self.num_workers

    @property
    def worker_counts(self) -> range:
        """Every number of workers this run may train with."""
        return range(self.fewest_workers, self.num_workers + 1)

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        check(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")
        check(0 <= self.min_workers <= self.num_workers, "min_workers", self.min_workers,
              f"0 (not elastic) or 1..train.num_workers={self.num_workers}")
        check(self.cpus_per_worker >= 0, "cpus_per_worker", self.cpus_per_worker, ">= 0 (0 = auto)")
        check(self.data_cpus > 0, "data_cpus", self.data_cpus,
              "must be > 0: Ray Data needs CPU beside the train workers or the job hangs")
        check(self.max_failures >= -1, "max_failures", self.max_failures, ">= -1 (-1 = forever)")
        check(self.node_wait_s >= MIN_NODE_WAIT_S, "node_wait_s", self.node_wait_s,
              f">= {MIN_NODE_WAIT_S:g} seconds (placing a worker group takes seconds itself)")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, ">= 1")
        check(self.checkpoint_every_steps >= 0, "checkpoint_every_steps",
              self.checkpoint_every_steps, ">= 0 optimizer steps (0 = at epoch ends only)")
        check(self.local_mode != "on" or (self.num_workers == 1 and not self.elastic),
              "local_mode", self.local_mode,
              f"off or auto with train.num_workers={self.num_workers}: on trains one worker in "
              "this process (train.num_workers=1, no train.min_workers)")
        check(self.grad_accumulation >= 1, "grad_accumulation", self.grad_accumulation, ">= 1")
        # PyTorch's SyncBatchNorm refuses CPU modules ("only work with GPU modules").
        check(not self.sync_bn or self.use_gpu, "sync_bn", self.sync_bn,
              "needs GPUs (train.use_gpu=true): PyTorch's SyncBatchNorm does not run on CPU")
        check(all(c.isalnum() or c in "-_." for c in self.run_name), "run_name", self.run_name,
              "may only contain letters, digits, '-', '_' and '.'")

