"""Model zoo in plain torch: standard architectures rebuilt as chains of blocks.

Why: the planners cut a model at block boundaries, so every zoo model is an
`nn.Sequential` whose children are the blocks (stem, residual / inverted-residual /
transformer layers, head). Each block takes exactly one tensor and returns one tensor,
so a stage is simply `nn.Sequential(*blocks[start:end])`. Shapes follow the published
architectures exactly (torchvision ResNet v1.5 / MobileNetV2 / VGG16 / ViT-B/16, BERT-base,
GPT-2 small) so FLOP and parameter counts match the published figures. Weights are
random: nothing is downloaded and torchvision is not needed.

`build_model(name, device="meta")` builds without allocating weights; that is what the
profiler uses. `build_model(name)` builds real CPU weights, seeded, so that every worker
building the same model gets identical weights.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from dora_rl.errors import ProfileError

# --------------------------------------------------------------------------- helpers


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             act: type | None = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class _Head(nn.Module):
    """Global average pool + flatten + (dropout) + linear classifier."""

    def __init__(self, cin: int, n_classes: int = 1000, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """ResNet-18/34 residual block (two 3x3 convs)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv_bn(cin, width, 3, stride)
        self.conv2 = _conv_bn(width, cout, 3, act=None)
        self.down = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.down(x))


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck, v1.5 (stride on the 3x3 conv, as torchvision)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv_bn(cin, width, 1)
        self.conv2 = _conv_bn(width, width, 3, stride)
        self.conv3 = _conv_bn(width, cout, 1, act=None)
        self.down = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.down(x))


def _resnet(block: type, layers: list[int]) -> nn.Sequential:
    blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
    blocks["stem"] = nn.Sequential(_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
    cin = 64
    for i, (n, width) in enumerate(zip(layers, [64, 128, 256, 512])):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks[f"layer{i + 1}_{j}"] = block(cin, width, stride)
            cin = width * block.expansion
    blocks["head"] = _Head(cin)
    return nn.Sequential(blocks)


def resnet18() -> tuple[nn.Sequential, torch.Tensor]:
    """ResNet-18 at 224x224: stem + 8 basic blocks + head (10 blocks)."""
    return _resnet(BasicBlock, [2, 2, 2, 2]), torch.zeros(1, 3, 224, 224)


def resnet50() -> tuple[nn.Sequential, torch.Tensor]:
    """ResNet-50 (v1.5) at 224x224: stem + 16 bottlenecks + head (18 blocks)."""
    return _resnet(Bottleneck, [3, 4, 6, 3]), torch.zeros(1, 3, 224, 224)


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   _conv_bn(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.skip else y


def mobilenet_v2() -> tuple[nn.Sequential, torch.Tensor]:
    """MobileNetV2 (width 1.0) at 224x224: stem + 17 inverted residuals + 1x1 conv + head (20 blocks)."""
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
    blocks["stem"] = _conv_bn(3, 32, 3, 2, act=nn.ReLU6)
    cin, k = 32, 1
    for t, c, n, s in cfg:
        for j in range(n):
            blocks[f"ir{k}"] = InvertedResidual(cin, c, s if j == 0 else 1, t)
            cin, k = c, k + 1
    blocks["conv_last"] = _conv_bn(cin, 1280, 1, act=nn.ReLU6)
    blocks["head"] = _Head(1280, dropout=0.2)
    return nn.Sequential(blocks), torch.zeros(1, 3, 224, 224)


# --------------------------------------------------------------------------- VGG16


def vgg16() -> tuple[nn.Sequential, torch.Tensor]:
    """VGG16 (configuration D, no batch norm) at 224x224: 13 conv+ReLU blocks,
    5 max-pool blocks, 3 classifier blocks (21 blocks)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
    cin, nconv, npool = 3, 0, 0
    for v in cfg:
        if v == "M":
            npool += 1
            blocks[f"pool{npool}"] = nn.MaxPool2d(2, 2)
        else:
            nconv += 1
            blocks[f"conv{nconv}"] = nn.Sequential(nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True))
            cin = v
    blocks["fc1"] = nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Flatten(1), nn.Linear(512 * 7 * 7, 4096),
                                  nn.ReLU(inplace=True), nn.Dropout(0.5))
    blocks["fc2"] = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5))
    blocks["fc3"] = nn.Linear(4096, 1000)
    return nn.Sequential(blocks), torch.zeros(1, 3, 224, 224)


# --------------------------------------------------------------------------- transformers


class SelfAttention(nn.Module):
    """Multi-head self-attention written with explicit matmuls (not SDPA) so that
    torch's FlopCounterMode counts the QK^T and AV products on every device,
    including `meta` (where SDPA is not counted)."""

    def __init__(self, d: int, heads: int, causal: bool = False, dropout: float = 0.0):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf"))
        att = self.drop(att.softmax(-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class _MLP(nn.Sequential):
    def __init__(self, d: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d), nn.Dropout(dropout))


class PreLNLayer(nn.Module):
    """Pre-LayerNorm transformer layer (ViT, GPT-2): x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, d: int, heads: int, hidden: int, causal: bool = False, eps: float = 1e-6, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.attn = SelfAttention(d, heads, causal, dropout)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.mlp = _MLP(d, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PostLNLayer(nn.Module):
    """Post-LayerNorm transformer layer (BERT): ln(x + attn(x)); ln(x + mlp(x))."""

    def __init__(self, d: int, heads: int, hidden: int, eps: float = 1e-12, dropout: float = 0.1):
        super().__init__()
        self.attn = SelfAttention(d, heads, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.mlp = _MLP(d, hidden, dropout)
        self.ln2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.drop(self.attn(x)))
        return self.ln2(x + self.mlp(x))


class PatchEmbed(nn.Module):
    """ViT stem: 16x16 patch conv, prepend the class token, add position embeddings."""

    def __init__(self, d: int = 768, patch: int = 16, image: int = 224):
        super().__init__()
        self.conv = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos


class ViTHead(nn.Module):
    """Final LayerNorm, take the class token, linear classifier."""

    def __init__(self, d: int = 768, n_classes: int = 1000):
        super().__init__()
        self.ln = nn.LayerNorm(d, eps=1e-6)
        self.fc = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ln(x)[:, 0])


def vit_b16() -> tuple[nn.Sequential, torch.Tensor]:
    """ViT-B/16 at 224x224 (197 tokens): patch embed + 12 encoder layers + head (14 blocks)."""
    blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
    blocks["embed"] = PatchEmbed()
    for i in range(12):
        blocks[f"layer{i}"] = PreLNLayer(768, 12, 3072)
    blocks["head"] = ViTHead()
    return nn.Sequential(blocks), torch.zeros(1, 3, 224, 224)


class TokenEmbed(nn.Module):
    """Token ids (long, [batch, seq]) -> hidden states: word + position (+ token-type)
    embeddings, then LayerNorm for BERT."""

    def __init__(self, vocab: int, max_pos: int, d: int, type_vocab: int = 0, ln_eps: float | None = None,
                 dropout: float = 0.1):
        super().__init__()
        self.word = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_pos, d)
        self.token_type = nn.Embedding(type_vocab, d) if type_vocab else None
        self.ln = nn.LayerNorm(d, eps=ln_eps) if ln_eps else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word(ids) + self.pos(pos)[None]
        if self.token_type is not None:  # single-segment input: token type 0 everywhere
            x = x + self.token_type.weight[0]
        return self.drop(self.ln(x))


class BertHead(nn.Module):
    """BERT pooler (dense + tanh on the [CLS] token) + a 2-way sequence classifier."""

    def __init__(self, d: int = 768, n_classes: int = 2):
        super().__init__()
        self.pool = nn.Linear(d, d)
        self.fc = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.pool(x[:, 0])))


