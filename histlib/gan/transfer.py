"""Transfer from a base GAN: loading, new classes, freezing, and keeping each class's label right.

Fine-tuning (docs/design.md, "GAN training") loads every tensor of the base checkpoint but the class embeddings, freezes
the first ``freeze_d`` discriminator blocks (from the image) and ``freeze_g`` synthesis blocks (from 4×4), and writes
what it did to ``finetune.json`` (:mod:`histlib.gan.finetune_report`, which also holds every reader of that file). The
training loop sees fine-tuning through one object, :class:`TransferHook`: the report when a run starts and D's view of
G's classes at the end of every tick.

New classes. When the target's classes differ from the base's, the class embeddings must start somewhere. A freshly
drawn embedding makes the pretrained mapping network produce whatever base appearance happens to lie there, and
fine-tuning rarely moves it across to the right one: fine-tuned generators drew class A when asked for class B
(docs/results.md). So (``class_init='match'``, the default) each target class starts from the base class whose
generated images are closest, in the base discriminator's embedding, to the class's real images (one-to-one where
there are enough base classes), and during training (``realign_classes``) the class embeddings are relabelled when
D's own conditional head sees G drawing two classes swapped and tells those classes apart on real images. A
researcher who knows which classes correspond sets them (``TrainConfig.class_map``): those start from the base class
named and are never relabelled; the rest are matched as above among the other base classes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from histlib import runs
from histlib.device import forked_rng
from histlib.gan.config import PROJECTION_INITS, TrainConfig, check_class_map
from histlib.gan.distributed import Dist, broadcast_object
from histlib.gan.finetune_report import write_finetune_report
from histlib.gan.networks import Discriminator, Generator


def _freeze_blocks(blocks: nn.ModuleList, k: int, prefix: str, what: str) -> list[str]:
    if not isinstance(k, int) or not 0 <= k <= len(blocks):
        raise ValueError(f"{what}: expected an int in [0, {len(blocks)}] (number of blocks), got {k!r}")
    names = []
    for i in range(k):
        for name, p in blocks[i].named_parameters():
            p.requires_grad_(False)
            names.append(f"{prefix}{i}.{name}")
    return names


def freeze_discriminator(D: Discriminator, k: int) -> list[str]:
    """Freezes the first ``k`` discriminator blocks from the image input (block 1 = fromRGB + highest resolution).

    Returns:
        Names (as in ``D.state_dict()``) of the parameters now with ``requires_grad=False``.
    """
    return _freeze_blocks(D.blocks, k, "blocks.", "freeze_d")


def freeze_generator(G: Generator, k: int) -> list[str]:
    """Freezes the first ``k`` synthesis blocks from 4x4 (block 1 = const + 4x4); the mapping stays trainable.

    Returns:
        Names (as in ``G.state_dict()``) of the parameters now with ``requires_grad=False``.
    """
    return _freeze_blocks(G.synthesis.blocks, k, "synthesis.blocks.", "freeze_g")


def class_embedding_names(module: nn.Module) -> list[str]:
    """Names in ``module.state_dict()`` of the tensors whose size depends on the number of classes."""
    names = []
    for prefix, sub in module.named_modules():
        for t in getattr(type(sub), "class_embedding_tensors", ()):
            names.append(f"{prefix}.{t}" if prefix else t)
    return names


def load_pretrained(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    reinit_class_embeddings: bool | None = None,
) -> dict:
    """Loads a checkpoint into ``module`` (a Generator or Discriminator), re-initialising the class embeddings.

    Every tensor must be present on both sides with the same shape, except the class-embedding tensors
    (:func:`class_embedding_names`: the mapping's label embedding weight and per-class ``w_avg_c``, the
    discriminator's proxies). Those are re-initialised (``w_avg_c`` starts at the loaded global ``w_avg``) when
    ``reinit_class_embeddings`` is True, or when it is None and the class counts differ; otherwise loaded.

    Args:
        module: target network.
        state_dict: source tensors (e.g. ``checkpoint['G']``).
        reinit_class_embeddings: True: always re-initialise; False: always load (class counts must match);
            None: re-initialise exactly when the class counts differ.

    Returns:
        ``{'loaded': [...], 'skipped': [...], 'reinitialised': [...]}``: target names copied from the checkpoint,
        checkpoint names not used, and target names re-initialised.

    Raises:
        ValueError: a tensor is missing on either side or has a different shape (named in the message).
    """
    target = module.state_dict()
    class_names = set(class_embedding_names(module))
    missing = sorted(set(target) - set(state_dict) - (class_names if reinit_class_embeddings is not False else set()))
    unexpected = sorted(set(state_dict) - set(target))
    if missing or unexpected:
        raise ValueError(
            f"load_pretrained: checkpoint does not match {type(module).__name__}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    class_mismatch = [n for n in sorted(class_names) if n not in state_dict or state_dict[n].shape != target[n].shape]
    if reinit_class_embeddings is None:
        reinit = bool(class_mismatch)
    elif reinit_class_embeddings is False and class_mismatch:
        n = class_mismatch[0]
        raise ValueError(
            f"load_pretrained: class-embedding tensor {n!r} has shape {tuple(state_dict[n].shape)} in the checkpoint "
            f"but {tuple(target[n].shape)} in the model (different class count); pass reinit_class_embeddings=True"
        )
    else:
        reinit = bool(reinit_class_embeddings)
    reinit_names = class_names if reinit else set()

    for name, t in target.items():
        if name in reinit_names:
            continue
        if state_dict[name].shape != t.shape:
            raise ValueError(
                f"load_pretrained: tensor {name!r} has shape {tuple(state_dict[name].shape)} in the checkpoint but "
                f"{tuple(t.shape)} in the model (different architecture or resolution?)"
            )
    loaded = []
    with torch.no_grad():
        for name, t in target.items():
            if name not in reinit_names:
                t.copy_(state_dict[name])  # state_dict() tensors share storage with the module
                loaded.append(name)
        if reinit:
            for sub in module.modules():
                if getattr(type(sub), "class_embedding_tensors", ()):
                    sub.reset_class_embeddings()
    skipped = sorted(n for n in state_dict if n in reinit_names)
    return {"loaded": loaded, "skipped": skipped, "reinitialised": sorted(reinit_names)}


CENTRE_SPACES = ("embed", "features")


@torch.no_grad()
def class_centres(D: Discriminator, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  batch_size: int = 256, space: str = "embed") -> torch.Tensor:
    """Mean L2-normalised view of each class's images by D, normalised: ``[num_classes, E]``.

    Args:
        D: a discriminator (labels are not used).
        images: ``[N, C, R, R]`` in [-1, 1].
        labels: ``[N]`` class indices.
        num_classes: number of classes (every one must have an image).
        space: ``'embed'`` (the D2D-CE embedding head) or ``'features'`` (the features both heads read,
            :meth:`Discriminator.features`; for a D trained without D2D-CE, whose embedding head never learned).
    """
    if space not in CENTRE_SPACES:
        raise ValueError(f"space={space!r}: expected one of {CENTRE_SPACES}")
    D_labels = torch.zeros(min(batch_size, len(images)), dtype=torch.int64, device=images.device)
    embeds = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        e = F.normalize(D.features(x), dim=1) if space == "features" else D(x, D_labels[: len(x)])[1]
        embeds.append(e.float())
    embed = torch.cat(embeds)  # [N, E]
    centres = []
    for k in range(num_classes):
        sel = labels == k
        if not bool(sel.any()):
            raise ValueError(f"class_centres: class {k} has no image")
        centres.append(F.normalize(embed[sel].mean(0), dim=0))
    return torch.stack(centres)  # [K, E]


def match_classes(similarity: torch.Tensor, fixed: Mapping[int, int] | None = None) -> list[int]:
    """For each target class (row), the source class (column) it starts from.

    Target classes in ``fixed`` (``{row: column}``, set by hand: ``TrainConfig.class_map``) take their column. The
    others, with no more of them than source classes not in ``fixed``, take the one-to-one assignment among those of
    largest total similarity (Hungarian method), so no two target classes start from the same source class;
    otherwise each takes its most similar source class of all.
    """
    sim = similarity.detach().double().cpu().numpy()
    fixed = dict(fixed or {})
    out = [fixed.get(i, -1) for i in range(sim.shape[0])]
    free_rows = [i for i in range(sim.shape[0]) if i not in fixed]
    free_cols = [j for j in range(sim.shape[1]) if j not in set(fixed.values())]
    if free_rows and len(free_rows) <= len(free_cols):
        rows, cols = linear_sum_assignment(sim[np.ix_(free_rows, free_cols)], maximize=True)
        for r, c in zip(rows, cols):
            out[free_rows[r]] = free_cols[c]
    else:
        for i in free_rows:
            out[i] = int(sim[i].argmax())
    return [int(c) for c in out]


@torch.no_grad()
def init_class_embeddings_from_base(G: Generator, D: Discriminator, base_G: Generator, base_D: Discriminator,
                                    real: torch.Tensor, real_labels: torch.Tensor, samples_per_class: int = 64,
                                    seed: int = 0, proxies: str = "random",
                                    fixed: Mapping[int, int] | None = None, projection: str = "random",
                                    space: str = "embed") -> dict:
    """Starts each new class of a fine-tuned G and D from where the base networks already are, instead of at random.

    A freshly drawn class embedding makes the pretrained mapping network produce whatever base appearance happens to
    lie there, and fine-tuning rarely moves it across to the right one: target classes come out swapped (a
    generator asked for class A draws class B). Instead, in the base discriminator's view (``space``: its D2D-CE
    embedding, or the features both its heads read where the base trained without D2D-CE, see :func:`class_centres`):

    * the target classes' real images give one centre per target class;
    * the base generator's images of each base class give one centre per base class;
    * each target class is matched to a base class (:func:`match_classes` on the cosine similarities of the
      centres) and starts with that base class's label embedding and mean ``w`` (so it draws the most similar base
      appearance, and no two target classes draw the same one when there are enough base classes);
    * D's proxies (``proxies``): ``'random'`` (freshly drawn, the default), ``'centres'`` (each class's real
      centre) or ``'matched'`` (the base proxy of the matched base class). Fresh proxies keep D's classes apart
      from the first step even where the base D embeds two target classes alike (docs/results.md).

    ``G``/``D`` must already hold the base weights for every tensor but the class embeddings (see
    :func:`load_pretrained`). Rescales for the different class counts so that the embedding of target class t equals
    the base embedding of its matched class exactly.

    Args:
        G, D: the networks to fine-tune (target classes).
        base_G, base_D: the base networks (base classes), e.g. the base checkpoint's ``G_ema`` and ``D``.
        real: target training images ``[N, 3, R, R]`` in [-1, 1] (a few per class suffice).
        real_labels: their classes ``[N]``.
        samples_per_class: base images generated per base class for its centre.
        seed: latent seed of those images.
        fixed: ``{target class: base class}`` set by hand (``TrainConfig.class_map``); the others are matched.
        projection: D's projection-head class embeddings (when both D's have the head): ``'random'`` (freshly drawn,
            as :func:`load_pretrained` leaves them) or ``'matched'`` (the matched base class's, as G's).
        space: ``'embed'`` or ``'features'``, where the centres are taken (:func:`class_centres`).

    Returns:
        ``{'method': 'match', 'similarity': [[...]] (target × base), 'match': [base index per target class]}``.
    """
    device = real.device
    K_t, K_b = G.num_classes, base_G.num_classes
    if proxies == "centres" and space != "embed":
        raise ValueError("proxies='centres' needs the centres in the D2D-CE embedding (space='embed')")
    target = class_centres(base_D, real, real_labels, K_t, space=space)  # [K_t, E]
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn([samples_per_class * K_b, base_G.z_dim], generator=gen).to(device)
    c = torch.arange(K_b, device=device).repeat_interleave(samples_per_class)
    fakes = torch.cat([base_G(z[i:i + 256], c[i:i + 256], noise_mode="const") for i in range(0, len(z), 256)])
    source = class_centres(base_D, fakes, c, K_b, space=space)  # [K_b, E]
    similarity = target @ source.t()  # [K_t, K_b]
    match = match_classes(similarity, fixed)
    idx = torch.as_tensor(match, device=device)
    emb, base_emb = G.mapping.embed, base_G.mapping.embed
    emb.weight.copy_(base_emb.weight[:, idx] * (base_emb.weight_gain / emb.weight_gain))
    if emb.bias is not None:
        emb.bias.copy_(base_emb.bias)
    G.mapping.w_avg_c.copy_(base_G.mapping.w_avg_c[idx])
    if proxies == "centres":
        D.proxies.weight.copy_(target.to(D.proxies.weight.dtype) * base_D.proxies.weight.norm(dim=1).mean())
    elif proxies == "matched":
        D.proxies.weight.copy_(base_D.proxies.weight[idx])
    elif proxies != "random":
        raise ValueError(f"proxies={proxies!r}: expected 'random', 'centres' or 'matched'")
    if projection not in PROJECTION_INITS:
        raise ValueError(f"projection={projection!r}: expected one of {PROJECTION_INITS}")
    has_head = D.projection is not None and base_D.projection is not None
    if projection == "matched" and has_head:
        D.projection.cmap.weight.copy_(base_D.projection.cmap.weight[idx])
    return {"method": "match", "proxies": proxies, "space": space, "similarity": similarity.cpu().tolist(),
            "match": match, **({"projection": projection} if has_head else {})}


@torch.no_grad()
def init_class_embeddings_neutral(G: Generator, base_G: Generator, noise: float = 0.01, seed: int = 0) -> dict:
    """Starts every new class of a fine-tuned G at the base's class-neutral centre, so classes separate by label.

    Each target class gets the same label embedding, the mean of the base classes' embeddings (plus ``noise`` ×
    its scale of Gaussian noise to break the symmetry), and the global mean ``w`` as its class mean. The fine-tuned
    generator then starts without any class structure, as a generator trained from scratch does, and the
    conditional loss alone decides which appearance each class takes: no base appearance carries a target label
    into training.

    Returns:
        ``{'method': 'neutral', 'noise': noise}``.
    """
    emb, base_emb = G.mapping.embed, base_G.mapping.embed
    centre = base_emb.weight.mean(dim=1, keepdim=True) * (base_emb.weight_gain / emb.weight_gain)  # [E, 1]
    gen = torch.Generator().manual_seed(int(seed))
    jitter = torch.randn(emb.weight.shape, generator=gen).to(emb.weight) * noise * centre.abs().mean()
    emb.weight.copy_(centre.expand_as(emb.weight) + jitter)
    if emb.bias is not None:
        emb.bias.copy_(base_emb.bias)
    G.mapping.w_avg_c.copy_(base_G.mapping.w_avg.unsqueeze(0).expand_as(G.mapping.w_avg_c))
    return {"method": "neutral", "noise": noise}


@torch.no_grad()
def discriminator_view(G: Generator, D: Discriminator, per_class: int = 64, seed: int = 0,
                       batch_size: int = 256) -> torch.Tensor:
    """How D's conditional head sees G's classes: ``[K, K]`` counts, row = class asked for, column = the class whose
    proxy is nearest to the image's D2D-CE embedding (D's own label for it)."""
    K = G.num_classes
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn([per_class * K, G.z_dim], generator=gen).to(device)
    c = torch.arange(K, device=device).repeat_interleave(per_class)
    proxies = F.normalize(D.proxies.weight.float(), dim=1)  # [K, E]
    seen = []
    for i in range(0, len(z), batch_size):
        img = G(z[i:i + batch_size], c[i:i + batch_size], noise_mode="const")
        _, embed, _ = D(img, c[i:i + batch_size])
        seen.append((embed.float() @ proxies.t()).argmax(1))
    counts = torch.zeros(K, K, dtype=torch.int64, device=device)
    counts.index_put_((c, torch.cat(seen)), torch.ones_like(c), accumulate=True)
    return counts.cpu()


@torch.no_grad()
def discriminator_real_view(D: Discriminator, real: torch.Tensor, labels: torch.Tensor, num_classes: int,
                            batch_size: int = 256) -> torch.Tensor:
    """D's conditional head on real images: ``[K, K]`` counts, row = true class, column = nearest proxy."""
    proxies = F.normalize(D.proxies.weight.float(), dim=1)
    seen = []
    for i in range(0, len(real), batch_size):
        _, embed, _ = D(real[i:i + batch_size], labels[i:i + batch_size])
        seen.append((embed.float() @ proxies.t()).argmax(1))
    counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=real.device)
    counts.index_put_((labels, torch.cat(seen)), torch.ones_like(labels), accumulate=True)
    return counts.cpu()


