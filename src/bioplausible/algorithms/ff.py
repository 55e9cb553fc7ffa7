"""Forward-forward (Hinton 2022, "The forward-forward algorithm: some preliminary
investigations"), supervised version.

Every hidden layer has its own objective, its *goodness* g = mean of its squared outputs:
high (above a threshold theta) for positive data (an image with its true label embedded),
low for negative data (the same image with a wrong label). Between layers the activity
vector is normalised to unit RMS (Hinton's layer normalisation: only its direction, not
its length, goes on, so a layer cannot read the previous layer's goodness). Each layer's
input is detached: autograd runs only inside one layer.

Prediction (`predict="goodness"`, the default): the image is run once with each label
embedded -- all labels batched in one tensor -- and the label with the highest goodness
summed over the hidden layers from `goodness_from` on wins (Hinton skips the first hidden
layer). `predict="readout"`: the stack's last layer (a dense layer to the classes) is a
linear softmax readout of the last hidden layer's normalised activity for a *neutral*
label (every label at 1/K), trained by cross-entropy on those detached features; it is
trained in every mode (it also gives the cheap training accuracy and the hard negatives).

Choices and why:
- Label embedding (`label_embed`): "onehot" writes the one-hot label into the first K
  input values (Hinton's MNIST recipe); "pattern" adds a fixed random label image
  (one per class, unit variance, scaled by `label_scale`) over the whole input, so that
  every receptive field of a CNN sees the label -- with a one-hot corner a 3x3 conv can
  hardly make its goodness depend on the label, which is why FF CNNs with corner labels
  stay near chance. "auto" = onehot for the MLP, pattern for the CNN.
- Loss (`loss`): "threshold" is Hinton's softplus(theta - g_pos) + softplus(g_neg - theta);
  "symba" (default) is SymBa's (Lee & Song 2023) softplus(-alpha (g_pos - g_neg)) on each
  image's positive/negative pair, alpha = 8. Measured (seed 0, Adam 1e-3): digits MLP
  256-128, 10 epochs: symba 0.86 vs threshold 0.43 (theta 2) / 0.92 (theta 0.5); digits
  CNN: symba 0.89-0.92 vs threshold 0.67; mnist5k CNN, 3 epochs: alpha 8 0.87 vs 4 0.83.
- Negatives (`negatives`): "random" draws a wrong label uniformly; "hard" (default) draws
  it from the readout's softmax over the wrong labels (Hinton draws it from the network's
  own predictions; using the neutral-label readout costs no extra pass over all labels).
  mnist5k MLP 1024-512-256, 5 epochs: hard 0.913 vs random 0.782. On the CNN the
  neutral-label readout stays weak, so hard negatives are close to random there.
- Peer normalisation (`peer_norm` > 0, Hinton's appendix): a penalty pulling each unit's
  running mean activity on positive data towards the layer average, against dead units.
- One optimiser (shared, Adam per parameter): as every layer's loss depends only on its own
  parameters, summing the per-layer losses and doing one backward pass and one Adam step
  is exactly per-layer Adam, at the cost of one step.
- Per-sample RMS normalisation over all of a layer's units (for conv layers too).
- Cost per batch: a no-grad neutral-label pass (readout, training accuracy, hard
  negatives) and one pass over positives and negatives batched together (CPU, mnist5k,
  MLP 1024-512-256: 1.8x BP's time per step). The training accuracy reported by
  `train_step` is the readout's; the evaluation uses `predict`.
- The stack's last layer is used only as the readout; prediction by goodness ignores it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..criteria.claims import Claims, no, partial, yes
from .base import Learner


def _rms_normalise(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """h / RMS(h) per sample: Hinton's layer normalisation, scaled so entries stay O(1)."""
    rms = h.flatten(1).pow(2).mean(1).add(eps).sqrt()
    return h / rms.view(-1, *([1] * (h.dim() - 1)))


