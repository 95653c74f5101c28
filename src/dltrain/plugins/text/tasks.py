"""Ready text tasks: causal language modelling and text classification.

Both carry their tokenizer: it is stored in every checkpoint (``on_save_checkpoint``) and written to
``trainer.default_root_dir/tokenizer.json`` when fitting starts, so a trained model always reloads with the
tokenizer it was trained with. Loading a checkpoint into a task built with a *different* tokenizer raises a
``CheckpointError`` that says so (vocabulary size or fingerprint differ).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import Self, override

from dltrain.errors import CheckpointError, ConfigurationError
from dltrain.plugins.metrics import accuracy, f1
from dltrain.plugins.text.data import IGNORE_INDEX
from dltrain.plugins.text.metrics import BitsPerByte, Perplexity
from dltrain.plugins.text.models import CausalTransformer, TransformerEncoder
from dltrain.plugins.text.tokenizer import CHECKPOINT_KEY, TextTokenizer
from dltrain.task import Task

__all__ = ["LanguageModelTask", "TextClassificationTask"]


def _resolve_vocab(vocab_size: int | None, tokenizer: TextTokenizer | None) -> int:
    if vocab_size is None:
        if tokenizer is None:
            raise ConfigurationError("give vocab_size=... or tokenizer=...")
        return tokenizer.vocab_size
    if tokenizer is not None and tokenizer.vocab_size != vocab_size:
        raise ConfigurationError(f"vocab_size={vocab_size} but the tokenizer has {tokenizer.vocab_size} tokens")
    return vocab_size


def _warmup_cosine(warmup: int, total: int | None, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if not total or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _adamw(module: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    # No weight decay on biases and norms (1-D parameters); shared (tied) parameters are listed once.
    decay = [p for p in module.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)


class _TokenizerMixin(Task):
    tokenizer: TextTokenizer | None

    def on_fit_start(self) -> None:
        trainer = self.trainer
        root = getattr(trainer, "default_root_dir", None)
        if self.tokenizer is not None and root is not None and getattr(trainer, "is_global_zero", True):
            from pathlib import Path

            self.tokenizer.save(Path(root) / "tokenizer.json")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.tokenizer is not None:
            checkpoint[CHECKPOINT_KEY] = self.tokenizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        vocab = int(self.hparams.get("vocab_size", -1))
        if int(state["vocab_size"]) != vocab:
            raise CheckpointError(
                f"tokenizer mismatch: the checkpoint's tokenizer has {state['vocab_size']} tokens but this "
                f"{type(self).__name__} was built for vocab_size={vocab}; build the task from the checkpoint's "
                "tokenizer (TextTokenizer.from_checkpoint(path))"
            )
        if self.tokenizer is None:
            self.tokenizer = TextTokenizer.from_state_dict(state)
        else:
            self.tokenizer.check_matches(state)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike[str], map_location: Any = None,
                             hparams_file: str | os.PathLike[str] | None = None, strict: bool | None = None,
                             weights_only: bool | None = None, storage_options: dict[str, Any] | None = None, *,
                             tokenizer: TextTokenizer | None = None, **overrides: Any) -> Self:
        """Rebuild a trained task from a checkpoint.

        Hyperparameters, weights and the tokenizer it was trained with.

        Args:
            checkpoint_path: a checkpoint written by the Trainer.
            map_location: as for `dltrain.Task.load_from_checkpoint`.
            hparams_file: as for `dltrain.Task.load_from_checkpoint`.
            strict: as for `dltrain.Task.load_from_checkpoint`.
            weights_only: as for `dltrain.Task.load_from_checkpoint`.
            storage_options: as for `dltrain.Task.load_from_checkpoint`.
            tokenizer: optional; must be the checkpoint's tokenizer (else ``CheckpointError``). Default: the
                tokenizer stored in the checkpoint.
            overrides: constructor arguments to change (e.g. ``encoder=`` for a custom encoder, ``dropout=0``).

        Example:
            >>> from dltrain.plugins.text import lm_collate, train_tokenizer
            >>> tok = train_tokenizer(["The for statement iterates over a sequence."] * 20, vocab_size=270)
            >>> lm = LanguageModelTask(tokenizer=tok, context_length=16, n_layers=1, n_heads=2, d_model=16)
            >>> batch = lm_collate([{"ids": torch.randint(0, 270, (17,)), "n_bytes": 40}] * 2)
            >>> trainer = dltrain.Trainer(max_steps=1, logger=False, enable_progress_bar=False)
            >>> trainer.fit(lm, [batch])  # one step on one batch; a real run streams write_lm_shards' shards
            >>> trainer.save_checkpoint("lm.ckpt")
            >>> task = LanguageModelTask.load_from_checkpoint("lm.ckpt")  # with the tokenizer it was trained with
            >>> isinstance(task.generate_text("The for statement", max_new_tokens=4), str)
            True
        """
        from dltrain import checkpoint as ckpt_io

        state = ckpt_io.load(checkpoint_path, storage_options).get(CHECKPOINT_KEY)
        if state is not None:
            if tokenizer is None:
                tokenizer = TextTokenizer.from_state_dict(state)
            else:
                tokenizer.check_matches(state, where=f"checkpoint {str(checkpoint_path)!r}")
        # Subclasses take tokenizer=; the base class builds the task, checks and loads the weights.
        task = super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only,
                                            storage_options,
                                            tokenizer=tokenizer, **overrides)
        return cast(Self, task)


class LanguageModelTask(_TokenizerMixin):
    """Next-token prediction with a small GPT (``CausalTransformer``) on packed blocks.

    Batches are ``lm_collate`` dicts: ``input_ids``/``targets`` ``[B, L]`` and ``n_bytes`` ``[B]``. Logs
    ``train/loss``, ``train/bpb`` and, in validation/test, ``{val,test}/loss``, ``/ppl`` (perplexity) and
    ``/bpb`` (bits per byte = summed nats / (ln 2 * bytes of text covered)), reduced exactly across ranks.

    Args:
        vocab_size: number of token ids (default: the tokenizer's).
        tokenizer: stored in checkpoints and used by ``generate_text``.
        context_length: longest sequence the model reads.
        n_layers: transformer blocks.
        n_heads: attention heads per block.
        d_model: width of the residual stream.
        dropout: dropout on attention and residual branches.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay (not on biases and norms).
        betas: AdamW's betas.
        warmup_steps: linear warm-up; then cosine decay to ``min_lr_ratio * lr`` over ``decay_steps`` (default:
            the Trainer's ``max_steps`` when set, otherwise constant).

    Example:
        >>> task = LanguageModelTask(vocab_size=512, context_length=64, n_layers=2, n_heads=2, d_model=64)
        >>> task.generate(torch.tensor([0]), max_new_tokens=5, top_k=10).shape
        torch.Size([6])
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        *,
        tokenizer: TextTokenizer | None = None,
        context_length: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        d_model: int = 256,
        dropout: float = 0.0,
        lr: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        vocab_size = _resolve_vocab(vocab_size, tokenizer)
        self.save_hyperparameters(ignore=("tokenizer",))
        self.hparams["vocab_size"] = vocab_size
        self.tokenizer = tokenizer
        self.model = CausalTransformer(vocab_size, context_length, n_layers, n_heads, d_model, dropout)
        self.eval_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({"loss": MeanMetric(), "ppl": Perplexity(), "bpb": BitsPerByte()})
            for stage in ("val", "test")
        })

    @override
    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids)

    def _nats(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self.model(batch["input_ids"])
        targets = batch["targets"]
        # float32 loss even under mixed precision; padded targets (-100) cost nothing.
        nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        return nats, (targets != IGNORE_INDEX).sum()

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        nats, n_tokens = self._nats(batch)
        loss = nats / n_tokens.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bpb", nats.detach() / (math.log(2) * batch["n_bytes"].sum().clamp(min=1)))
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        nats, n_tokens = self._nats(batch)
        m: Any = self.eval_metrics[stage]
        m["loss"].update(nats / n_tokens.clamp(min=1), n_tokens)  # weighted by tokens: the corpus mean
        m["ppl"].update(nats, n_tokens)
        m["bpb"].update(nats, batch["n_bytes"])
        for name in ("loss", "ppl", "bpb"):
            self.log(f"{stage}/{name}", m[name], on_step=False, on_epoch=True, prog_bar=name == "bpb")

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = _adamw(self.model, hp["lr"], hp["weight_decay"], tuple(hp["betas"]))
        total = hp["decay_steps"]
        if total is None:
            max_steps = getattr(self._trainer, "max_steps", None)
            total = max_steps if isinstance(max_steps, int) and max_steps > 0 else None
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(hp["warmup_steps"], total,
                                                                      hp["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Tensor | Sequence[int],
        max_new_tokens: int = 100,
        temperature: float = 1.0,
        top_k: int | None = None,
        *,
        stop_at_eod: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample a continuation of ``prompt_ids`` (``[T]`` or ``[B, T]``); returns prompt + new tokens.

        Args:
            prompt_ids: the prompt; start it with the EOD id to mean "a new document".
            max_new_tokens: tokens to add (the context slides when it exceeds ``context_length``).
            temperature: ``<= 0`` means greedy decoding.
            top_k: sample only among the ``k`` most likely tokens.
            stop_at_eod: stop once every sequence produced the EOD token.
            generator: a ``torch.Generator`` (on the model's device) for reproducible samples.
        """
        was_training = self.training
        self.eval()
        try:
            ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.device)
            single = ids.dim() == 1
            if single:
                ids = ids[None]
            if ids.shape[1] == 0:
                raise ConfigurationError("generate needs a prompt of at least one token (e.g. the EOD id)")
            eod = self.tokenizer.eod_id if self.tokenizer is not None else 0
            done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
            for _ in range(max_new_tokens):
                logits = self.model(ids[:, -self.model.context_length :])[:, -1, :].float()
                if temperature <= 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None and top_k < logits.shape[-1]:
                        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
                ids = torch.cat([ids, nxt], dim=1)
                done |= nxt[:, 0] == eod
                if stop_at_eod and bool(done.all()):
                    break
            return ids[0] if single else ids
        finally:
            self.train(was_training)

    def generate_text(self, prompt: str = "", max_new_tokens: int = 100, temperature: float = 0.8,
                      top_k: int | None = 40, generator: torch.Generator | None = None) -> str:
        """Text continuation of ``prompt`` as a new document (needs the task's tokenizer)."""
        if self.tokenizer is None:
            raise ConfigurationError("generate_text needs the task's tokenizer (LanguageModelTask(tokenizer=...))")
        prompt_ids = [self.tokenizer.eod_id, *self.tokenizer.encode(prompt)]
        out = self.generate(prompt_ids, max_new_tokens, temperature, top_k, stop_at_eod=True, generator=generator)
        new = out[len(prompt_ids):].tolist()
        if self.tokenizer.eod_id in new:
            new = new[: new.index(self.tokenizer.eod_id)]
        return prompt + self.tokenizer.decode(new)


class TextClassificationTask(_TokenizerMixin):
    """Sequence classification: encoder -> masked mean pooling -> linear head.

    Batches are ``PadCollate`` dicts (``input_ids``, ``attention_mask``, ``labels``). Padded positions are
    excluded from attention and from the pooled mean. Logs ``train/loss``, ``train/acc``, ``{val,test}/loss``,
    ``/acc`` (micro accuracy) and ``/f1`` (macro F1), and ``data/skipped_docs``, ``data/replaced_chars``,
    ``data/truncated_docs`` (sums per epoch).

    Args:
        num_classes: number of labels.
        vocab_size: default: the tokenizer's.
        tokenizer: stored in checkpoints.
        encoder: any module ``(input_ids, attention_mask) -> [B, T, d_model]``; default: a
            ``TransformerEncoder`` of ``n_layers``/``n_heads``/``d_model``/``max_length``.
        lr: AdamW's learning rate after the warm-up.
        weight_decay: AdamW's weight decay.
        warmup_steps: optimizer steps of linear warm-up (then constant).

    Example:
        >>> task = TextClassificationTask(num_classes=3, vocab_size=300, d_model=32, n_layers=1, n_heads=2)
        >>> task(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        num_classes: int,
        vocab_size: int | None = None,
        *,
        tokenizer: TextTokenizer | None = None,
        encoder: nn.Module | None = None,
        max_length: int = 256,
        n_layers: int = 2,
        n_heads: int = 4,
        d_model: int = 128,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        vocab_size = _resolve_vocab(vocab_size, tokenizer)
        self.save_hyperparameters(ignore=("tokenizer", "encoder"))
        self.hparams["vocab_size"] = vocab_size
        self.hparams["class_names"] = list(class_names) if class_names is not None else None
        self.tokenizer = tokenizer
        self.encoder = encoder or TransformerEncoder(vocab_size, max_length, n_layers, n_heads, d_model, dropout)
        # A custom encoder may have another width; it can say so with a `d_model` attribute.
        self.head = nn.Linear(int(getattr(self.encoder, "d_model", d_model)), num_classes)
        self.eval_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({
                "loss": MeanMetric(),
                "acc": accuracy(num_classes),
                "f1": f1(num_classes),
            })
            for stage in ("val", "test")
        })

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Class logits ``[B, num_classes]``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        hidden = self.encoder(input_ids, attention_mask)
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # mean over real tokens only
        return self.head(pooled)

    def _log_counters(self, batch: dict[str, Tensor]) -> None:
        for key, name in (("n_skipped", "skipped_docs"), ("n_replaced", "replaced_chars"),
                          ("n_truncated", "truncated_docs")):
            if key in batch:
                self.log(f"data/{name}", batch[key].float(), on_step=False, on_epoch=True, reduce_fx="sum",
                         batch_size=1)

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        self._log_counters(batch)
        if batch["labels"].numel() == 0:  # every document of the batch was empty
            return None
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(-1) == batch["labels"]).float().mean())
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        self._log_counters(batch)
        if batch["labels"].numel() == 0:
            return
        logits = self(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        m: Any = self.eval_metrics[stage]
        m["loss"].update(F.cross_entropy(logits.float(), labels), labels.numel())
        m["acc"].update(logits, labels)
        m["f1"].update(logits, labels)
        for name in ("loss", "acc", "f1"):
            self.log(f"{stage}/{name}", m[name], on_step=False, on_epoch=True, prog_bar=name == "acc")

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    @override
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch["input_ids"], batch["attention_mask"]).argmax(-1)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = _adamw(self, hp["lr"], hp["weight_decay"], (0.9, 0.999))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(hp["warmup_steps"], None, 1.0))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