def realignment(view: torch.Tensor, min_gain: float = 0.2, real_view: torch.Tensor | None = None,
                min_real_recall: float = 0.75, keep: Sequence[int] = ()) -> list[int] | None:
    """The relabelling of G's class embeddings that D's view asks for, or None.

    ``view[r, s]``: images of embedding r that D labels s. The one-to-one assignment of embeddings to classes with
    the most agreement (Hungarian method) is returned as ``perm`` (class s takes embedding ``perm[s]``) when it
    raises the agreement by at least ``min_gain`` (a fraction of all images) over keeping every embedding where it
    is, and when D can tell the classes it would move apart on real images (``real_view``, rows true class: the
    recall of each moved class at least ``min_real_recall``); otherwise None. The second condition keeps a D that
    still confuses two similar classes from relabelling a generator that draws them right. The classes in ``keep``
    (set by hand, ``TrainConfig.class_map``) keep their embeddings: only the others are assigned.
    """
    cm = view.double().numpy()
    free = [i for i in range(len(cm)) if i not in set(keep)]
    perm = list(range(len(cm)))
    rows, cols = linear_sum_assignment(cm[np.ix_(free, free)], maximize=True)
    for r, s in zip(rows, cols):
        perm[free[int(s)]] = free[int(r)]
    gain = (cm[perm, np.arange(len(cm))].sum() - np.trace(cm)) / max(cm.sum(), 1.0)
    if gain < min_gain:
        return None
    if real_view is not None:
        real = real_view.double().numpy()
        recall = np.diag(real) / np.maximum(real.sum(axis=1), 1.0)
        moved = [s for s, r in enumerate(perm) if r != s]
        if moved and recall[moved].min() < min_real_recall:
            return None
    return perm


