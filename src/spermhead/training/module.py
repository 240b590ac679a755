"""The Lightning module: loss, optimiser, schedule and batched augmentation around any net."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from spermhead.config import OPTIMIZERS, SCHEDULES, TrainConfig
from spermhead.errors import ConfigError
from spermhead.models.inference import fast_input, fast_layout
from spermhead.training.augment import augment_batch, get_spec


def mixup(x: torch.Tensor, perm: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """Blend each image with a partner; returns the batch and the first image's share."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return lam * x + (1 - lam) * x[perm], lam


def cutmix(x: torch.Tensor, perm: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """Paste a box from each image's partner; returns the batch and the share of pixels kept."""
    h, w = x.shape[-2:]
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    bh, bw = int(round(h * (1 - lam) ** 0.5)), int(round(w * (1 - lam) ** 0.5))
    top, left = int(torch.randint(0, h - bh + 1, ())), int(torch.randint(0, w - bw + 1, ()))
    out = x.clone()
    out[..., top:top + bh, left:left + bw] = x[perm][..., top:top + bh, left:left + bw]
    return out, 1 - bh * bw / (h * w)


def focal_cross_entropy(logits: torch.Tensor, y: torch.Tensor, gamma: float,
                        weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) for class indices or soft targets (N x K): each class's
    -log p term is scaled by (1 - p)^gamma. At gamma 0 it is F.cross_entropy, weights, smoothing
    and reduction included (hard targets divide by the summed weights of their classes)."""
    k = logits.shape[-1]
    target = y.float() if y.ndim == 2 else F.one_hot(y, k).float()
    target = target * (1 - label_smoothing) + label_smoothing / k
    logp = F.log_softmax(logits.float(), dim=-1)
    # 1 - p as -expm1(log p), kept above 0: at p = 1 in float32, (1 - p)^gamma has an infinite
    # gradient for gamma < 1 (NaN weights after one confident batch)
    terms = -target * (-torch.expm1(logp)).clamp_min(1e-6).pow(gamma) * logp
    if weight is not None:
        terms = terms * weight
    total = terms.sum()
    if y.ndim == 1 and weight is not None:
        return total / weight[y].sum()
    return total / y.shape[0]


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al. 2021) around a base optimiser.

    Each step climbs to the worst point within radius `rho` of the weights, takes the gradient
    there, and lets the base optimiser step from the original weights. The closure (Lightning's
    forward + zero_grad + backward) runs twice on the same augmented batch, so a SAM run's logged
    train loss and accuracy average both passes.
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float) -> None:
        super().__init__(base.param_groups, {"rho": rho})
        self.base = base
        self.rho = rho
        self._share_base()
        self.defaults.update(base.defaults)

    def _share_base(self) -> None:
        # schedulers change the base's learning rate; checkpoints hold the base's moments
        self.param_groups = self.base.param_groups
        self.state = self.base.state

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)  # replaces the base's groups and state
        self._share_base()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise ValueError("SAM needs a closure")
        with torch.enable_grad():
            loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return loss
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        scale = self.rho / (norm + 1e-12)
        shifts = [p.grad * scale for p in params]
        torch._foreach_add_(params, shifts)
        with torch.enable_grad():
            closure()
        torch._foreach_sub_(params, shifts)
        self.base.step()
        return loss


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The final layer's parameters, the one that outputs the classes (behind a Standardize layer
    or not): timm's `get_classifier()` (both heads of a distilled model), else the network's last
    Linear layer (spermnet's `fc`, the last of the seed nets' dense layers)."""
    net = model[-1] if isinstance(model, nn.Sequential) and len(model) == 2 else model
    if hasattr(net, "get_classifier"):
        layers = net.get_classifier()
        layers = list(layers) if isinstance(layers, tuple | list) else [layers]
        return [p for layer in layers if isinstance(layer, nn.Module) for p in layer.parameters()]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"--backbone-lr: {type(net).__name__} has no final Linear layer to tell from the rest")
    return list(linears[-1].parameters())


