"""The training loop every learned model uses: DDP under torchrun, AdamW with warm-up + cosine decay,
gradient clipping, EMA, atomic checkpoints (model, EMA, optimizer, scheduler, RNG, step) with resume,
a progress bar with throughput, periodic evaluation images, optional TensorBoard, and a final
``save_pretrained`` folder of the EMA weights."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from dataclasses import field as option
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import (
    atomic_write_text,
    environment_info,
    find_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from ..pretrained import save_pretrained
from ..threads import ThreadGovernor
from .data import sample_batch
from .distributed import DistInfo, all_reduce_mean, barrier
from .ema import EMA


@dataclass
class TrainConfig:
    """Options shared by every ``fewview train`` model (each field is a command-line option)."""

    data: str = option(default="", metadata={"help": "fewview-objects folder, or CO3D root with --data-format co3d"})
    data_format: str = option(default="objects", metadata={"help": "objects | co3d"})
    categories: str = option(default="", metadata={"help": "CO3D categories, comma-separated"})
    limit_scenes: int = option(default=0, metadata={"help": "use only the first N training scenes (0: all)"})
    init: str = option(
        default="", metadata={"help": "start from the weights of this pretrained folder or shipped model (fine-tuning)"}
    )
    steps: int = option(default=2000, metadata={"help": "optimisation steps"})
    batch_size: int = option(default=8, metadata={"help": "scenes per step (global, over all processes)"})
    context_min: int = option(default=2, metadata={"help": "fewest context views per scene"})
    context_max: int = option(default=5, metadata={"help": "most context views per scene (SparseFusion: 2-5)"})
    rays: int = option(default=256, metadata={"help": "query rays per scene per step"})
    lr: float = option(default=5e-4, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = option(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup: int = option(default=100, metadata={"help": "linear warm-up steps"})
    final_lr_ratio: float = option(default=0.1, metadata={"help": "cosine decay ends at lr x this"})
    grad_clip: float = option(default=1.0, metadata={"help": "gradient norm clip (0: off)"})
    ema_decay: float = option(default=0.999, metadata={"help": "EMA decay per step"})
    background: float = option(default=1.0, metadata={"help": "grey level behind masked objects"})
    checkpoint_every: int = option(default=250, metadata={"help": "checkpoint every N steps"})
    eval_every: int = option(default=250, metadata={"help": "write evaluation images every N steps (0: never)"})
    save_dtype: str = option(
        default="float32",
        metadata={"help": "dtype of the final pretrained weights: float32 | float16 (half the file size)"},
    )
    tensorboard: bool = option(default=False, metadata={"help": "also log to OUT/tensorboard (needs tensorboard)"})
    device: str = option(default="auto", metadata={"help": "cpu, cuda or auto"})
    seed: int = option(default=0, metadata={"help": "random seed (data order, initialisation)"})


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / max(cfg.warmup, 1)
        p = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 1.0)
        return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def make_source(cfg: TrainConfig, split: str, res: int | None = None, depth: bool = False,
                self_training: dict | None = None, group: str = "all"):  # fmt: skip
    """The training data of ``cfg``. ``self_training`` (:class:`SelfTrainingSource`'s options: multi-view group,
    single-view group and source) pairs set A with the one-view-per-object set B (Real3D); ``group`` keeps only
    fewview-objects' household or parametric objects."""
    from .data import CO3DSource, ObjectsSource, SelfTrainingSource

    if not cfg.data:
        raise ValueError("give --data: a fewview-objects folder (`fewview data objects`) or a CO3D root")
    if self_training is not None:
        if cfg.data_format != "objects" or depth:
            raise ValueError("self-training reads a fewview-objects folder (household objects are set B)")
        return SelfTrainingSource(cfg.data, split, seed=cfg.seed, limit=cfg.limit_scenes or None, **self_training)
    if cfg.data_format == "objects":
        return ObjectsSource(cfg.data, split, cfg.limit_scenes or None, depth=depth, group=group)
    if group != "all":
        raise ValueError(f"object group {group!r} needs fewview-objects data")
    if cfg.data_format == "co3d":
        if depth:
            raise ValueError("this model trains on depth maps, which only fewview-objects data has")
        cats = [c for c in cfg.categories.split(",") if c]
        lists = {"train": ("fewview_train", "train"), "val": ("fewview_dev", "val")}
        subset, part = lists.get(split, ("fewview_dev", "test"))
        return CO3DSource(cfg.data, cats, subset, part, res=res or 64)
    raise ValueError(f"unknown data format {cfg.data_format!r}: choose objects or co3d")


