"""The nine study steps and the weights policy: which network each step actually uses.

Loads without torch (deepret.study.config takes ALL_STEPS from STEPS, for the CLI's help)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from deepret.errors import DeepretError, WeightsUnavailableError

if TYPE_CHECKING:
    from deepret.models import RetrievalNet
    from deepret.study.config import StudyConfig

PRETTY = {"alexnet": "AlexNet", "resnet18": "ResNet18", "resnet50": "ResNet50"}


@dataclass(frozen=True)
class Step:
    """One representation of the study: the network role and head, and what is done to it."""

    id: str
    title: str
    question: str
    role: str                      # 'alexnet', 'resnet18' or 'resnet50' (a StudyConfig field)
    head: str                      # fc7 or gem
    train: str | None = None       # None, 'classify' or 'rank'
    augment: str = "none"
    whiten: str | None = None      # None, 'pca' (dimension-reducing, the original's) or 'lw' (regularised)
    multiscale: bool = False
    unlabeled_tsne: bool = False
    triplets: bool = False
    base: str | None = None        # the step it builds on (its change is measured against it)


STEPS = (
    Step("1a", "AlexNet trained on ImageNet, fc7 (4096-d)",
         "How well do off-the-shelf ImageNet fc7 features retrieve landmarks?", "alexnet", "fc7"),
    Step("1b", "AlexNet finetuned on landmarks as a classifier (new last layer), fc7",
         "Does finetuning as a landmark classifier improve the fc7 features?", "alexnet", "fc7", train="classify",
         base="1a"),
    Step("1c", "AlexNet without its FC layers, last max-pooling replaced by GeM (256-d)",
         "Does pooling the last conv map (GeM) beat the FC layers?", "alexnet", "gem", base="1a"),
    Step("1d", "ResNet18 + GeM (512-d)",
         "Does a deeper, residual backbone give better GeM descriptors?", "resnet18", "gem", base="1c"),
    Step("1e", "1d + PCA-whitening learned on the landmarks dataset (the original's: reduces the dimension)",
         "Does PCA-whitening learned on landmark photos help?", "resnet18", "gem", whiten="pca", unlabeled_tsne=True,
         base="1d"),
    Step("1e-lw", "1d + learned whitening (Lw) with shrinkage, full dimension (regularised, for few training images)",
         "Does a whitening regularised for a small training set help where PCA-whitening cannot?",
         "resnet18", "gem", whiten="lw", base="1d"),
    Step("1f", "ResNet18 + GeM + FC, finetuned for retrieval with a triplet loss",
         "Does training end to end for retrieval (triplet loss) help?", "resnet18", "gem", train="rank",
         unlabeled_tsne=True, triplets=True),  # its base: 1e-lw or 1e, as the projection starts (base_of)
    Step("1g", "1f trained with data augmentation",
         "Does data augmentation during training help?", "resnet18", "gem", train="rank", augment="all",
         base="1f"),
    Step("1h", "1g with multi-resolution descriptors (scales averaged)",
         "Do multi-resolution descriptors help?", "resnet18", "gem", train="rank", augment="all", multiscale=True,
         base="1g"),
    Step("1i", "1h with a ResNet50 backbone",
         "Does a bigger backbone (ResNet50) help?", "resnet50", "gem", train="rank", augment="all", multiscale=True,
         base="1h"),
)
STEP_BY_ID = {s.id: s for s in STEPS}
ALL_STEPS = tuple(STEP_BY_ID)


def base_of(step: Step, cfg: StudyConfig) -> str | None:
    """The step `step` builds on: 1f's is the whitening its projection starts from (1e-lw or 1e)."""
    if step.id == "1f":
        return "1e-lw" if cfg.proj_init == "lw" else "1e"
    return step.base


def create_model(name: str, weights: str = "imagenet") -> RetrievalNet:
    """deepret.models.create_model, imported on the first call (torch with it)."""
    from deepret.models import create_model as create

    return create(name, weights=weights)


@dataclass(frozen=True)
class Choice:
    """The network a step actually starts from, and why, in words."""

    model: str           # a registered name, e.g. efficientnet_lite0-gem
    backbone: str
    intended: str        # what the study asks for, e.g. AlexNet fc7
    weights: str         # plain words: which weights and, for a stand-in, why
    standin: bool
    dim: int             # descriptor size of the network as built (before any training or whitening)


def choose_network(cfg: StudyConfig, step: Step, cache: dict[tuple[str, str], Choice]) -> Choice:
    """The study's network with ImageNet weights if they load, else the stand-in backbone (said in words)."""
    name = cfg.network_for(step.role)
    key = (name, step.head)
    if key not in cache:
        cache[key] = _choose(cfg, step.role, name, step.head)
    return cache[key]


