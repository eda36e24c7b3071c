"""Cross-worker state of the methods: 2 gloo processes vs 1 process on the concatenated batch.

MoCo v2's queue, DINO's center and SwAV's Sinkhorn codes are statistics over every worker's
batch (so are DINOv2's centres, Sinkhorn codes over masked patches whose count differs between
workers, and KoLeo's nearest neighbours); SwAV's queue is per worker. Each case below builds a
tiny ViT method (no BatchNorm in the backbone) from the same seed on every rank, runs it on its
rank's half of a fixed global batch (the whole batch in the single process) and returns what
must agree, in the ``Outputs`` of ``tests/gloo_harness.py``: ``rows`` per sample of this rank,
``same`` identical on every rank.
All cases run in ONE spawn of 2 processes (the ``gloo_records`` fixture).

The harness hands every case the embeddings of its own tiny ``Linear`` (built for the loss
tests); the method cases only anchor their returned loss to them with a zero weight, so the
harness's own loss/gradient checks still run (the loss of each case is the method's loss, so
"mean of the ranks' losses == the 1-process loss" is checked too) and the Linear's gradients are
trivially zero. The method's gradients are computed inside the case, averaged by DDP as in
training (``broadcast_buffers=False``, as ``raysl/train/loop.py``), and returned in ``same``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import gloo_harness as gh
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl import config as C
from raysl import distributed
from raysl.clustering import kmeans, pca_whiten
from raysl.losses import sinkhorn_knopp
from raysl.methods.base import (
    EpochData,
    Progress,
    SSLMethod,
    build_method,
    gather_worker_state,
    take_worker_state,
)

N = gh.WORLD * gh.B_PER_RANK  # the global batch: rank r gets samples r*B .. (r+1)*B - 1
PROGRESS = Progress(0, 100, 10)
VIT = ["model.backbone=vit_tiny", "model.width=32", "model.depth=2", "model.patch_size=4",
       "data.image_size=32", f"data.batch_size_global={N}", f"train.num_workers={gh.WORLD}"]
MOCO_QUEUE = 12  # 8 keys per forward: the second forward wraps around the end of the ring
SWAV_QUEUE = 16  # 8 rows per worker
PROTOTYPES = 6
DINOV2 = ["method.name=dinov2", "method.out_dim=32", "method.hidden_dim=32",
          "method.bottleneck_dim=16", "method.ibot_out_dim=32", "method.ibot_hidden_dim=32",
          "method.ibot_bottleneck_dim=16", "data.views.local_crops=2"]
CONFIGS = {
    # MoCo v2's projector has no BatchNorm, and bn_splits=1 since a ViT has none to shuffle.
    "moco_v2": ["method.name=moco_v2", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
                f"method.queue_size={MOCO_QUEUE}", "method.bn_splits=1"],
    # DINO's head has no BatchNorm; 2 global + 2 local crops.
    "dino": ["method.name=dino", "method.out_dim=32", "method.hidden_dim=32",
             "method.bottleneck_dim=16", "data.views.local_crops=2"],
    # SwAV's projector HAS a hidden BatchNorm1d: its cases run the method in eval mode (running
    # statistics, so every sample's embedding is independent of the rest of its batch).
    "swav": ["method.name=swav", f"method.num_prototypes={PROTOTYPES}",
             "method.proj_hidden_dim=32", "method.proj_output_dim=16",
             "data.views.local_crops=2"],
    # NNCLR's projector and predictor have BatchNorm: eval mode, as SwAV.
    "nnclr": ["method.name=nnclr", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
              "method.pred_hidden_dim=32", f"method.support_size={MOCO_QUEUE}"],
    # Colorization's head has BatchNorm: only its colour counts (no batch statistics) are
    # compared here.
    "colorization": ["method.name=colorization", "method.head_dim=16"],
    "deepcluster": ["method.name=deepcluster", "method.head_dim=16", "method.pca_dim=8",
                    "method.num_clusters=3"],
    # LeJEPA's projector has BatchNorm: eval mode, as SwAV. SIGReg's characteristic function is
    # summed over workers; lambda 0.5 so that its gradient is half of the total.
    "lejepa": ["method.name=lejepa", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
               "method.num_slices=16", "method.sigreg_lambda=0.5", "data.views.local_crops=2"],
    # DINOv2's heads have no BatchNorm; 2 global + 2 local crops; Sinkhorn-Knopp centring with
    # separate heads (the paper), and EMA centring with the head shared (the reference config).
    "dinov2": DINOV2,
    "dinov2_ema": [*DINOV2, "method.centering=ema", "method.ibot_separate_head=false"],
    "swav_queue": ["method.name=swav", f"method.num_prototypes={PROTOTYPES}",
                   "method.proj_hidden_dim=32", "method.proj_output_dim=16",
                   "data.views.local_crops=2", f"method.queue_length={SWAV_QUEUE}",
                   "method.queue_start_epoch=0"],
}


def config(name: str) -> C.Config:
    return C.load(None, VIT + CONFIGS[name])


def build(name: str) -> SSLMethod:
    """The method from seed 0: identical weights (and MoCo queue) on every rank."""
    if distributed.is_distributed():
        torch.set_num_threads(1)  # 2 workers on 2 cores: more threads only contend
    torch.manual_seed(0)
    return build_method(config(name))


def global_views(name: str, seed: int) -> list[Tensor]:
    """A fixed global batch of uint8 views, sized per ``view_sizes``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (N, 3, s, s), dtype=torch.uint8, generator=g)
            for s in config(name).view_sizes]