def parameter_groups(model: nn.Module, lr: float, backbone_share: float = 1.0) -> list[dict[str, Any]]:
    """The trainable parameters, with every one but the final classifier layer's at
    `backbone_share` x `lr` (an empty group left out: a frozen backbone leaves the classifier's)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if backbone_share == 1.0:
        return [{"params": trainable, "lr": lr}]
    head = {id(p) for p in classifier_parameters(model)}
    groups = [{"params": [p for p in trainable if id(p) not in head], "lr": lr * backbone_share},
              {"params": [p for p in trainable if id(p) in head], "lr": lr}]
    return [g for g in groups if g["params"]]


class HeadClassifier(L.LightningModule):
    """`model` takes [0, 1] images (it standardises internally) and returns logits."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, steps_per_epoch: int,
                 loss_weights: torch.Tensor | None = None, l2_conv: float = 0.0, validated: bool = True) -> None:
        super().__init__()
        self.model = fast_layout(model)
        self.cfg = cfg
        self.validated = validated  # a fit with no validation part (a refit, a source model) has no val_loss
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.augment = get_spec(cfg.augment)
        self.l2_conv = l2_conv
        self.register_buffer("loss_weights", loss_weights if loss_weights is not None else torch.tensor([]))
        self.generators: list[torch.Generator] = []  # the training loader's, saved with checkpoints

    # A checkpoint keeps the random streams as well as the weights, so a fit resumed from it draws
    # the batches and augmentations an uninterrupted fit would, and gives the same model.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(),
                                    "generators": [g.get_state() for g in self.generators]}
        if self.device.type == "cuda":  # dropout and mixup draw on the GPU's own generator there
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state(self.device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:  # a checkpoint from before they were saved
            return
        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():  # the fit's device, the current one on resume
            torch.cuda.set_rng_state(states["cuda"])
        for gen, state in zip(self.generators, states["generators"], strict=True):
            gen.set_state(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        x = x.float().div_(255)
        if self.training and self.trainer.training:
            x = augment_batch(x, self.augment)
        return fast_input(x), y

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, smoothing: float, gamma: float = 0.0) -> torch.Tensor:
        weight = self.loss_weights if self.loss_weights.numel() else None
        if gamma > 0:
            return focal_cross_entropy(logits, y, gamma, weight, smoothing)
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=smoothing)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.cfg.mixup > 0 or self.cfg.cutmix > 0:
            perm = torch.randperm(x.shape[0], device=x.device)
            mixed, lam = (mixup(x, perm, self.cfg.mixup) if self.cfg.mixup > 0 else cutmix(x, perm, self.cfg.cutmix))
            logits = self(mixed)
            loss = lam * self._loss(logits, y, self.cfg.label_smoothing, self.cfg.focal) + (1 - lam) * self._loss(
                logits, y[perm], self.cfg.label_smoothing, self.cfg.focal)
        else:
            logits = self(x)
            loss = self._loss(logits, y, self.cfg.label_smoothing, self.cfg.focal)
        if self.l2_conv > 0:
            from spermhead.models.registry import conv_l2_penalty

            loss = loss + conv_l2_penalty(self.model, self.l2_conv)
        hard = y.argmax(-1) if y.ndim == 2 else y  # soft targets (expert votes) are N x K
        acc = (logits.argmax(-1) == hard).float().mean()
        self.log_dict({"train_loss": loss, "train_acc": acc}, on_step=False, on_epoch=True,
                      batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        # cross-entropy (class-weighted under --balance loss), never focal: val_loss means the same under --focal
        loss = self._loss(logits, y, 0.0)
        acc = (logits.argmax(-1) == y).float().mean()
        # Small validation sets tie on accuracy often; the loss breaks ties.
        self.log_dict({"val_loss": loss, "val_acc": acc, "val_score": acc - 1e-3 * loss},
                      on_step=False, on_epoch=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        params = parameter_groups(self.model, cfg.lr, cfg.backbone_lr)
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
        else:
            raise ConfigError(f"unknown optimizer {cfg.optimizer!r}: {', '.join(OPTIMIZERS)}")
        if cfg.sam > 0:
            opt = SAM(opt, cfg.sam)
        total = cfg.epochs * self.steps_per_epoch
        if cfg.schedule == "onecycle":
            pct = min(0.3, max(cfg.warmup_epochs, 1) / max(cfg.epochs, 1))
            peaks = [g["lr"] for g in params]
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total, pct_start=pct)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if cfg.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if cfg.schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
            # halved when the loss stalls: the validation loss where there is one, else the training loss
            watched = "val_loss" if self.validated else "train_loss"
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": watched}}
        if cfg.schedule == "none":
            return opt
        raise ConfigError(f"unknown schedule {cfg.schedule!r}: {', '.join(SCHEDULES)}")
