"""Self-supervised pretraining (SimCLR) of a backbone on unlabelled, aligned heads.

Two random views of each head (the batched affine augmentation, stronger than for
supervised training) are pulled together and pushed away from the other heads of the batch
(NT-Xent loss on a small projection head). The backbone's weights are saved without its
classifier, so `spermhead train --weights FILE` starts from them.

Labels are never read. Which images go in is the caller's choice, and it matters for honest
numbers: pretraining on a dataset's own test folds (even without labels) lets the features
see them, so pretrain on the *other* dataset plus synthetic heads (as benchmarks/RESULTS.md
did for HuSHeM).

    spermhead pretrain --sources scian-pa,synthetic --out weights/ssl.safetensors
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spermhead.config import PreprocessConfig, environment
from spermhead.data.duplicates import signatures
from spermhead.errors import ConfigError
from spermhead.models.weights import write_safetensors
from spermhead.serving.bundle import pretrained_images_file, save_training_signatures
from spermhead.training.augment import AugmentSpec, augment_batch
from spermhead.training.devices import resolve_accelerator, trainer_device
from spermhead.training.quiet import fit_quietly, quiet_trainer

# Views differ more than supervised augmentation would allow: the task is to find what
# survives rotation, scale, shift and stain changes.
VIEW_SPEC = AugmentSpec(rotate_deg=25, shift=0.12, zoom=0.25, hflip=True, vflip=True,
                        brightness=0.4, contrast=0.4, noise=0.05)


@dataclass
class PretrainConfig:
    sources: tuple[str, ...] = ("scian-pa", "synthetic")  # dataset names or folders; "synthetic"
    data_dir: str | None = None
    out: str = "weights/ssl.safetensors"
    seed: int = 0
    model: str = "spermnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    synthetic: int = 2000  # synthetic heads added when "synthetic" is a source
    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection_dim: int = 64
    num_threads: int = 0
    accelerator: str = "auto"  # auto | cpu | gpu (training/devices.py)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the other 2N - 1 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def headless(model: nn.Module) -> nn.Module:
    """The model with its classifier replaced by the identity: it returns pooled features."""
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(0)
    elif isinstance(getattr(model, "fc", None), nn.Linear):
        model.fc = nn.Identity()
    else:
        raise ConfigError(f"pretrain: {type(model).__name__} has no classifier layer to set aside, which "
                          "pretraining needs; it takes spermnet and timm: models (the seed's nets are not supported)")
    return model


class SimCLRModule(L.LightningModule):
    def __init__(self, backbone: nn.Module, features: int, cfg: PretrainConfig, mean: float, std: float,
                 steps_per_epoch: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True),
                                        nn.Linear(features, cfg.projection_dim))
        self.cfg = cfg
        self.mean, self.std = mean, std
        self.steps_per_epoch = steps_per_epoch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        x = x.float().div_(255)
        views = [(augment_batch(x, VIEW_SPEC) - self.mean) / self.std for _ in range(2)]
        z = self.projection(self.backbone(torch.cat(views)))
        loss = nt_xent(z[: len(x)], z[len(x):], self.cfg.temperature)
        self.log("ssl_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        total = self.cfg.epochs * self.steps_per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.cfg.lr, total_steps=total,
                                                    pct_start=min(0.3, 5 / max(self.cfg.epochs, 1)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def pooled_images(cfg: PretrainConfig) -> tuple[np.ndarray, dict[str, int], list[Path]]:
    """Canonical uint8 images of every source (N x C x S x S), how many each gave, and the files
    of the real ones (the synthetic heads have none)."""
    from spermhead.data.readers import load_dataset
    from spermhead.preprocess.align import canonicalize, canonicalize_paths

    parts, counts, files = [], {}, []
    for source in cfg.sources:
        if source == "synthetic":
            from spermhead.data.synthetic import LABELS, render_head

            rng = np.random.default_rng(cfg.seed)
            styles, labels = ("hushem", "scian"), sorted(LABELS)
            imgs = [canonicalize(render_head(labels[i % len(labels)], styles[i % 2], rng)[0], cfg.preprocess).image
                    for i in range(cfg.synthetic)]
            parts.append(np.stack(imgs))
        else:
            table = load_dataset(source, cfg.data_dir)
            parts.append(canonicalize_paths([s.path for s in table.samples], cfg.preprocess)[0])
            files += [s.path for s in table.samples]
        counts[source] = len(parts[-1])
    return np.concatenate(parts), counts, files


def check_config(cfg: PretrainConfig, overwrite: bool = False) -> None:
    """Refuse settings that cannot work before any image is read."""
    if Path(cfg.out).is_dir():
        raise ConfigError(f"--out {cfg.out}: is a folder; give a file name (*.safetensors)")
    if Path(cfg.out).exists() and not overwrite:
        raise ConfigError(f"--out {cfg.out}: exists; pass --overwrite to replace it")
    if not cfg.sources:
        raise ConfigError("pretraining needs at least one source (a dataset, a folder or 'synthetic')")
    if Path(cfg.out).suffix != ".safetensors":
        raise ConfigError(f"{cfg.out}: the weights are written as safetensors; name the file *.safetensors")
    if cfg.preprocess.color not in ("gray", "rgb"):
        raise ConfigError(f"--color {cfg.preprocess.color!r}: gray or rgb")
    resolve_accelerator(cfg.accelerator)  # an unknown name, or a GPU that is not there
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs {cfg.epochs}: must be at least 1")
    if cfg.batch_size < 2:
        raise ConfigError(f"--batch-size {cfg.batch_size}: must be at least 2 (contrastive pairs)")
    if "synthetic" in cfg.sources and cfg.synthetic < 2:
        raise ConfigError(f"--synthetic {cfg.synthetic}: the synthetic source needs at least 2 heads")


def pretrain(cfg: PretrainConfig, progress: bool = True, overwrite: bool = False) -> Path:
    """Run SimCLR and write the backbone to `cfg.out` (safetensors) with a JSON record beside it;
    an existing file is replaced only with `overwrite`."""
    from spermhead.models.registry import build_model

    check_config(cfg, overwrite)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    start = time.perf_counter()
    images, counts, files = pooled_images(cfg)
    in_chans = images.shape[1]
    x = images.astype(np.float32) / 255
    mean, std = float(x.mean()), float(x.std() + 1e-6)
    # 10 classes is a placeholder: the classifier is dropped before training and never saved
    backbone = headless(build_model(cfg.model, num_classes=10, in_chans=in_chans,
                                    image_size=cfg.preprocess.image_size, drop_rate=0.0,
                                    **cfg.model_kwargs))
    features = int(backbone.num_features)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(images)),
                                         batch_size=min(cfg.batch_size, len(images)), shuffle=True,
                                         drop_last=True, generator=generator)
    module = SimCLRModule(backbone, features, cfg, mean, std, len(loader))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    trainer = quiet_trainer(max_epochs=cfg.epochs, **trainer_device(cfg.accelerator), logger=False,
                        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                        default_root_dir=str(out.parent))
    fit_quietly(trainer, module, loader)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    write_safetensors(state, out, metadata={"spermhead": f"ssl-backbone {cfg.model}"})
    # without labels, but it has seen these images: `train --weights` says so when they are its test folds
    seen = pretrained_images_file(out)
    if files:
        save_training_signatures(seen, signatures(files))
    else:
        seen.unlink(missing_ok=True)  # an older file's, from real sources this run did not read
    record = {"config": asdict(cfg), "images": counts, "mean": mean, "std": std,
              "final_loss": float(trainer.callback_metrics.get("ssl_loss", float("nan"))),
              "wall_seconds": time.perf_counter() - start, "environment": environment()}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    return out