def mine(x: Tensor) -> Tensor:
    """This rank's samples of the global batch ``x``; all of it without a process group."""
    return x.chunk(distributed.world_size())[distributed.rank()]


def my_views(name: str, seed: int) -> list[Tensor]:
    return [mine(v) for v in global_views(name, seed)]


def anchored(loss: Tensor, e: list[Tensor]) -> Tensor:
    """``loss`` (detached) tied to the harness's embeddings with a zero weight (docstring)."""
    return loss.detach().double() + 0.0 * sum(x.sum() for x in e)


def trainable(method: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in method.named_parameters() if p.requires_grad]


def flat_grads(method: nn.Module) -> Tensor:
    """Every trainable parameter's gradient, flattened in order; NaN where it got none."""
    return torch.cat([p.grad.flatten() if p.grad is not None
                      else torch.full((p.numel(),), math.nan) for _, p in trainable(method)])


def ddp(method: SSLMethod) -> nn.Module:
    """DDP as in training (gradients averaged over ranks, no buffer broadcast)."""
    if not distributed.is_distributed():
        return method
    with warnings.catch_warnings():  # torch 2.14 deprecates the flag loop.py still passes
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)


def queue_and_ptr(queue: Tensor, ptr: Tensor) -> Tensor:
    """A ring buffer (K, D) flattened, then its pointer: unpacked by :func:`unpack_queue`."""
    return torch.cat([queue.flatten(), ptr.to(queue.dtype)[None]])


def unpack_queue(same: Tensor) -> tuple[Tensor, int]:
    return same[:-1].reshape(MOCO_QUEUE, -1), int(same[-1])


# --------------------------------------- the cases --------------------------------------------
# Module-level functions: mp.spawn pickles them by reference.


def _case_moco_queue(forwards: int, e: list[Tensor]) -> gh.Outputs:
    """MoCo v2's queue and pointer after ``forwards`` forwards (batches of seeds 1, 2, ...)."""
    method = build("moco_v2")
    for seed in range(1, forwards + 1):
        loss = method(my_views("moco_v2", seed), PROGRESS).loss
    return gh.Outputs(anchored(loss, e), same=queue_and_ptr(method.queue, method.queue_ptr))


def _case_moco_queue_1(e: list[Tensor]) -> gh.Outputs:
    return _case_moco_queue(1, e)


def _case_moco_queue_2(e: list[Tensor]) -> gh.Outputs:
    return _case_moco_queue(2, e)


def _case_nnclr_support(e: list[Tensor]) -> gh.Outputs:
    """NNCLR's support set and pointer after 2 forwards (the second wraps around the ring)."""
    method = build("nnclr").eval()
    for seed in (1, 2):
        loss = method(my_views("nnclr", seed), PROGRESS).loss
    return gh.Outputs(anchored(loss, e), same=queue_and_ptr(method.support, method.support_ptr))


def _case_dino_center(e: list[Tensor]) -> gh.Outputs:
    method = build("dino")
    loss = method(my_views("dino", 1), PROGRESS).loss
    return gh.Outputs(anchored(loss, e), same=method.center.clone())