def bert_base(seq: int = 128) -> tuple[nn.Sequential, torch.Tensor]:
    """BERT-base (uncased vocab 30522) on 128 tokens: embeddings + 12 layers + pooler/classifier head (14 blocks)."""
    blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
    blocks["embed"] = TokenEmbed(30522, 512, 768, type_vocab=2, ln_eps=1e-12)
    for i in range(12):
        blocks[f"layer{i}"] = PostLNLayer(768, 12, 3072)
    blocks["head"] = BertHead()
    return nn.Sequential(blocks), torch.zeros(1, seq, dtype=torch.long)


class LMHead(nn.Module):
    """GPT-2 final LayerNorm + language-model head. The head's weight is tied to the
    token embedding (one Parameter, shared with block 0), exactly as GPT-2."""

    def __init__(self, embed: nn.Embedding, d: int = 768):
        super().__init__()
        self.ln = nn.LayerNorm(d, eps=1e-5)
        self.lm = nn.Linear(d, embed.num_embeddings, bias=False)
        self.lm.weight = embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(self.ln(x))


def gpt2_small(seq: int = 128) -> tuple[nn.Sequential, torch.Tensor]:
    """GPT-2 small (124M) on 128 tokens: embeddings + 12 causal layers + LN/LM head
    over all 128 positions (14 blocks)."""
    blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
    blocks["embed"] = TokenEmbed(50257, 1024, 768, dropout=0.1)
    for i in range(12):
        blocks[f"layer{i}"] = PreLNLayer(768, 12, 3072, causal=True, eps=1e-5, dropout=0.1)
    blocks["head"] = LMHead(blocks["embed"].word)
    return nn.Sequential(blocks), torch.zeros(1, seq, dtype=torch.long)


# --------------------------------------------------------------------------- tiny


def tiny_cnn() -> tuple[nn.Sequential, torch.Tensor]:
    """A 7-block CNN on 3x32x32 (~2.4 MFLOPs = 1.2 MMACs, 8.7k params): for fast tests and examples."""
    blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
    blocks["conv1"] = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    blocks["conv2"] = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    blocks["conv3"] = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
    blocks["pool"] = nn.MaxPool2d(2)
    blocks["conv4"] = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
    blocks["gap"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    blocks["fc"] = nn.Linear(32, 10)
    return nn.Sequential(blocks), torch.zeros(1, 3, 32, 32)


# --------------------------------------------------------------------------- registry

MODELS: dict[str, Callable[[], tuple[nn.Sequential, torch.Tensor]]] = {
    "mobilenet_v2": mobilenet_v2,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "vit_b16": vit_b16,
    "bert_base": bert_base,
    "gpt2_small": gpt2_small,
    "tiny_cnn": tiny_cnn,
}


def model_names() -> list[str]:
    """Names accepted by `build_model` and `get_profile`, sorted."""
    return sorted(MODELS)


def build_model(name: str, device: str | torch.device | None = None, seed: int = 0
                ) -> tuple[nn.Sequential, torch.Tensor]:
    """Build zoo model `name` in eval mode; return `(model, example_input)` with batch 1.

    `device="meta"` builds without allocating or initialising weights (for profiling
    and shape checks). Otherwise the weights are random but deterministic in `seed`
    (the global RNG is left untouched), so workers that build the same model agree.
    """
    if name not in MODELS:
        raise ProfileError(f"unknown model {name!r}; known models: {', '.join(model_names())} "
                           "(or give a path to a profile JSON)")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "meta":
        with torch.device("meta"):
            model, x = MODELS[name]()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.device(dev):
                model, x = MODELS[name]()
    return model.eval(), x.to(dev)
