"""DDP in the trainer: 2 CPU processes (gloo, loopback) under a real ``torchrun`` against one process
with the same global batch; plus the sharding helpers and the sharded loaders without a process group.

The multi-process part launches this very file as the torchrun worker (``__main__`` below), so the
test stays one self-contained file. The model has no dropout and the data no augmentation: then
DDP differs from one process only by float summation order, and the comparison can be tight.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))  # the shared helper, whatever pytest's import mode
from _resume_script import SPECS, SyntheticMemes, TinyModel

from memeops.data.features import BatchedDataset
from memeops.models.base import ModelOutput
from memeops.training import TrainConfig, fit, seed_everything, strip_timing
from memeops.training import distributed as ddp
from memeops.training.distributed import SINGLE, DistContext
from memeops.training.inference import make_loader

pytestmark = pytest.mark.usefixtures("torch_globals")  # conftest: deterministic mode and threads restored

N_TRAIN, N_VAL, BATCH = 65, 40, 16  # 5 global batches, the last of 1 sample (a rank gets a stand-in)
EPOCHS = 4
WORLD = 2


class BatchedMemes(BatchedDataset):
    """SyntheticMemes served whole batches at a time (the trainer's ``dataset[list_of_indices]`` path)."""

    def __init__(self, n: int, seed: int):
        self.base = SyntheticMemes(n, seed=seed)
        self.meme_ids = [f"m{i:04d}" for i in range(n)]

    def batch(self, indices):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        b = self.base
        return {
            "x": b.x[idx],
            "targets": {"hateful": b.hateful[idx], "sentiment": b.sentiment[idx], "target": b.target[idx]},
            "meme_id": [self.meme_ids[i] for i in idx.tolist()],
        }


def config(**overrides) -> TrainConfig:
    # checkpoint_every_s=0: a checkpoint after every epoch (the resume case crashes after epoch 2)
    base = {"epochs": EPOCHS, "batch_size": BATCH, "lr": 1e-2, "warmup_epochs": 1, "patience": 10, "monitor": "loss",
            "monitor_mode": "min", "seed": 5, "threads": 1, "checkpoint_every_s": 0}  # fmt: skip
    return TrainConfig(**{**base, **overrides})


class GateInLoss(TinyModel):
    """TinyModel whose gate also enters the (aux) loss: every parameter gets a gradient, so DDP runs
    with its default ``find_unused_parameters=False``."""

    def forward(self, batch: dict) -> ModelOutput:
        out = super().forward(batch)
        return ModelOutput(
            out.logits, aux_loss=out.aux_loss + 1e-2 * out.extras["gate"].mean(), extras=out.extras
        )


def new_model(cfg: TrainConfig, kind: str) -> nn.Module:
    """``batched``: :class:`GateInLoss`; ``collate``: the plain TinyModel, whose gate is not in the
    loss (the worker sets MEMEOPS_DDP_FIND_UNUSED=1 for it). No dropout either way: one process
    and DDP then see the same maths."""
    seed_everything(cfg.seed)
    model = GateInLoss() if kind == "batched" else TinyModel()
    model.trunk[2] = nn.Identity()
    return model


def datasets(kind: str):
    if kind == "batched":
        return BatchedMemes(N_TRAIN, seed=1), BatchedMemes(N_VAL, seed=2)
    return SyntheticMemes(N_TRAIN, seed=1), SyntheticMemes(N_VAL, seed=2)


def run(kind: str, run_dir: Path, callbacks=(), distributed: DistContext | None = None) -> dict:
    cfg = config()
    model = new_model(cfg, kind)
    train, val = datasets(kind)
    result = fit(model, train, val, SPECS, cfg, run_dir, callbacks=callbacks, distributed=distributed)
    return {
        "history": strip_timing(result.history),
        "best_epoch": result.best_epoch,
        "best_value": result.best_value,
        "resumed_from": result.resumed_from,
        "params": {k: v.detach().cpu().flatten().tolist() for k, v in model.state_dict().items()},
    }


# --------------------------------------------------------------------------- the torchrun worker


class StopAt:
    """Raised on every rank at the end of an epoch (before its checkpoint): a crash to resume from."""

    all_ranks = True

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def worker(out_dir: Path) -> None:
    torch.set_num_threads(1)
    ctx = ddp.init_from_env("cpu")
    assert ctx.enabled and ctx.backend == "gloo", ctx
    own = out_dir / f"rank{ctx.rank}"  # rank 1's run dirs must stay untouched
    results = {}
    results["batched"] = run("batched", own / "batched")
    os.environ[ddp.FIND_UNUSED_ENV] = "1"  # TinyModel's gate is outside the loss
    results["collate"] = run("collate", own / "collate")
    del os.environ[ddp.FIND_UNUSED_ENV]
    # crash after epoch 2 (checkpoint holds epoch 1 on rank 0 only), then resume from it
    try:
        run("batched", own / "resumed", callbacks=[StopAt(2)])
    except KeyboardInterrupt:
        pass
    results["resumed"] = run("batched", own / "resumed")
    results["rank_dir_files"] = (
        sorted(str(p.relative_to(own)) for p in own.rglob("*")) if own.exists() else []
    )
    ddp.cleanup(ctx)
    (out_dir / f"rank{ctx.rank}.json").write_text(json.dumps(results))


# --------------------------------------------------------------------------- tests


def test_shard_helpers_are_disjoint_cover_all_and_keep_order() -> None:
    for n in range(13):
        for world in (1, 2, 3, 4):
            batch = list(range(100, 100 + n))
            pieces = [ddp.shard_batch(batch, r, world) for r in range(world)]
            assert list(chain(*pieces)) == batch  # disjoint, covering, in order
            assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
            assert [len(p) for p in pieces] == ddp.shard_sizes(n, world)
            blocks = [list(ddp.block_range(n, r, world)) for r in range(world)]
            assert list(chain(*blocks)) == list(range(n))
    batches = [[5, 3, 9, 1], [0, 2, 7], [8]]
    per_rank = [ddp.shard_batches(batches, r, 2) for r in range(2)]
    assert per_rank == [[[5, 3], [0, 2], [8]], [[9, 1], [7], []]]
    assert all(len(p) == len(batches) for p in per_rank)  # same step count on every rank
    assert per_rank == [ddp.shard_batches(batches, r, 2) for r in range(2)]  # deterministic


@pytest.mark.parametrize("kind", ["batched", "collate"])
def test_sharded_loaders_split_the_one_process_batches(kind: str) -> None:
    """Without a process group: rank r's loader (same seed) yields the r-th piece of each of the
    one-process loader's global batches for training, a block of whole batches for evaluation."""
    train, _ = datasets(kind)
    collate = None

    def ids(loader):
        return [list(b["meme_id"]) for b in loader]

    def build(shuffle: bool, ctx: DistContext):
        return make_loader(train, BATCH, shuffle=shuffle, generator=torch.Generator().manual_seed(7),
                           collate_fn=collate, num_workers=0, device=torch.device("cpu"), dist_ctx=ctx)

    for shuffle in (True, False):
        torch.manual_seed(0)
        single = ids(build(shuffle, SINGLE))
        ranks = []
        for r in range(WORLD):
            torch.manual_seed(0)
            ranks.append(ids(build(shuffle, DistContext(rank=r, world_size=WORLD))))
        if shuffle:
            assert single != sorted(single)
            assert all(len(r) == len(single) for r in ranks)  # one step per global batch
            assert ranks[1][-1] == single[-1]  # the last batch has 1 item: rank 1 gets it as a stand-in
            joined = [a + b for a, b in zip(ranks[0][:-1], ranks[1][:-1])] + [ranks[0][-1]]
            assert joined == single
        else:
            assert ranks[0] + ranks[1] == single  # rank-order concatenation is dataset order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # torchrun + 2 workers + the reference: ~30-40 s on 2 shared cores
def test_two_process_ddp_matches_one_process(tmp_path: Path, subprocess_env: dict) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nnodes", "1", "--nproc-per-node", str(WORLD), "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(Path(__file__)), "--worker", str(tmp_path)]  # fmt: skip
    env = {**subprocess_env, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env["PYTHONPATH"]])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # the one-process reference runs meanwhile (2 shared cores: the workers mostly wait on each other)
    single = {
        kind: run(kind, tmp_path / f"single-{kind}", distributed=SINGLE) for kind in ("batched", "collate")
    }
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{out}\n{err}"
    ddp_seconds = time.perf_counter() - start
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert not (Path(subprocess_env["MEMEOPS_NETGUARD_LOG"])).exists()  # loopback only

    # every rank: same history, decisions and bit-identical parameters
    for key in ("batched", "collate", "resumed"):
        assert json.dumps(ranks[0][key], sort_keys=True) == json.dumps(ranks[1][key], sort_keys=True), key
    assert ranks[1]["rank_dir_files"] == []  # only rank 0 writes checkpoints
    assert any("checkpoints/best.safetensors" in f for f in ranks[0]["rank_dir_files"])

    # DDP (global batch 16 = 2 x 8) vs one process (batch 16)
    diffs = {}
    for kind in ("batched", "collate"):
        one, two = single[kind], ranks[0][kind]
        assert len(one["history"]) == len(two["history"]) == EPOCHS
        for a, b in zip(one["history"], two["history"]):
            assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4)
            assert b["val/loss"] == pytest.approx(a["val/loss"], rel=1e-4)
            assert b["train/lr"] == pytest.approx(a["train/lr"], rel=1e-12)
        assert one["best_epoch"] == two["best_epoch"]
        for name, values in one["params"].items():
            np.testing.assert_allclose(two["params"][name], values, rtol=1e-4, atol=1e-5, err_msg=name)
        diffs[kind] = max(abs(b["train/loss"] - a["train/loss"]) / abs(a["train/loss"])
                          for a, b in zip(one["history"], two["history"]))  # fmt: skip
        diffs[kind + "_params"] = max(float(np.max(np.abs(np.subtract(two["params"][k], v))))
                                      for k, v in one["params"].items())  # fmt: skip
    # a DDP run killed after epoch 2 and resumed (state broadcast from rank 0) ends as the uninterrupted one
    assert ranks[0]["resumed"]["resumed_from"] == 1
    uninterrupted, resumed = dict(ranks[0]["batched"]), dict(ranks[0]["resumed"])
    uninterrupted.pop("resumed_from"), resumed.pop("resumed_from")
    assert json.dumps(resumed, sort_keys=True) == json.dumps(uninterrupted, sort_keys=True)
    print(f"\nDDP vs 1 process: max rel train-loss diff {diffs}; torchrun wall {ddp_seconds:.1f}s")
    assert all(math.isfinite(v) for v in diffs.values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=Path, required=True)
    worker(parser.parse_args().worker)