def _swav_scores(method: nn.Module, seed: int) -> Tensor:
    """(N, K) cosine scores of random unit embeddings against the prototypes."""
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(N, method.cfg.proj_output_dim, generator=g), dim=1)
    with torch.no_grad():
        scores: Tensor = method.prototypes(z)
    return scores


def _case_swav_codes(e: list[Tensor]) -> gh.Outputs:
    """Codes of this rank's scores (queue off) with the paper's 3 iterations and with 50.

    rows: (B, 2K) codes; same: (2K,) per-prototype sums of the codes over the global batch.
    """
    method = build("swav")
    scores = mine(_swav_scores(method, 1))
    codes = []
    for iterations in (method.cfg.sinkhorn_iterations, 50):
        method.cfg = dataclasses.replace(method.cfg, sinkhorn_iterations=iterations)
        codes.append(method._codes(scores, 0, PROGRESS))
    rows = torch.cat(codes, dim=1)
    return gh.Outputs(anchored(rows.sum() * 0, e), rows=rows,
                      same=distributed.all_reduce_sum(rows.sum(dim=0)))


def _case_swav_worker_state(e: list[Tensor]) -> gh.Outputs:
    """A checkpoint's per-worker state: every rank's queue gathered, then each rank of a fresh
    SwAV of the same world takes its own back.

    same: [taken, largest difference to the queue the rank had, counters equal] (1, 0, 1).
    """
    method = build("swav_queue").eval()
    for seed in (1, 2):
        method(my_views("swav_queue", seed), PROGRESS)
    gathered = gather_worker_state(method)
    assert gathered["queue"].shape[0] == distributed.world_size()
    fresh = build("swav_queue")
    taken = take_worker_state(fresh, gathered, distributed.rank(), distributed.world_size())
    diff = float((fresh.queue - method.queue).abs().max())
    return gh.Outputs(anchored(torch.zeros(()), e), same=torch.tensor(
        [float(taken), diff, float(fresh.queued == method.queued > 0)], dtype=torch.float64))


def _case_swav_queue_rows(e: list[Tensor]) -> gh.Outputs:
    """same: the queue's shape (crops, rows per worker, D) — differs by design, checked apart."""
    method = build("swav_queue")
    return gh.Outputs(anchored(torch.zeros(()), e), same=torch.tensor(method.queue.shape))


def _case_swav_queue(e: list[Tensor]) -> gh.Outputs:
    """Two forwards fill the queue (8 rows per worker, 16 in 1 process); then the codes of new
    scores use it. Sinkhorn is permutation-equivariant and its sums are global, and the ranks'
    queues together hold the same embeddings as the 1-process queue, so the codes of the new
    scores must equal the 1-process rows. The third forward's loss uses the queue too.

    rows: (B, 2, D) the newest queue entries (this rank's global-crop embeddings of batch 2),
    then the codes (B, K) of the new scores with the queue, flattened to (B, 2D + K).
    """
    method = build("swav_queue").eval()  # BatchNorm on running statistics (see CONFIGS)
    for seed in (1, 2):
        method(my_views("swav_queue", seed), PROGRESS)
    b = N // distributed.world_size()
    newest = method.queue[:, :b].transpose(0, 1).flatten(1)  # (B, 2D)
    codes = method._codes(mine(_swav_scores(method, 3)), 0, PROGRESS)
    loss = method(my_views("swav_queue", 3), PROGRESS).loss
    return gh.Outputs(anchored(loss, e), rows=torch.cat([newest, codes], dim=1))


def colour_batch(seed: int) -> tuple[Tensor, Tensor]:
    """A fixed global batch of colour targets (N, 3, 32, 32) uint8 and their gray views."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=g)
    gray = (colour.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, True)
    return gray.round().to(torch.uint8), colour


def _case_colorization_counts(e: list[Tensor]) -> gh.Outputs:
    """same: the colour-bin counts after 2 forwards (batches of seeds 1, 2): global sums."""
    method = build("colorization")
    for seed in (1, 2):
        gray, colour = colour_batch(seed)
        method([mine(gray)], PROGRESS, {"target": mine(colour)})
    return gh.Outputs(anchored(torch.zeros(()), e), same=method.bin_counts.clone())


def uneven_share(n: int) -> Tensor:
    """This rank's row indices of ``n``: rank 0 every third row, rank 1 the others (unequal,
    interleaved shares, as a stream may hand out); all rows without a process group."""
    rows = torch.arange(n)
    if not distributed.is_distributed():
        return rows
    first = rows % 3 == 0
    return rows[first] if distributed.rank() == 0 else rows[~first]


def _case_kmeans(e: list[Tensor]) -> gh.Outputs:
    """same: PCA-whitening + k-means of 60 fixed points spread unevenly over the ranks."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(60, 12, generator=g) @ torch.randn(12, 12, generator=g)
    rows = uneven_share(60)
    result = kmeans(pca_whiten(features[rows], 6), rows, 5, iters=10, seed=3)
    return gh.Outputs(anchored(torch.zeros(()), e), same=torch.cat([
        result.assignment.double(), result.centroids.double().flatten(),
        result.sizes.double(), torch.tensor([result.reseeded, result.inertia],
                                            dtype=torch.float64)]))


