"""The function every Ray Train worker runs: plain torch from pipeline/, plus a few marked Ray lines."""

from __future__ import annotations

import math
import tempfile
import time


def _batches(iterator, batch_size: int, image_size: int, shuffle_seed: int | None):
    """(images, labels) tensors from a Ray Data iterator of {crop, label} rows."""
    import torch

    from pipeline import schema
    from pipeline.cellsets import MIX_ROWS
    from pipeline.training import decode_crops

    # Each block mixes a random group of shards (jobs/train.py) and comes in a new order every epoch,
    # but a group's classes and patients are not the whole set's: a buffer of one block still skewed
    # every batch towards its block (on PBC class folders the biggest class of a batch of 32 held 25%
    # of it, against 22% for batches drawn at random). A buffer of a few blocks gives that 22%; it
    # fills before the first batch, from the object store when the crops are cached.
    kwargs = (
        {"local_shuffle_buffer_size": max(2 * MIX_ROWS, 8 * batch_size), "local_shuffle_seed": shuffle_seed}
        if shuffle_seed is not None
        else {}
    )
    # Prefetch a few batches so reading and decoding overlap the previous training step.
    for batch in iterator.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=4, **kwargs):
        yield decode_crops(list(batch[schema.CROP]), image_size), torch.as_tensor(batch[schema.LABEL])


def choose_threads(node_cpus: float, local_workers: int, spare_cpus: float) -> int:
    """Torch threads of a training worker when no --cpus-per-worker was given: its node's CPUs,
    less `spare_cpus` for the data tasks, shared with the other workers on that node.

    Ray places each worker with at most one CPU (jobs.train.resolve_cpus_per_worker), but the
    cores beside it sit idle while it trains: one worker on a 2-core machine runs 2 threads (1.9x
    the samples/s of one, ResNet-18 at 64 px), two there run one each. The reservation stays one
    CPU: with 1.5 CPUs reserved and 2 threads, the data tasks left 0.5 CPU delivered batches in a
    timing-dependent order (a seeded run was not reproduced; tests/test_jobs.py)."""
    return max(1, round((node_cpus - spare_cpus) / max(local_workers, 1)))


def _node_cpus() -> float:
    """The CPUs Ray gives this worker's node (1 when it cannot be read)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return next((float(n["Resources"].get("CPU", 1)) for n in ray.nodes() if n["NodeID"] == node), 1.0)


def train_worker(cfg: dict) -> None:
    """Train cfg["meta"] (a CheckpointMeta: model, input size, classes) for cfg["epochs"] epochs,
    reporting metrics and a checkpoint every epoch."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from pipeline.checkpoint import load_training_state, save_checkpoint
    from pipeline.models import build_model, count_parameters
    from pipeline.multiclass import PartialLabelCriterion, class_metrics, evaluate_multiclass
    from pipeline.training import augment, evaluate, train_one_epoch

    ctx = ray.train.get_context()
    threads = cfg["threads"] or choose_threads(_node_cpus(), ctx.get_local_world_size(), cfg["spare_cpus"])
    torch.set_num_threads(threads)
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg["seed"] * 1000 + rank)
    base_meta = cfg["meta"]
    image_size, class_names = base_meta.image_size, base_meta.class_names
    model = build_model(base_meta.model_name, image_size, cfg["weights"], num_classes=base_meta.n_outputs)
    # One logit: binary cross-entropy as ever; K classes: softmax with partial labels (bit-mask targets).
    criterion = None if base_meta.is_binary else PartialLabelCriterion(len(class_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    start_epoch, resumed_from = 0, None
    checkpoint = ray.train.get_checkpoint()  # Ray: set when resuming or restarting after a failure
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state, opt_state, meta = load_training_state(d)
        model.load_state_dict(state)
        start_epoch = resumed_from = meta.epoch + 1
    params = count_parameters(model)
    model = ray.train.torch.prepare_model(model)  # Ray: device placement + DDP
    if checkpoint is not None and opt_state is not None:
        # After the move to the device: Adam's state is cast to where the parameters are now.
        optimizer.load_state_dict(opt_state)
    plain = model.module if hasattr(model, "module") else model
    train_shard = ray.train.get_dataset_shard("train")  # Ray: this worker's share of the crops
    val_data = ray.train.get_dataset_shard("val")  # not split: rank 0 scores all of it
    # On the CPU even with --gpu: augment() draws its random numbers there and moves them over.
    generator = torch.Generator().manual_seed(cfg["seed"] * 7919 + rank)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")

    for epoch in range(start_epoch, cfg["epochs"]):
        started = time.perf_counter()
        # Cosine decay from the formula, not a scheduler object: a resumed run lands on the same lr,
        # and the late small steps settle batch-norm models (VGG swings at a constant 1e-3).
        for group in optimizer.param_groups:
            group["lr"] = cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg["epochs"]))
        batches = _batches(train_shard, cfg["batch_size"], image_size, shuffle_seed=cfg["seed"] + epoch * 131 + rank)
        stats = train_one_epoch(model, batches, optimizer, device, scaler=scaler,
                                transform=lambda x: augment(x, generator), criterion=criterion)  # fmt: skip
        # On the worker's device: nccl (--gpu) reduces CUDA tensors only.
        totals = torch.tensor([(stats.loss or 0.0) * stats.n, (stats.acc or 0.0) * stats.n, stats.n, stats.seconds],
                              dtype=torch.float64, device=device)  # fmt: skip
        if world > 1:
            seconds = totals[3].clone()
            dist.all_reduce(totals)  # gloo/nccl: sums over workers
            totals[3] = seconds  # all workers run in parallel: keep this worker's wall time
        n = int(totals[2])
        result = None
        if rank == 0:
            val_batches = _batches(val_data, 256, image_size, None)
            result = (
                evaluate(plain, val_batches, device)
                if criterion is None
                else evaluate_multiclass(plain, val_batches, device, class_names)
            )
        shared = [result.metrics() if result is not None else None,
                  result.confusion() if result is not None else None]  # fmt: skip
        if world > 1:
            dist.broadcast_object_list(shared, src=0)
        val, confusion = shared
        per_class = class_metrics(confusion, class_names)
        seconds = time.perf_counter() - started
        metrics = {
            "arch": cfg["arch"], "fold": cfg["fold"], "epoch": epoch,
            "train_loss": totals[0].item() / n if n else None, "train_acc": totals[1].item() / n if n else None,
            "val_loss": val["loss"], "val_acc": val["acc"], "val_sensitivity": val["sensitivity"],
            "val_specificity": val["specificity"], "val_auc": val["auc"],
            "val_balanced_acc": per_class["balanced_accuracy"], "val_macro_f1": per_class["macro_f1"],
            "val_per_class": per_class["per_class"],
            "val_score": val["acc"] if val["acc"] is not None else -1.0,
            "seconds": seconds, "samples_per_s": n / stats.seconds if stats.seconds > 0 else 0.0,
            "n_train": n, "n_val": val["n"], "resumed_from": resumed_from, "threads": threads,
        }  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                meta = base_meta.replace(epoch=epoch, metrics=metrics, params=params, confusion=confusion)
                save_checkpoint(tmp, plain.state_dict(), meta, optimizer.state_dict())
                ckpt = ray.train.Checkpoint.from_directory(tmp)
                cfg["queue"].put(metrics)
            ray.train.report(metrics, checkpoint=ckpt)  # Ray: every worker reports each epoch
