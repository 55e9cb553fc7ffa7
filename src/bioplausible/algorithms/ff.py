"""Forward-forward (Hinton 2022, "The forward-forward algorithm: some preliminary
investigations"), supervised, with a channel-wise competitive objective for CNNs
(Papachristodoulou et al. 2024, "Convolutional channel-wise competitive learning for the
forward-forward algorithm", AAAI).

Every hidden layer has its own objective on its own *goodness* (mean squared activity) and
its input is the previous layer's output normalised to unit RMS and detached (Hinton's layer
normalisation: only the direction of the activity vector goes on, so a layer cannot read the
previous layer's goodness). Autograd runs only inside one layer: no error crosses layers.

Two objectives (`objective`; "auto" = contrast for the MLP, channelwise for the CNN):

- "contrast" (Hinton): goodness g = mean of the layer's squared outputs, high for positive
  data (the image with its true label embedded), low for negative data (the same image with a
  wrong label). Prediction (`predict="goodness"`): the image is run with each label embedded --
  all labels batched in one tensor -- and the label with the highest goodness summed over the
  hidden layers from `goodness_from` on wins (Hinton skips the first hidden layer).
- "channelwise" (CwComp): a layer's channels (units, for a dense layer) are split into K
  fixed groups, one per class (channel j -> class j mod K); the goodness of class c is the mean
  square over its group's channels and all positions, G_c. The layer's loss is the
  cross-entropy of softmax(cw_scale * G) against the label: the true class's group is the
  positive goodness, every other group a negative one, so no negative data and no label in the
  input are needed, and one forward pass of the batch suffices. Prediction: argmax of G summed
  over the hidden layers from `goodness_from` on (one pass, no pass per label).

Why the CNN defaults to channelwise: on a CNN, contrast learns slowly (a 3x3 conv with shared
weights can hardly tell whether a local patch agrees with the label) and channelwise learns
faster and costs one forward pass; the measurements are in docs/notes/ff.md.

Other choices and why:
- Label embedding (contrast; `label_embed`): "onehot" writes the one-hot label into the first
  K input values (Hinton's MNIST recipe); "pattern" adds a fixed random label image (one per
  class, unit variance, scaled by `label_scale`) over the whole input, so that every receptive
  field of a CNN sees the label. "auto" = onehot for the MLP, pattern for the CNN.
- Loss (contrast; `loss`): "threshold" is Hinton's softplus(theta - g_pos) + softplus(g_neg -
  theta); "symba" (default) is SymBa's (Lee & Song 2023) softplus(-alpha (g_pos - g_neg)) on
  each image's positive/negative pair, alpha = 8.
- Goodness per position (`goodness_per="position"`, conv layers): the loss is applied to each
  spatial position's goodness (mean square over channels) instead of the whole map's.
- Negatives (contrast; `negatives`): "random" draws a wrong label uniformly; "hard" (default)
  draws it from the readout's softmax over the wrong labels (Hinton draws it from the
  network's own predictions; the neutral-label readout costs no pass over all labels).
- Readout (`readout`): a linear softmax, trained by cross-entropy on detached features (so no
  gradient reaches the FF layers): the stack's last layer on the last hidden layer's
  normalised activity (`readout_from="last"`), or a separate linear layer on those of all the
  hidden layers from `goodness_from` on ("all"). Contrast runs it on a neutral-label pass
  (every label at 1/K); channelwise reuses the training pass's features (no label is in the
  input). Prediction by goodness ignores it.
- Peer normalisation (`peer_norm` > 0, Hinton's appendix): a penalty pulling each unit's
  running mean activity (on positive data) towards the layer average, against dead units.
- One optimiser (shared, Adam per parameter): as every layer's loss depends only on its own
  parameters, summing the per-layer losses and doing one backward pass and one Adam step is
  exactly per-layer Adam, at the cost of one step.
- Cost per batch: contrast: a no-grad neutral-label pass (readout, training accuracy, hard
  negatives) and one pass over positives and negatives batched together; channelwise: one pass.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from .claims import Claims, no, partial, yes
from ..models import Layer
from .base import Learner


def _rms_normalise(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """h / RMS(h) per sample: Hinton's layer normalisation, scaled so entries stay O(1)."""
    rms = h.flatten(1).pow(2).mean(1).add(eps).sqrt()
    return h / rms.view(-1, *([1] * (h.dim() - 1)))