def _case_deepcluster_epoch(e: list[Tensor]) -> gh.Outputs:
    """same: DeepCluster's re-assignment of 30 images (features, clusters, new classifier)."""
    method = build("deepcluster")
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(4))
    rows = uneven_share(30)
    start = method.on_epoch_start(EpochData(0, lambda: [{"image": images[rows], "index": rows,
                                                         "label": rows % 4}], seed=2))
    return gh.Outputs(anchored(torch.zeros(()), e), same=torch.cat([
        method.assignment.double(), method.cluster_weights.double(),
        method.classifier.weight.detach().double().flatten(),
        torch.tensor([start.logs["cluster/nmi_labels"]], dtype=torch.float64)]))


def _case_grads(name: str, eval_mode: bool, e: list[Tensor]) -> gh.Outputs:
    """One forward/backward of ``name``; same: the DDP-averaged gradients."""
    method = build(name).train(not eval_mode)
    model = ddp(method)  # referenced until after backward: a collected DDP averages nothing
    loss = model(my_views(name, 1), PROGRESS).loss
    loss.backward()
    del model
    return gh.Outputs(anchored(loss, e), same=flat_grads(method))


def _case_grads_moco_v2(e: list[Tensor]) -> gh.Outputs:
    return _case_grads("moco_v2", False, e)


def _case_grads_dino(e: list[Tensor]) -> gh.Outputs:
    return _case_grads("dino", False, e)


def _case_grads_swav(e: list[Tensor]) -> gh.Outputs:
    return _case_grads("swav", True, e)


def _case_grads_nnclr(e: list[Tensor]) -> gh.Outputs:
    return _case_grads("nnclr", True, e)


def _case_grads_lejepa(e: list[Tensor]) -> gh.Outputs:
    """As :func:`_case_grads`, with a global RNG that differs per rank (as in training): SIGReg's
    directions come from the step alone, so the ranks still draw the same."""
    method = build("lejepa").eval()
    model = ddp(method)
    torch.manual_seed(100 + distributed.rank())
    loss = model(my_views("lejepa", 1), PROGRESS).loss
    loss.backward()
    del model
    return gh.Outputs(anchored(loss, e), same=flat_grads(method))