@torch.no_grad()
def permute_classes(G: Generator, perm: Sequence[int], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Relabels G's classes: class s takes what class ``perm[s]`` had (label embedding, class mean of w, and the
    optimiser's moments of the embedding), so each class keeps drawing what it drew, under its new label."""
    idx = torch.as_tensor(list(perm), device=G.mapping.embed.weight.device)
    weight = G.mapping.embed.weight
    state = optimizer.state.get(weight, {}) if optimizer is not None else {}
    for t in [weight, *(v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == weight.shape)]:
        t.copy_(t[:, idx])
    G.mapping.w_avg_c.copy_(G.mapping.w_avg_c[idx])


# ----------------------------------------------------------------------------------------------------------------
# Applying a base checkpoint to a run


def check_base_matches(base: dict[str, Any], net_kwargs: dict[str, Any], cfg: TrainConfig) -> None:
    """A base checkpoint of another resolution or architecture cannot be fine-tuned from: say which and how."""
    theirs = (base.get("network_kwargs") or {}).get("G") or {}
    ours = net_kwargs["G"]
    if theirs.get("img_resolution") not in (None, ours["img_resolution"]):
        theirs_px, ours_px = theirs["img_resolution"], ours["img_resolution"]
        raise ValueError(f"TrainConfig.resume_from={base['path']}: the base checkpoint is {theirs_px} px, this run "
                         f"is {ours_px} px; set resolution={theirs_px} (the images are resized to it) or train a base "
                         "at this resolution")
    keys = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max")
    diff = {k: (theirs.get(k), ours.get(k)) for k in keys if k in theirs and theirs.get(k) != ours.get(k)}
    d_theirs = (base.get("network_kwargs") or {}).get("D") or {}
    d_defaults = inspect.signature(Discriminator).parameters
    for key in ("cond_projection", "uncond_logit", "projection_layers"):  # D options that change its weights
        default = d_defaults[key].default
        if d_theirs.get(key, default) != net_kwargs["D"].get(key, default):
            diff[f"D {key}"] = (d_theirs.get(key, default), net_kwargs["D"].get(key, default))
    if diff:
        detail = ", ".join(f"{k} {a} in the base vs {b} here" for k, (a, b) in diff.items())
        raise ValueError(f"TrainConfig.resume_from={base['path']}: the base networks differ ({detail}); use the "
                         f"base's profile ({(base.get('config') or {}).get('profile')}), G_kwargs and D_kwargs")


def real_sample(dataset, num_classes: int, per_class: int, seed: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed draw of up to ``per_class`` real training images per class: ``([n, 3, R, R] in [-1, 1], [n])``."""
    labels = np.asarray(dataset.labels)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(num_classes)])
    real = torch.stack([dataset[int(i)][0] for i in idx]).to(device).float() / 127.5 - 1  # [n, 3, R, R]
    return real, torch.as_tensor(labels[idx], device=device)


def init_new_classes(base: dict[str, Any], G, D, dataset, num_classes: int, cfg: TrainConfig,
                      device: torch.device, fixed: Mapping[int, int] | None = None) -> dict[str, Any]:
    """New target classes: ``init_class_embeddings_neutral`` (``class_init='neutral'``) or
    ``init_class_embeddings_from_base`` with the base checkpoint's G_ema and D and up to 64 real training
    images per target class (``'match'``; the same on every rank: a fixed draw), ``fixed`` (``{target: base}``
    indices of ``cfg.class_map``) set by hand."""
    kw = base["network_kwargs"]
    base_G = Generator(**kw["G"]).to(device).eval()
    base_G.load_state_dict(base["G_ema"])
    if cfg.class_init == "neutral":
        return init_class_embeddings_neutral(G, base_G, seed=cfg.seed)
    base_D = Discriminator(**kw["D"]).to(device).eval()
    base_D.load_state_dict(base["D"])
    real, real_c = real_sample(dataset, num_classes, 64, cfg.seed, device)
    # a base trained without D2D-CE (cond_lambda 0) never trained D's embedding head: match in the features it reads
    # (a base config without the field trained at the field's default, as check_resume_config reads it)
    base_lambda = (base.get("config") or {}).get("cond_lambda", TrainConfig.cond_lambda)
    space = "features" if float(base_lambda) == 0 else "embed"
    with forked_rng(device):
        info = init_class_embeddings_from_base(G, D, base_G, base_D, real, real_c, seed=cfg.seed, fixed=fixed,
                                               projection=cfg.projection_init, space=space)
    base_classes = base.get("classes") or [str(i) for i in range(base_G.num_classes)]
    info["matched_base_class"] = {c: base_classes[b] for c, b in zip(dataset.classes, info["match"])}
    # which starts a researcher set (TrainConfig.class_map) and which the similarity chose; the set ones are never
    # relabelled during training (TransferHook)
    info["set_by_hand"] = [c for i, c in enumerate(dataset.classes) if i in (fixed or {})]
    return info


def apply_base(base: dict[str, Any], G: Generator, D: Discriminator, G_ema: Generator, dataset, classes: list[str],
               num_classes: int, net_kwargs: dict[str, Any], cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Loads a base checkpoint into the three networks (class embeddings re-initialised when the classes differ, by
    name where the base recorded them) and starts the new classes (``cfg.class_init``). Returns the fine-tuning
    record (written to ``finetune.json`` and kept in every checkpoint)."""
    check_base_matches(base, net_kwargs, cfg)
    fixed = check_class_map(cfg.class_map, classes, base.get("classes"))
    if fixed and list(base.get("classes") or []) == list(classes) and any(t != b for t, b in fixed.items()):
        raise ValueError(f"TrainConfig.class_map={cfg.class_map!r}: the run's classes are the base's "
                         f"{list(classes)}, whose embeddings are loaded by name; leave class_map unset")
    finetune: dict[str, Any] = {"resume_from": base["path"], "resume_from_sha256": runs.file_sha256(base["path"]),
                                "base_classes": base.get("classes"), "classes": classes,
                                "base_cur_nimg": base.get("cur_nimg")}
    reinit = None if base.get("classes") is None else list(base["classes"]) != list(classes)
    for name, module in (("G", G), ("D", D), ("G_ema", G_ema)):
        finetune[name] = load_pretrained(module, base[name], reinit_class_embeddings=reinit)
    if finetune["G"]["reinitialised"] and cfg.class_init != "random":
        finetune["class_init"] = init_new_classes(base, G, D, dataset, num_classes, cfg, device, fixed)
    else:
        finetune["class_init"] = {"method": "random" if finetune["G"]["reinitialised"] else "loaded"}
    with torch.no_grad():  # G_ema starts from G's new class embeddings, not an independent draw
        g_state, ema_state = G.state_dict(), G_ema.state_dict()
        for n in finetune["G_ema"].get("reinitialised", []):
            ema_state[n].copy_(g_state[n])
    return finetune


def apply_freezing(G: Generator, D: Discriminator, G_ema: Generator, cfg: TrainConfig) -> dict[str, list[str]]:
    """Freezes the first ``cfg.freeze_d`` / ``cfg.freeze_g`` blocks; returns ``{'G': [...], 'D': [...]}`` names.

    G_ema's frozen blocks are made the very tensors its trainable blocks are trained against, G's; they get no EMA
    update afterwards, so G and G_ema stay bit-identical there.
    """
    frozen_d = freeze_discriminator(D, cfg.freeze_d) if cfg.freeze_d else []
    frozen_g = freeze_generator(G, cfg.freeze_g) if cfg.freeze_g else []
    if frozen_g:
        freeze_generator(G_ema, cfg.freeze_g)
        with torch.no_grad():
            g_params = dict(G.named_parameters())
            for n, p in G_ema.named_parameters():
                if n in frozen_g:
                    p.copy_(g_params[n])
    return {"G": sorted(frozen_g), "D": sorted(frozen_d)}


def class_check(G, G_ema, D, opt_G, cfg: TrainConfig, cur_nimg: int, dist_info: Dist, device: torch.device,
                 realign: bool, check_reals: tuple[torch.Tensor, torch.Tensor], keep: Sequence[int] = (),
                 ) -> dict[str, Any]:
    """D's view of G's classes at the end of a tick (``d_class_agreement``: the fraction of G's images whose nearest
    D proxy is the class asked for; ``d_real_agreement``: the same for a fixed sample of real training images) and,
    when fine-tuning with new classes, the relabelling of G's class embeddings that turns a swap D sees into
    agreement (``class_realign``: class s takes embedding ``perm[s]``; only for classes D tells apart on reals, never
    for the classes in ``keep``, set by hand)."""
    out: dict[str, Any] = {}
    if dist_info.rank == 0:
        view = discriminator_view(G, D, cfg.class_check_per_class, seed=cfg.seed + 7)
        out["d_class_agreement"] = round(float(view.trace()) / max(int(view.sum()), 1), 4)
        real_x, real_c = check_reals
        real_view = discriminator_real_view(D, real_x, real_c, G.num_classes)
        out["d_real_agreement"] = round(float(real_view.trace()) / max(int(real_view.sum()), 1), 4)
        perm = realignment(view, cfg.realign_min_gain, real_view, cfg.realign_min_real_recall, keep) \
            if realign else None
        if perm is not None:
            out["class_realign"] = perm
            out["d_class_agreement_before"] = out["d_class_agreement"]
            out["d_class_agreement"] = round(float(view[perm, torch.arange(len(perm))].sum()) / int(view.sum()), 4)
    out = broadcast_object(out, dist_info)
    if out.get("class_realign") is not None:
        permute_classes(G, out["class_realign"], opt_G)
        permute_classes(G_ema, out["class_realign"])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning's part in the training loop


class TransferHook:
    """What fine-tuning adds to a training run (:mod:`histlib.gan.loop`): ``finetune.json`` when a run starts afresh
    (:meth:`start`, rank 0) and, at the end of every tick, D's view of G's classes and the relabelling of swapped
    classes (:meth:`end_tick`, every rank: the relabelling is applied on each).

    Args:
        state: the run's :class:`~histlib.gan.state.TrainState` (read at each call, so it sees resumed counters).
        dataset: its training images; rank 0 draws D's fixed real sample from them.
    """

    def __init__(self, state, dataset) -> None:
        cfg = state.cfg
        self.state = state
        self.checks = bool(cfg.class_check_per_class) and state.num_classes > 1
        self.check_reals = (real_sample(dataset, state.num_classes, cfg.class_check_per_class, cfg.seed, state.device)
                            if self.checks and state.dist.rank == 0 else None)

    def start(self, run_dir: str | os.PathLike) -> None:
        """A fresh run's ``finetune.json``: written when it loads a base or freezes blocks, else an old one removed."""
        write_finetune_report(run_dir, self.state.finetune, self.state.frozen)

    def end_tick(self) -> dict[str, Any]:
        """This tick's keys of ``stats.jsonl`` (:func:`class_check`; none with one class or
        ``class_check_per_class`` 0). A relabelling is applied to G and G_ema and kept in ``state.realignments``."""
        if not self.checks:
            return {}
        state, cfg = self.state, self.state.cfg
        set_by_hand = ((state.finetune or {}).get("class_init") or {}).get("set_by_hand") or []
        keep = [state.classes.index(c) for c in set_by_hand if c in state.classes]
        out = class_check(state.G, state.G_ema, state.D, state.opt_G, cfg, state.cur_nimg, state.dist, state.device,
                          realign=state.new_classes and cfg.realign_classes, check_reals=self.check_reals, keep=keep)
        if out.get("class_realign") is not None:
            state.realignments.append({"kimg": round(state.cur_nimg / 1000, 3), "perm": out["class_realign"]})
        return out