class ForwardForward(Learner):
    name = "ff"
    description = "Forward-forward: layer-local goodness (positive vs wrong-label data, or channel-wise per class)"
    claims = Claims(
        c1_no_weight_transport=yes("no error is sent between layers; each layer's update uses only "
                                   "its own input and output"),
        c2_local_error=partial("each layer's objective is its own goodness, but hard negatives (the "
                               "MLP's default) are picked by the readout on the top layer, so a "
                               "layer's update depends on the network above (the C2 probe sees it); "
                               "random negatives and the channel-wise objective are local"),
        c3_single_phase=no("only forward passes, but the contrast objective (the default) runs each "
                           "stimulus under two conditions, positive and negative, whose passes a network "
                           "would have to run one after the other (side by side here); the channel-wise "
                           "objective is a single pass"),
        c4_spiking=no("real-valued rates"),
        c5_label_free_hidden=no("every hidden layer's objective uses the label (embedded in the "
                                "input, or naming the channel group whose goodness must win)"),
        c6_unsigned_error=no("signed goodness errors (push up for positive, down for negative)"),
    )

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        objective: Literal["auto", "contrast", "channelwise"] = Field(
            "auto", description="auto: contrast on the MLP, channelwise on the CNN")
        # contrast objective
        loss: Literal["threshold", "symba"] = Field(
            "symba", description="contrast: Hinton's threshold loss, or SymBa's on the goodness difference")
        theta: float = Field(2.0, description="contrast: goodness threshold (goodness = mean squared activity)")
        alpha: float = Field(8.0, gt=0, description="SymBa sharpness (docs/notes/ff.md)")
        label_embed: Literal["auto", "onehot", "pattern"] = Field(
            "auto", description="label in the input: one-hot in the first pixels, or a fixed label image; auto: "
            "onehot on the MLP, pattern on the CNN")
        label_scale: float = Field(1.0, gt=0, description="amplitude of the embedded label")
        negatives: Literal["random", "hard"] = Field(
            "hard", description="negative label: a uniformly random wrong one, or one drawn from the readout's softmax over the wrong labels")
        # channelwise objective
        cw_scale: float = Field(
            10.0, gt=0, description="channelwise: inverse temperature of the softmax over the class goodnesses")
        # both
        goodness_per: Literal["layer", "position"] = Field(
            "layer", description="conv layers: loss per map or per position")
        predict: Literal["goodness", "readout"] = Field(
            "goodness", description="prediction by the accumulated goodness of each label, or by the readout")
        goodness_from: int = Field(1, ge=0, description="first hidden layer (0-based) counted in prediction")
        # off saves the contrast objective's neutral pass (the training accuracy is then the goodness one)
        readout: bool = Field(True, description="train a linear readout on detached features (off needs "
                              "predict=goodness, and negatives=random under contrast)")
        readout_from: Literal["last", "all"] = Field(
            "last", description="readout input: the last hidden layer, or all from goodness_from")
        peer_norm: float = Field(0.0, ge=0, description="weight of Hinton's peer-normalisation penalty")
        peer_momentum: float = Field(0.9, ge=0, lt=1, description="running mean of the peer-normalisation activity")

    def setup(self) -> None:
        o = self.opts
        self.objective = o.objective
        if self.objective == "auto":
            self.objective = "channelwise" if self.stack.arch == "cnn" else "contrast"
        if not o.readout and (o.predict == "readout" or (self.objective == "contrast" and o.negatives == "hard")):
            raise ValueError("ff: readout=false needs predict=goodness (and negatives=random under "
                             "the contrast objective)")
        dev = self.stack.layers[0].weight.device
        k = self.stack.num_classes
        self.n_hidden = len(self.stack.layers) - 1
        self.first = min(o.goodness_from, self.n_hidden - 1)
        embed = o.label_embed
        if embed == "auto":
            embed = "pattern" if self.stack.arch == "cnn" else "onehot"
        self.embed = embed
        n_in = math.prod(self.stack.input_shape)
        if embed == "onehot" and n_in < k:
            raise ValueError(f"ff: onehot label embedding needs at least {k} input values")
        # fixed label images, from a generator of their own so the forward init is unchanged
        g = torch.Generator().manual_seed(self.cfg.seed + 15485863)
        self.register_buffer("patterns", torch.randn(k, *self.stack.input_shape, generator=g).to(dev))
        shapes = self.stack.output_shapes()
        for l, shape in enumerate(shapes[:-1]):
            self.register_buffer(f"peer_mean{l}", torch.zeros(shape[0], device=dev))
        if self.objective == "channelwise":
            for l, shape in enumerate(shapes[:-1]):
                if shape[0] < k:
                    raise ValueError(f"ff: channelwise goodness needs at least {k} channels per layer, "
                                     f"layer {l} has {shape[0]}")
                # channel j belongs to class j mod K; columns average over each class's group
                a = F.one_hot(torch.arange(shape[0]) % k, k).float()
                self.register_buffer(f"cw_assign{l}", (a / a.sum(0, keepdim=True)).to(dev))
        self.readout_layer: Layer | None = None
        if o.readout_from == "all":
            nf = sum(math.prod(s) for s in shapes[self.first : -1])
            with torch.random.fork_rng(devices=[]):  # the global stream stays as other rules see it
                torch.manual_seed(self.cfg.seed + 32452843)
                self.readout_layer = Layer("linear", nf, k, act="identity", name="readout").to(dev)
        self._gen: torch.Generator | None = None
        self._pending_gen_state: torch.Tensor | None = None
        self._widest = max(math.prod(s) for s in shapes)

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

    def neutral_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the network sees when no label is given (channelwise embeds none at all)."""
        return x if self.objective == "channelwise" else self.embed_labels(x, None)

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

    def class_goodness(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """(N, K): layer l's mean squared activity over each class's channel group (and over
        all positions), the channelwise objective's goodness per class."""
        g = h.pow(2).mean((2, 3)) if h.dim() == 4 else h.pow(2)
        return g @ getattr(self, f"cw_assign{l}")

    def features(self, hs: list[torch.Tensor]) -> torch.Tensor:
        """The readout's input: normalised (detached) hidden activity."""
        if self.readout_layer is None:
            return _rms_normalise(hs[-1].detach()).flatten(1)
        return torch.cat([_rms_normalise(h.detach()).flatten(1) for h in hs[self.first :]], 1)

    def readout_logits(self, feat: torch.Tensor) -> torch.Tensor:
        return (self.readout_layer or self.stack.layers[-1])(feat)

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

    def _step(self, layer_losses: list[torch.Tensor], loss_readout: torch.Tensor | None) -> None:
        total = torch.stack(layer_losses).sum()
        self.optimizer.zero_grad(set_to_none=True)
        (total if loss_readout is None else total + loss_readout).backward()
        self.optimizer.step()

    def train_step(self, x, y):
        if self.objective == "channelwise":
            return self._train_channelwise(x, y)
        return self._train_contrast(x, y)

    def _train_contrast(self, x, y):
        b, k = len(y), self.stack.num_classes
        logits = loss_readout = None
        if self.opts.readout:
            # neutral-label pass: features for the readout (and its hard negatives)
            with torch.no_grad():
                feat = self.features(self.hidden_pass(self.embed_labels(x, None)))
            logits = self.readout_logits(feat)
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
        losses, gaps, score = [], [], 0.0
        for l, h in enumerate(hs):
            g = self.goodness(h)
            gp, gn = g[:b], g[b:]
            if l >= self.first:
                score = score + (gp - gn).detach()
            if self.opts.goodness_per == "position" and h.dim() == 4:
                gpos = h.pow(2).mean(1).flatten(1)  # (2B, positions)
                loss = self._layer_loss(gpos[:b], gpos[b:])
            else:
                loss = self._layer_loss(gp, gn)
            if self.opts.peer_norm > 0:
                loss = loss + self._peer_loss(l, h[:b])
            losses.append(loss)
            gaps.append((gp - gn).mean().detach())
        self._step(losses, loss_readout)
        out: dict[str, Any] = {"loss": torch.stack(losses).detach().mean()}
        if logits is not None:
            out["correct"] = (logits.detach().argmax(1) == y).sum()
            out["readout_loss"] = loss_readout.detach()
        else:
            out["correct"] = (score > 0).sum()
        for layer, gap in zip(self.stack.layers[:-1], gaps):
            out[f"goodness_gap_{layer.name}"] = gap
        return out

    def _train_channelwise(self, x, y):
        hs = self.hidden_pass(x)
        losses, accs, score = [], [], 0.0
        for l, h in enumerate(hs):
            G = self.class_goodness(l, h)
            if self.opts.goodness_per == "position" and h.dim() == 4:
                Gp = torch.einsum("nchw,ck->nkhw", h.pow(2), getattr(self, f"cw_assign{l}"))
                loss = F.cross_entropy(self.opts.cw_scale * Gp, y.view(-1, 1, 1).expand(-1, *h.shape[2:]))
            else:
                loss = F.cross_entropy(self.opts.cw_scale * G, y)
            if self.opts.peer_norm > 0:
                loss = loss + self._peer_loss(l, h)
            losses.append(loss)
            G = G.detach()
            accs.append((G.argmax(1) == y).float().mean())
            if l >= self.first:
                score = score + G
        logits = loss_readout = None
        if self.opts.readout:  # no label is in the input: the training pass's features serve
            logits = self.readout_logits(self.features(hs))
            loss_readout = F.cross_entropy(logits, y)
        self._step(losses, loss_readout)
        out: dict[str, Any] = {"loss": torch.stack(losses).detach().mean()}
        pred = logits.detach() if self.opts.predict == "readout" else score
        out["correct"] = (pred.argmax(1) == y).sum()
        if loss_readout is not None:
            out["readout_loss"] = loss_readout.detach()
        for layer, acc in zip(self.stack.layers[:-1], accs):
            out[f"goodness_acc_{layer.name}"] = acc
        return out

    # -- prediction ------------------------------------------------------------------------------
    @torch.no_grad()
    def goodness_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) class scores by goodness, summed over the counted layers. Contrast: the
        goodness with each label embedded, all labels of a chunk of images going through the
        network as one batch; channelwise: each class's group goodness, from one pass."""
        if self.objective == "channelwise":
            hs = self.hidden_pass(x)
            return sum(self.class_goodness(l, h) for l, h in enumerate(hs) if l >= self.first)
        k, n = self.stack.num_classes, len(x)
        chunk = max(1, min(n, (1 << 24) // (k * self._widest)))  # bounds the batched pass's memory
        scores = []
        labels = torch.arange(k, device=x.device)
        for i in range(0, n, chunk):
            xc = x[i : i + chunk]
            m = len(xc)
            xs = self.embed_labels(xc.repeat(k, *([1] * (x.dim() - 1))), labels.repeat_interleave(m))
            hs = self.hidden_pass(xs)
            s = sum(self.goodness(h) for h in hs[self.first :])
            scores.append(s.view(k, m).t())
        return torch.cat(scores)

    @torch.no_grad()
    def predict(self, x):
        if self.opts.predict == "readout":
            return self.readout_logits(self.features(self.hidden_pass(self.neutral_input(x))))
        return self.goodness_scores(x)

    @torch.no_grad()
    def activations(self, x):
        """Each layer's output for the neutral label (channelwise: the bare image); the last
        is the readout's logits."""
        hs = self.hidden_pass(self.neutral_input(x))
        out = {layer.name: h for layer, h in zip(self.stack.layers[:-1], hs)}
        out[self.stack.layers[-1].name] = self.readout_logits(self.features(hs))
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"gen": self._gen.get_state().cpu()} if self._gen is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "gen" in state:
            self._gen, self._pending_gen_state = None, state["gen"]