class ForwardForward(Learner):
    name = "ff"
    description = "Forward-forward: layer-local goodness of positive vs negative (wrong-label) data"
    claims = Claims(
        c1_no_weight_transport=yes("no error is sent between layers; each layer's update uses only "
                                   "its own input and output"),
        c2_local_error=yes("each layer's objective is its own goodness"),
        c3_single_phase=partial("only forward passes, but positive and negative data are two "
                                "distinct passes (run side by side here)"),
        c4_spiking=no("real-valued rates"),
        c5_label_free_hidden=no("the label is embedded in the input of every layer's positive data"),
        c6_unsigned_error=no("signed goodness errors (push up for positive, down for negative)"),
    )

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        loss: Literal["threshold", "symba"] = "symba"
        theta: float = 2.0  # goodness threshold (goodness = mean squared activity)
        alpha: float = Field(8.0, gt=0)  # SymBa sharpness (8 beat 4 on digits and mnist5k CNNs)
        label_embed: Literal["auto", "onehot", "pattern"] = "auto"
        label_scale: float = Field(1.0, gt=0)
        negatives: Literal["random", "hard"] = "hard"
        predict: Literal["goodness", "readout"] = "goodness"
        goodness_from: int = Field(1, ge=0)  # first hidden layer (0-based) counted in prediction
        # train the stack's last layer as the neutral-label readout; off saves the neutral
        # pass (needs predict=goodness, negatives=random; training accuracy is then the
        # fraction of pairs whose positive beats its negative in summed goodness)
        readout: bool = True
        peer_norm: float = Field(0.0, ge=0)  # weight of Hinton's peer-normalisation penalty
        peer_momentum: float = Field(0.9, ge=0, lt=1)

    def setup(self) -> None:
        if not self.opts.readout and (self.opts.predict == "readout" or self.opts.negatives == "hard"):
            raise ValueError("ff: readout=false needs predict=goodness and negatives=random")
        dev = self.stack.layers[0].weight.device
        k = self.stack.num_classes
        self.n_hidden = len(self.stack.layers) - 1
        embed = self.opts.label_embed
        if embed == "auto":
            embed = "pattern" if self.stack.arch == "cnn" else "onehot"
        self.embed = embed
        n_in = math.prod(self.stack.input_shape)
        if embed == "onehot" and n_in < k:
            raise ValueError(f"ff: onehot label embedding needs at least {k} input values")
        # fixed label images, from a generator of their own so the forward init is unchanged
        g = torch.Generator().manual_seed(self.cfg.seed + 15485863)
        self.register_buffer("patterns", torch.randn(k, *self.stack.input_shape, generator=g).to(dev))
        for l, shape in enumerate(self.stack.output_shapes()[:-1]):
            self.register_buffer(f"peer_mean{l}", torch.zeros(shape[0], device=dev))
        self._gen: torch.Generator | None = None
        self._pending_gen_state: torch.Tensor | None = None
        self._widest = max(math.prod(s) for s in self.stack.output_shapes())

    # -- label embedding ---------------------------------------------------------------------
    def embed_labels(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """x with `labels` embedded; labels=None embeds the neutral label (1/K each)."""
        k, s = self.stack.num_classes, self.opts.label_scale
        if labels is None:
            code = torch.full((len(x), k), 1.0 / k, device=x.device, dtype=x.dtype)
        else:
            code = F.one_hot(labels, k).to(x.dtype)
        if self.embed == "onehot":
            flat = x.flatten(1).clone()
            flat[:, :k] = s * code
            return flat.view_as(x)
        return x + s * (code @ self.patterns.flatten(1)).view_as(x)

    # -- passes ----------------------------------------------------------------------------------
    def hidden_pass(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each hidden layer's output; every layer sees the previous one normalised and detached."""
        hs, h = [], x
        for layer in self.stack.layers[:-1]:
            h = layer(h.detach())
            hs.append(h)
            h = _rms_normalise(h)
        return hs

    @staticmethod
    def goodness(h: torch.Tensor) -> torch.Tensor:
        return h.flatten(1).pow(2).mean(1)

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.cfg.seed + 2971215073)
            if self._pending_gen_state is not None:  # resumed from a checkpoint
                self._gen.set_state(self._pending_gen_state)
                self._pending_gen_state = None
        return self._gen

    def _layer_loss(self, gp: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        if self.opts.loss == "symba":
            return F.softplus(-self.opts.alpha * (gp - gn)).mean()
        th = self.opts.theta
        return (F.softplus(th - gp) + F.softplus(gn - th)).mean()

    def _peer_loss(self, l: int, h_pos: torch.Tensor) -> torch.Tensor:
        buf = getattr(self, f"peer_mean{l}")
        unit_mean = h_pos.mean(0) if h_pos.dim() == 2 else h_pos.mean((0, 2, 3))
        m = self.opts.peer_momentum * buf + (1 - self.opts.peer_momentum) * unit_mean
        buf.copy_(m.detach())
        return self.opts.peer_norm * (m - m.mean().detach()).pow(2).mean()

    def train_step(self, x, y):
        b, k = len(y), self.stack.num_classes
        logits = loss_readout = None
        if self.opts.readout:
            # neutral-label pass: features for the readout (and its hard negatives)
            with torch.no_grad():
                feat = _rms_normalise(self.hidden_pass(self.embed_labels(x, None))[-1])
            logits = self.stack.layers[-1](feat)
            loss_readout = F.cross_entropy(logits, y)
        gen = self._generator(x.device)
        if self.opts.negatives == "hard":
            p = torch.softmax(logits.detach().float(), 1)
            p[torch.arange(b, device=x.device), y] = 0.0
            y_neg = torch.multinomial(p + 1e-12, 1, generator=gen).squeeze(1)
        else:
            y_neg = (y + torch.randint(1, k, (b,), device=x.device, generator=gen)) % k
        xs = torch.cat([self.embed_labels(x, y), self.embed_labels(x, y_neg)])
        hs = self.hidden_pass(xs)
        first = min(self.opts.goodness_from, self.n_hidden - 1)
        losses, gaps, score = [], [], 0.0
        for l, h in enumerate(hs):
            g = self.goodness(h)
            gp, gn = g[:b], g[b:]
            if l >= first:
                score = score + (gp - gn).detach()
            loss = self._layer_loss(gp, gn)
            if self.opts.peer_norm > 0:
                loss = loss + self._peer_loss(l, h[:b])
            losses.append(loss)
            gaps.append((gp - gn).mean().detach())
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.stack(losses).sum()
        (total if loss_readout is None else total + loss_readout).backward()
        self.optimizer.step()
        out: dict[str, Any] = {"loss": torch.stack(losses).detach().mean()}
        if logits is not None:
            out["correct"] = (logits.detach().argmax(1) == y).sum()
            out["readout_loss"] = loss_readout.detach()
        else:
            out["correct"] = (score > 0).sum()
        for layer, gap in zip(self.stack.layers[:-1], gaps):
            out[f"goodness_gap_{layer.name}"] = gap
        return out

    # -- prediction ------------------------------------------------------------------------------
    @torch.no_grad()
    def goodness_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) goodness summed over the counted layers with each label embedded; all labels
        of a chunk of images go through the network as one batch."""
        k, n = self.stack.num_classes, len(x)
        first = min(self.opts.goodness_from, self.n_hidden - 1)
        chunk = max(1, min(n, (1 << 24) // (k * self._widest)))  # bounds the batched pass's memory
        scores = []
        labels = torch.arange(k, device=x.device)
        for i in range(0, n, chunk):
            xc = x[i : i + chunk]
            m = len(xc)
            xs = self.embed_labels(xc.repeat(k, *([1] * (x.dim() - 1))), labels.repeat_interleave(m))
            hs = self.hidden_pass(xs)
            s = sum(self.goodness(h) for h in hs[first:])
            scores.append(s.view(k, m).t())
        return torch.cat(scores)

    @torch.no_grad()
    def predict(self, x):
        if self.opts.predict == "readout":
            return self.stack.layers[-1](_rms_normalise(self.hidden_pass(self.embed_labels(x, None))[-1]))
        return self.goodness_scores(x)

    @torch.no_grad()
    def activations(self, x):
        """Each layer's output for the neutral label; the last is the readout's logits."""
        hs = self.hidden_pass(self.embed_labels(x, None))
        out = {layer.name: h for layer, h in zip(self.stack.layers[:-1], hs)}
        last = self.stack.layers[-1]
        out[last.name] = last(_rms_normalise(hs[-1]))
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"gen": self._gen.get_state().cpu()} if self._gen is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "gen" in state:
            self._gen, self._pending_gen_state = None, state["gen"]