def dinov2_masks(name: str) -> Tensor:
    """This rank's share of fixed masks of the global batch's 2 x N global crops.

    The method draws its masks per rank; 1 process on the whole batch would draw others. So
    both draw nothing: the masks of all 2N crops come from one seed (each crop its own count,
    so the ranks mask different numbers of patches), and each rank takes the rows of its
    samples, crop 0's then crop 1's, as its forward concatenates them.
    """
    from raysl.methods.dinov2 import ibot_masks

    cfg = config(name)
    n = (cfg.data.image_size // cfg.model.effective_patch_size) ** 2
    with torch.random.fork_rng():
        torch.manual_seed(5)
        masks = ibot_masks(2 * N, n, 0.5, (0.1, 0.5), torch.device("cpu"))
    return torch.cat([mine(masks[:N]), mine(masks[N:])])


def dinov2(name: str) -> SSLMethod:
    """DINOv2 from seed 0 whose forward takes this rank's share of :func:`dinov2_masks`."""
    method = build(name)
    masks = dinov2_masks(name)

    def fixed(b: int, n: int, device: torch.device) -> Tensor:
        assert (b, n) == masks.shape
        return masks.to(device)

    method.masks = fixed  # type: ignore[method-assign]
    return method


def _case_grads_dinov2(name: str, e: list[Tensor]) -> gh.Outputs:
    """As :func:`_case_grads`, on the fixed masks; KoLeo gathers, Sinkhorn all-reduces."""
    method = dinov2(name)
    model = ddp(method)
    loss = model(my_views(name, 1), PROGRESS).loss
    loss.backward()
    del model
    return gh.Outputs(anchored(loss, e), same=flat_grads(method))


def _case_grads_dinov2_sk(e: list[Tensor]) -> gh.Outputs:
    return _case_grads_dinov2("dinov2", e)


def _case_grads_dinov2_ema(e: list[Tensor]) -> gh.Outputs:
    return _case_grads_dinov2("dinov2_ema", e)


def _case_dinov2_centres(e: list[Tensor]) -> gh.Outputs:
    """same: the class-token and patch centres after 2 forwards of EMA centring."""
    method = dinov2("dinov2_ema")
    for seed in (1, 2):
        loss = method(my_views("dinov2_ema", seed), PROGRESS).loss
    return gh.Outputs(anchored(loss, e), same=torch.cat([method.center.flatten(),
                                                         method.patch_center.flatten()]))


CASES: dict[str, Callable[[list[Tensor]], gh.Outputs]] = {
    "moco_v2 queue, 1 forward": _case_moco_queue_1,
    "moco_v2 queue, 2 forwards": _case_moco_queue_2,
    "dino center": _case_dino_center,
    "swav codes": _case_swav_codes,
    "swav queue rows": _case_swav_queue_rows,
    "swav queue": _case_swav_queue,
    "moco_v2 grads": _case_grads_moco_v2,
    "dino grads": _case_grads_dino,
    "swav grads": _case_grads_swav,
    "nnclr support": _case_nnclr_support,
    "nnclr grads": _case_grads_nnclr,
    "lejepa grads": _case_grads_lejepa,
    "dinov2 grads": _case_grads_dinov2_sk,
    "dinov2_ema grads": _case_grads_dinov2_ema,
    "dinov2 centres": _case_dinov2_centres,
    "colorization counts": _case_colorization_counts,
    "kmeans": _case_kmeans,
    "swav worker state": _case_swav_worker_state,
    "deepcluster epoch": _case_deepcluster_epoch,
}
GLOO_CASES = {name: gh.Case(fn) for name, fn in CASES.items()}

# float32 everywhere (DINO casts to float32, Sinkhorn computes in float32): the 2 processes and
# the 1 process compute the same values with different reduction orders and matmul shapes (DDP's
# (g0 + g1) / 2 vs one sum over 8 samples). rtol is 8x torch's float32 default (1.3e-6) because
# the gradients of the first layers accumulate such roundings through the whole ViT; measured:
# gradients of magnitude ~10 differ by <= 2.4e-6, i.e. <= 0.3 of this tolerance; the queue,
# center and codes use <= 0.03 of it.
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def gloo_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[gh.Record]]:
    """Every case on 2 gloo processes, in one spawn shared by the tests below."""
    return gh.run_distributed(GLOO_CASES, tmp_path_factory.mktemp("gloo_methods"))