def _choose(cfg: StudyConfig, role: str, name: str, head: str) -> Choice:
    wanted = PRETTY.get(name, name)
    intended = f"{PRETTY[role]} {head}" + (f" (as {name}, from --backbone)" if name != role else "")
    head_used, fc7_note = _head_for(name, head)
    try:
        net = create_model(f"{name}-{head_used}", weights="imagenet")
        return Choice(net.meta["name"], name, intended,
                      f"{name} ImageNet weights ({net.meta['provenance']}){fc7_note}", False, net.dim)
    except WeightsUnavailableError as exc:
        standin = cfg.standin_for(role)
        if standin == name:
            raise DeepretError(f"the stand-in backbone {name} has no ImageNet weights either: {exc}") from exc
    head_used, fc7_note = _head_for(standin, head)
    model = f"{standin}-{head_used}"
    net = create_model(model, weights="imagenet")  # fails loudly if the stand-in has no weights either
    text = f"{standin} (ImageNet) standing in for {wanted}: {wanted} ImageNet weights not available offline{fc7_note}"
    return Choice(model, standin, intended, text, True, net.dim)


def _head_for(backbone: str, head: str) -> tuple[str, str]:
    """fc7 only exists for AlexNet/VGG16; elsewhere the global-average-pooled features (spoc) replace it."""
    from deepret.models.backbones import FC7_BACKBONES

    if head == "fc7" and backbone not in FC7_BACKBONES:
        return "spoc", (f"; {backbone} has no fc7 layer, so its global-average-pooled features "
                        "(the input of its classifier, head spoc) replace fc7")
    return head, ""


def training_words(step: Step, cfg: StudyConfig, proj: int | None) -> str:
    """What training a step's network went through, in words (empty for none)."""
    if step.train == "classify":
        b = cfg.classify
        frozen = f", first {b.freeze} trunk blocks frozen" if b.freeze else ""
        return (f"finetuned as a {cfg.train.name} classifier (new last layer, cross-entropy{frozen}): "
                f"{b.epochs} epochs, {b.size}px, lr {b.lr:g}")
    if step.train == "rank":
        b = cfg.rank
        aug = f", augmentation {step.augment}" if step.augment != "none" else ", no augmentation"
        init = (f"learned whitening (Lw, shrinkage {cfg.whiten_shrinkage:g}) as 1e-lw" if cfg.proj_init == "lw"
                else f"PCA-whitening (shrinkage {cfg.whiten_shrinkage:g}) as 1e")
        margin = f" margin {b.margin:g}" if b.margin is not None else ""
        return (f"finetuned for retrieval on {cfg.train.name} (triplet loss{margin}, FC {proj}-d initialised by {init}"
                f"{aug}): {b.epochs} epochs x {b.queries} tuples, {b.size}px, lr {b.lr:g}")
    return ""


def loss_reason(row: dict, base: dict, cfg: StudyConfig) -> str:
    """Why a step's mAP fell against the step it builds on, in words: what the step changes that can
    cost retrieval on this benchmark, and what the separation measures say about it."""
    n, name = len(cfg.scales), cfg.train.name
    reasons = {
        "1b": (f"Classification trains the pooled features to tell apart the training landmarks of {name} with a "
               "new last layer; features tuned to separate those few classes need not match photos of other "
               "landmarks (the benchmark's), so the step trades generality for the training classes. Its budget was "
               "chosen on a validation split of the same list, whose photos are of the same landmarks: that "
               "score rewards exactly this specialisation and cannot see what it costs on others."),
        "1c": (f"1c pools the last conv map by GeM where 1a uses {base['network']} (for a stand-in without fc7, "
               "global average pooling of the same map): on this benchmark that head ranks better."),
        "1d": f"1d changes the backbone ({base['backbone']} to {row['backbone']}); nothing is trained.",
        "1e": (f"PCA-whitening reduces the descriptor to {row['dim']}-d, and it is learned on {name}, photos of "
               "other landmarks: directions of high variance there are not those that tell this benchmark's "
               "landmarks apart, and whitening gives the weak ones as much weight as the strong."),
        "1e-lw": (f"Lw is learned on the same-class pairs of {name}; a whitening fitted on another city's pairs "
                  "need not suit this benchmark."),
        "1f": (f"Triplet training moves the network towards separating the training landmarks of {name}; the "
               "budget was chosen on a validation split of that list (docs/training.md), so what it gains "
               "there need not carry over to this benchmark's landmarks."),
        "1g": ("Augmentation (crops, flips, colour, noise, rotation, tilt) changes the few training tuples; with this budget "
               "it adds variety the network does not have the steps to learn from."),
        "1h": (f"The descriptor averages {n} scales ({', '.join(f'{s:g}' for s in cfg.scales)}); at the evaluation "
               f"size {cfg.size} the smaller scale sees less detail."),
        "1i": (f"The bigger backbone ({row['backbone']}) is trained with 1h's small budget on {name}; a step of "
               "this size says little about backbones."),
    }
    text = reasons.get(row["step"], "")
    ds = (row.get("change") or {}).get("silhouette")
    if ds is not None and ds > 0:
        text += (f" Its landmark silhouette rose ({ds:+.3f}) while mAP fell: the landmarks group a little better"
                 " as a whole, but the ranking of each query's positives got worse.")
    elif ds is not None and ds < 0:
        text += f" Its landmark silhouette fell too ({ds:+.3f}): the landmarks separate less well in descriptor space."
    return text.strip()