class Trainer:
    """Trains ``model`` (its ``forward(batch)`` returns ``(loss, logs)``) into ``out``."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, source, out: str | Path | None, info: DistInfo,
                 eval_source=None, samples_per_ray: int | None = None):  # fmt: skip
        self.cfg, self.info, self.source, self.eval_source = cfg, info, source, eval_source
        self.out = Path(out) if out is not None else None
        if cfg.init:  # fine-tuning: same model type, same parameter shapes (a resumed run overrides these)
            from ..pretrained import from_pretrained, resolve_model_dir

            start = from_pretrained(resolve_model_dir(cfg.init))
            if start.model_name != model.model_name:
                raise ValueError(f"--init {cfg.init} holds a {start.model_name} model, not {model.model_name}")
            model.load_state_dict(start.state_dict())
        self.model = model.to(info.device)
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [info.device.index] if info.device.type == "cuda" else None
            # Models whose loss leaves some parameters unused (the EFT's feature head) say so.
            unused = getattr(self.model, "loss_leaves_parameters_unused", False)
            self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=unused)
        else:
            self.net = self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.ema = EMA(self.model, cfg.ema_decay)
        mc = model.config
        self.samples = samples_per_ray or getattr(mc, "samples_coarse", None) or getattr(mc, "points", 1)
        self.step = 0
        self.history: list[dict] = []
        self._tb = None

    # ------------------------------------------------------------- checkpoints
    def save(self) -> None:
        if self.out is None or not self.info.is_main:
            return
        meta = {
            "step": self.step,
            "model": self.model.model_name,
            "model_config": asdict(self.model.config),
            "train_config": asdict(self.cfg),
            "scheduler": self.sched.state_dict(),
            "world_size": self.info.world_size,
            "history": self.history,
        }
        save_checkpoint(self.out / "checkpoint", {"model": self.model.state_dict(), "ema": self.ema.state_dict()},
                        meta, self.opt)  # fmt: skip

    def try_resume(self) -> bool:
        ck = None if self.out is None else find_checkpoint(self.out / "checkpoint")
        if ck is None:
            return False
        groups, meta = read_checkpoint(ck)
        if meta.get("model") != self.model.model_name:
            raise ValueError(f"{ck} holds a {meta.get('model')} run, not {self.model.model_name}")
        groups, meta = load_checkpoint(ck, self.opt)
        self.model.load_state_dict(groups["model"])
        self.ema.load_state_dict(groups["ema"])
        self.ema.updates = meta["step"]  # one EMA update per step
        self.sched.load_state_dict(meta["scheduler"])
        self.step = meta["step"]
        self.history = meta.get("history", [])
        return True

    # -------------------------------------------------------------------- loop
    def train_step(self) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        self.model.train()
        ctx = (cfg.context_min, cfg.context_max)
        batch = sample_batch(self.source, cfg.seed, self.step, cfg.batch_size, ctx, cfg.rays, self.samples,
                             cfg.background, info.rank, info.world_size)  # fmt: skip
        single = getattr(self.source, "single_view", None)
        if single is not None:  # self-training: the same number of single-view objects, their one view as query
            batch.single = sample_batch(single, cfg.seed + 1, self.step, cfg.batch_size, (0, 0), cfg.rays,
                                        self.samples, cfg.background, info.rank, info.world_size)  # fmt: skip
        batch.progress = self.step / max(cfg.steps, 1)
        batch = batch.to(info.device)
        loss, logs = self.net(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.opt.step()
        self.sched.step()
        self.ema.update(self.model)
        self.step += 1
        logs["loss"] = float(loss.detach())
        logs["lr"] = self.sched.get_last_lr()[0]
        return logs

    def run(self, progress: bool = True, callback=None) -> nn.Module:
        from tqdm import tqdm

        cfg, info = self.cfg, self.info
        self.try_resume()
        if self.out is not None and info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            meta = {"model": self.model.model_name, "model_config": asdict(self.model.config),
                    "train_config": asdict(cfg), "world_size": info.world_size, "env": environment_info()}  # fmt: skip
            atomic_write_text(self.out / "config.json", json.dumps(meta, indent=1, default=str))
            if cfg.tensorboard:
                self._tb = _tensorboard(self.out / "tensorboard")
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (progress and info.is_main),
                   desc=f"train {self.model.model_name}", unit="step", dynamic_ncols=True)  # fmt: skip
        t0, n0 = time.perf_counter(), self.step
        governor = ThreadGovernor()
        try:
            while self.step < cfg.steps:
                governor.update()
                logs = self.train_step()
                bar.update(1)
                if self.step % 10 == 0 or self.step == cfg.steps:
                    logs = all_reduce_mean(logs, info)
                    el = time.perf_counter() - t0
                    rate = (self.step - n0) * cfg.batch_size / max(el, 1e-9)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", scenes_s=f"{rate:.1f}",
                                    rays_s=f"{rate * cfg.rays:.0f}")  # fmt: skip
                    self.history.append({"step": self.step, "time": el, "scenes_per_s": rate,
                                         "threads": governor.threads, **logs})  # fmt: skip
                    if self._tb is not None:
                        for k, v in logs.items():
                            self._tb.add_scalar(k, v, self.step)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and info.is_main and self.out is not None:
                    self.write_eval_images()
                if callback is not None:
                    callback(self)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                    barrier(info)
        finally:
            governor.restore()
        bar.close()
        if hasattr(self.ema.model, "calibrate"):  # data-derived constants (the VAE's latent scale)
            self.ema.model.calibrate(self.source)
        if self.out is not None and info.is_main:
            extra = {"trained_steps": self.step, "image_size": getattr(self.source, "res", None),
                     "train_config": asdict(cfg), "env": environment_info()}  # fmt: skip
            save_pretrained(self.ema.model, self.out / "pretrained", extra, dtype=cfg.save_dtype)
        return self.ema.model

    @torch.no_grad()
    def write_eval_images(self, n: int = 2) -> Path | None:
        """[context views | EMA prediction | ground truth] for ``n`` fixed held-out scenes."""
        src = self.eval_source or self.source
        model = self.ema.model
        if not hasattr(model, "render") and not hasattr(model, "eval_grid"):
            return None
        from PIL import Image

        from ..evaluation import to_uint8

        rows = []
        batch = sample_batch(src, 12345, 0, n, (self.cfg.context_min, self.cfg.context_min), None, 1,
                             self.cfg.background).to(self.info.device)  # fmt: skip
        if hasattr(model, "eval_grid"):  # models that are not renderers draw their own rows
            rows = [model.eval_grid(batch).cpu()]
        for b in range(n if not rows else 0):
            pred = model.render(batch.context[b], batch.context_cameras(b), batch.query_camera(b))["rgb"]
            tiles = list(batch.context[b]) + [pred, batch.query[b]]
            rows.append(torch.cat(tiles, -1).cpu())
        path = self.out / "eval" / f"step_{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(torch.cat(rows, -2))).save(path)
        if self._tb is not None:
            self._tb.add_image("eval", torch.cat(rows, -2), self.step)
        return path


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # tensorboard is optional
        print(f"tensorboard logging off: {e}")
        return None
    return SummaryWriter(str(folder))