@pytest.fixture(scope="module")
def single_records() -> dict[str, gh.Record]:
    """Every case in this process on the whole batch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only spin against the workers
    try:
        return {name: gh.run_single(case) for name, case in GLOO_CASES.items()}
    finally:
        torch.set_num_threads(threads)


def _equivalent(name: str, gloo: dict[str, list[gh.Record]],
                single: dict[str, gh.Record]) -> None:
    gh.assert_equivalent(gloo[name], single[name], **CLOSE)


# ------------------------------------------ MoCo v2 -------------------------------------------


def _keys(seed: int) -> Tensor:
    """Naive reference: the normalised momentum-branch keys of view 1 of the global batch."""
    method = build("moco_v2")
    with torch.no_grad():
        k = method.momentum_projector(method.momentum_encoder(global_views("moco_v2", seed)[1]))
    return F.normalize(k, dim=1)


def test_moco_v2_queue_after_one_forward_is_global(gloo_records, single_records):
    # Identical on both ranks and equal to 1 process enqueueing [rank0 keys; rank1 keys].
    _equivalent("moco_v2 queue, 1 forward", gloo_records, single_records)
    queue, ptr = unpack_queue(gloo_records["moco_v2 queue, 1 forward"][1]["same"])
    initial = build("moco_v2").queue
    assert ptr == N
    torch.testing.assert_close(queue[:N], _keys(1), **CLOSE)
    torch.testing.assert_close(queue[N:], initial[N:], rtol=0, atol=0)  # untouched


def test_moco_v2_queue_wraps_around(gloo_records, single_records):
    _equivalent("moco_v2 queue, 2 forwards", gloo_records, single_records)
    # Ring buffer of 12: forward 1 wrote slots 0..7, forward 2 writes 8..11 then 0..3.
    k1, k2 = _keys(1), _keys(2)
    want = torch.cat([k2[MOCO_QUEUE - N:], k1[2 * N - MOCO_QUEUE:], k2[:MOCO_QUEUE - N]])
    for record in gloo_records["moco_v2 queue, 2 forwards"]:
        queue, ptr = unpack_queue(record["same"])
        assert ptr == 2 * N - MOCO_QUEUE
        torch.testing.assert_close(queue, want, **CLOSE)


# -------------------------------------------- DINO --------------------------------------------


def test_dino_center_is_global(gloo_records, single_records):
    _equivalent("dino center", gloo_records, single_records)
    center = gloo_records["dino center"][0]["same"]
    assert center.abs().max() > 1e-3  # it moved from its zero init


# -------------------------------------------- SwAV --------------------------------------------


def test_swav_codes_are_global_sinkhorn(gloo_records, single_records):
    # Each rank's codes are its rows of the 1-process codes; the per-prototype sums over the
    # global batch agree, and reach the equipartition N/K once Sinkhorn has converged.
    _equivalent("swav codes", gloo_records, single_records)
    three, converged = gloo_records["swav codes"][0]["same"].split(PROTOTYPES)
    for sums in (three, converged):  # every code is a distribution: N in all
        torch.testing.assert_close(sums.sum(), torch.tensor(float(N)))
    assert not torch.allclose(three, torch.full_like(three, N / PROTOTYPES), atol=1e-3)
    torch.testing.assert_close(converged, torch.full_like(converged, N / PROTOTYPES),
                               rtol=1e-5, atol=1e-5)


def test_swav_queue_has_queue_length_over_world_size_rows(gloo_records, single_records):
    per_rank = [r["same"].tolist() for r in gloo_records["swav queue rows"]]
    assert per_rank == [[2, SWAV_QUEUE // gh.WORLD, 16]] * gh.WORLD
    assert single_records["swav queue rows"]["same"].tolist() == [2, SWAV_QUEUE, 16]


def test_swav_per_worker_queue_gives_the_global_codes(gloo_records, single_records):
    _equivalent("swav queue", gloo_records, single_records)
    # Not trivial: the queue changed the codes (the same scores without it give others).
    method = build("swav_queue")
    without = sinkhorn_knopp(_swav_scores(method, 3), method.cfg.epsilon,
                             method.cfg.sinkhorn_iterations)
    with_queue = single_records["swav queue"]["rows"][:, -PROTOTYPES:]
    assert (with_queue - without).abs().max() > 1e-2


# ------------------------------------------- NNCLR --------------------------------------------


def test_nnclr_support_set_is_global(gloo_records, single_records):
    # Identical on both ranks, equal to 1 process enqueueing the whole batch's projections.
    _equivalent("nnclr support", gloo_records, single_records)
    support, ptr = unpack_queue(gloo_records["nnclr support"][0]["same"])
    assert ptr == 2 * N - MOCO_QUEUE  # 2 forwards of N into a ring of 12
    initial = build("nnclr").support
    assert not torch.allclose(support, initial)
    torch.testing.assert_close(support.norm(dim=1), torch.ones(MOCO_QUEUE))


# ------------------------------ DDP gradients == 1 process ------------------------------------


@pytest.mark.parametrize("name", ["moco_v2", "dino", "swav", "nnclr", "lejepa", "dinov2",
                                  "dinov2_ema"])
def test_ddp_gradients_equal_one_process_on_the_whole_batch(name, gloo_records, single_records):
    ranks, single = gloo_records[f"{name} grads"], single_records[f"{name} grads"]
    # Per parameter first, for a failure message that names it; then the harness's checks.
    params = trainable(build(name))
    sizes = [p.numel() for _, p in params]
    for rank, record in enumerate(ranks):
        for (pname, _), got, want in zip(params, record["same"].split(sizes),
                                         single["same"].split(sizes), strict=True):
            torch.testing.assert_close(got, want, **CLOSE,
                                       msg=lambda m, r=rank, n=pname: f"rank {r}, {n}: {m}")
    _equivalent(f"{name} grads", gloo_records, single_records)


def test_cases_are_not_trivial(gloo_records):
    # The ranks saw different samples (their losses differ), and the gradients are not zero.
    for name in ("moco_v2 queue, 1 forward", "dino center", "swav queue", "dino grads",
                 "nnclr support"):
        r0, r1 = gloo_records[name]
        assert not torch.allclose(r0["loss"], r1["loss"]), name
    for name in ("moco_v2 grads", "dino grads", "swav grads", "nnclr grads", "lejepa grads",
                 "dinov2 grads", "dinov2_ema grads"):
        assert gloo_records[name][0]["same"].abs().max() > 1e-3, name


# ------------------------------------------- DINOv2 -------------------------------------------


def test_dinov2_centres_are_global(gloo_records, single_records):
    # EMA centring: both centres identical on every rank and equal to 1 process's; the patch
    # centre averages every masked patch of every rank, though the ranks masked different counts.
    _equivalent("dinov2 centres", gloo_records, single_records)
    masks = dinov2_masks("dinov2_ema")  # the whole batch's (2N, n), in this process
    per_rank = [int(masks[:N].chunk(gh.WORLD)[r].sum() + masks[N:].chunk(gh.WORLD)[r].sum())
                for r in range(gh.WORLD)]
    assert per_rank[0] != per_rank[1], per_rank
    centres = gloo_records["dinov2 centres"][0]["same"]
    assert centres[:32].abs().max() > 1e-3 and centres[32:].abs().max() > 1e-3


# ---------------------------------------- Colorization ----------------------------------------


def test_colorization_counts_every_workers_colours(gloo_records, single_records):
    # Every rank holds the counts of the whole global batch, as 1 process on all of it; naive
    # reference: the nearest bin of every pixel of both batches, at a quarter of the view.
    from raysl.methods.colorization import rgb_to_lab

    _equivalent("colorization counts", gloo_records, single_records)
    centres = build("colorization").centres
    expected = torch.zeros(len(centres), dtype=torch.float64)
    for seed in (1, 2):
        lab = rgb_to_lab(colour_batch(seed)[1].float() / 255)
        ab = F.interpolate(lab[:, 1:], size=(8, 8), mode="area").permute(0, 2, 3, 1)
        for colour in ab.reshape(-1, 2):
            expected[int(torch.cdist(colour[None], centres).argmin())] += 1
    for record in gloo_records["colorization counts"]:
        torch.testing.assert_close(record["same"], expected, rtol=0, atol=0)


# ---------------------------------------- DeepCluster -----------------------------------------


def test_kmeans_across_workers_equals_one_process_on_all_features(gloo_records, single_records):
    # PCA statistics and every k-means update all-reduced, the initial centroids and re-seeding
    # drawn by index: the assignment is the single process's, row for row.
    _equivalent("kmeans", gloo_records, single_records)
    assignment = single_records["kmeans"]["same"][:60]
    assert (assignment >= 0).all() and len(assignment.unique()) == 5  # 5 clusters, all used


def test_deepcluster_reassignment_across_workers_equals_one_process(gloo_records,
                                                                    single_records):
    _equivalent("deepcluster epoch", gloo_records, single_records)
    assignment = single_records["deepcluster epoch"]["same"][:30]
    assert (assignment >= 0).all() and len(assignment.unique()) > 1


def test_swav_queues_are_checkpointed_per_worker_and_taken_back(gloo_records, single_records):
    # The reference saves queue<rank>.pth per worker; a resumed run of the same size goes on
    # with every worker's own queue, not rank 0's everywhere.
    _equivalent("swav worker state", gloo_records, single_records)
    assert single_records["swav worker state"]["same"].tolist() == [1.0, 0.0, 1.0]


def test_worker_state_from_another_world_size_is_not_taken():
    method = build("swav_queue")
    gathered = {"queue": torch.zeros(2, *method.queue.shape), "queued": torch.tensor([8, 8]),
                "world": torch.tensor(2)}
    assert not take_worker_state(method, gathered, 0, 1)
    resized = {**gathered, "queue": torch.zeros(1, 2, 3, 4), "world": torch.tensor(1)}
    assert not take_worker_state(method, resized, 0, 1)  # method.queue_length changed
    assert build("moco_v2").worker_state() == {}  # a global queue: nothing per worker
