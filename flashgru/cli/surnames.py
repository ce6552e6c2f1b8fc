"""Surnames by language: the embedded default data set and its classifier.

The names come from the surname lists that the ``faker`` package ships (MIT licence), read
offline from its installed modules. Locales are grouped by language, non-Latin-script
lists are left out, names that occur in more than one language are dropped (they can't be
classified), and languages keep only if at least ``MIN_NAMES`` names remain. The split is
stratified and fixed (seed 0), whatever the training seed.
"""

from __future__ import annotations

import hashlib
import importlib
import random
import unicodedata
from collections import Counter

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import flashgru

from .common import CLIError, need

# Languages and the faker locales whose surname lists speak for them. English is the
# native-English country locales only: faker's en_IN, en_KE, en_PK... list other languages'
# names, and its generic "en" list is invented names of mixed (often German) origin.
LANGUAGES = {
    "Azerbaijani": ["az_AZ"], "Croatian": ["hr_HR"], "Czech": ["cs_CZ"],
    "Dutch": ["nl_BE", "nl_NL"], "English": ["en_GB", "en_NZ", "en_US"],
    "Estonian": ["et_EE"], "Finnish": ["fi_FI"],
    "French": ["fr_BE", "fr_CA", "fr_CH", "fr_FR", "fr_QC"],
    "German": ["de_AT", "de_CH", "de_DE", "de_LI"], "Hungarian": ["hu_HU"],
    "Indonesian": ["id_ID"], "Irish": ["ga_IE"], "Italian": ["it_IT"],
    "Portuguese": ["pt_BR", "pt_PT"], "Slovak": ["sk_SK"], "Slovene": ["sl_SI"],
    "Spanish": ["es_AR", "es_CA", "es_CL", "es_CO", "es_ES", "es_MX"], "Swedish": ["sv_SE"],
    "Twi": ["tw_GH"], "Uzbek": ["uz_UZ"], "Zulu": ["zu_ZA"],
}
MIN_NAMES = 160
SPLIT = (0.8, 0.1, 0.1)


def _latin(name: str) -> bool:
    return all(c in " -'" or (c.isalpha() and "LATIN" in unicodedata.name(c, ""))
               for c in name)


def _locale_surnames(locale: str) -> set[str]:
    provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
    names: set[str] = set()
    for attr in ("last_names", "last_names_male", "last_names_female"):
        listed = getattr(provider, attr, None)
        if listed is None or callable(listed):
            continue
        names |= {n.strip() for n in listed if isinstance(n, str) and n.strip()}
    return {n for n in names if _latin(n)}


def load_surnames(limit: int = 0) -> dict[str, list[str]]:
    """Language → sorted surnames. ``limit`` > 0 keeps that many per language (tests)."""
    need("faker")
    per = {lang: set().union(*map(_locale_surnames, locs)) for lang, locs in LANGUAGES.items()}
    seen = Counter(n for names in per.values() for n in names)
    data = {}
    for lang, names in per.items():
        unique = sorted(n for n in names if seen[n] == 1)
        if len(unique) >= MIN_NAMES:
            data[lang] = unique[:limit] if limit else unique
    return data


def split_surnames(data: dict[str, list[str]]):
    """Stratified train/val/test lists of (name, language index), fixed by seed 0."""
    rng = random.Random(0)
    splits = {"train": [], "val": [], "test": []}
    for label, lang in enumerate(sorted(data)):
        names = list(data[lang])
        rng.shuffle(names)
        n_train = round(len(names) * SPLIT[0])
        n_val = round(len(names) * SPLIT[1])
        splits["train"] += [(n, label) for n in names[:n_train]]
        splits["val"] += [(n, label) for n in names[n_train : n_train + n_val]]
        splits["test"] += [(n, label) for n in names[n_train + n_val :]]
    return splits


def fingerprint(splits) -> str:
    text = "\n".join(f"{s}\t{n}\t{y}" for s, rows in splits.items() for n, y in rows)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SurnameClassifier(nn.Module):
    """Characters → embedding → bidirectional flashgru.GRU → both final states → logits.
    ``dropout`` applies to the embeddings, between GRU layers and to the final states."""

    def __init__(self, vocab: int, classes: int, embed: int = 64, hidden: int = 128,
                 layers: int = 1, dropout: float = 0.0, reset_after: bool = True,
                 backend: str = "auto"):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.gru = flashgru.GRU(embed, hidden, layers, batch_first=True,
                                dropout=dropout if layers > 1 else 0.0, bidirectional=True,
                                reset_after=reset_after, backend=backend)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, names):  # names: PackedSequence of character ids
        embedded = PackedSequence(self.drop(self.embed(names.data)), names.batch_sizes,
                                  names.sorted_indices, names.unsorted_indices)
        _, h_n = self.gru(embedded)  # (layers * 2, B, H)
        return self.head(self.drop(torch.cat([h_n[-2], h_n[-1]], dim=-1)))  # (B, classes)


class SurnameTask:
    """The classification task the trainer runs; see trainer.py for the interface."""

    name = "surnames"

    def __init__(self, config: dict):
        self.config = config
        self.classes = config["classes"]
        self.chars = {c: i + 1 for i, c in enumerate(config["vocab"])}  # 0: unknown
        data = load_surnames(config["limit"])
        if sorted(data) != self.classes:
            raise CLIError("the surname data differ from this run's (another faker version?)")
        self.splits = split_surnames(data)
        if fingerprint(self.splits) != config["data"]["fingerprint"]:
            raise CLIError("the surname data differ from this run's (its config.json's limit "
                           "edited, or another faker version?)")
        self.sizes = {k: len(v) for k, v in self.splits.items()}
        # every split's names as padded ids, their lengths and labels, made once: a batch
        # is then rows of these (1.2 -> 0.17 ms a batch of 64, the same PackedSequence)
        self.encoded = {k: (*self._ids([n for n, _ in rows]),
                            torch.tensor([y for _, y in rows], dtype=torch.long))
                        for k, rows in self.splits.items()}

    @classmethod
    def new_config(cls, args) -> dict:
        data = load_surnames(args.limit)
        splits = split_surnames(data)
        empty = [{"val": "validation"}.get(name, name) for name, rows in splits.items()
                 if not rows]
        if empty:  # (a tiny --limit: the split's rounding leaves none for validation)
            raise CLIError(f"--limit {args.limit} leaves no {' or '.join(empty)} names; "
                           "give a larger --limit (0: all names)")
        vocab = sorted({c for name, _ in splits["train"] for c in name})
        return {"task": cls.name, "classes": sorted(data), "vocab": vocab, "limit": args.limit,
                "label_smoothing": args.label_smoothing,
                "data": {"source": "faker " + need("faker").VERSION,
                         "fingerprint": fingerprint(splits),
                         "sizes": {k: len(v) for k, v in splits.items()}},
                "model": {"embed": args.embed, "hidden": args.hidden, "layers": args.layers,
                          "dropout": args.dropout, "reset_after": not args.paper,
                          "backend": args.backend}}

    def make_model(self) -> SurnameClassifier:
        return SurnameClassifier(len(self.chars) + 1, len(self.classes), **self.config["model"])

    def _ids(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Character ids (N, longest), 0-padded, and lengths (N,); an empty name is one
        unknown character."""
        lengths = torch.tensor([max(len(n), 1) for n in names], dtype=torch.long)
        ids = torch.zeros(len(names), int(lengths.max()) if names else 0, dtype=torch.long)
        for i, n in enumerate(names):
            ids[i, : len(n)] = torch.tensor([self.chars.get(c, 0) for c in n], dtype=torch.long)
        return ids, lengths

    @staticmethod
    def _pack(ids, lengths, device) -> PackedSequence:
        return pack_padded_sequence(ids[:, : int(lengths.max())], lengths, batch_first=True,
                                    enforce_sorted=False).to(device)

    def encode(self, names: list[str], device) -> PackedSequence:
        return self._pack(*self._ids(names), device)

    def batch(self, split, indices, device):
        ids, lengths, labels = self.encoded[split]
        rows = torch.as_tensor(indices, dtype=torch.long)
        return self._pack(ids[rows], lengths[rows], device), labels[rows].to(device)

    def loss(self, logits, labels):
        """Training loss: cross-entropy with label smoothing (validation reports plain
        cross-entropy)."""
        return nn.functional.cross_entropy(logits, labels,
                                           label_smoothing=self.config["label_smoothing"])

    def eval_sums(self, logits, labels) -> list[float]:
        """[loss sum, correct, count]."""
        if logits is None:
            return [0.0, 0.0, 0.0]
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        return [loss, (logits.argmax(-1) == labels).sum().item(), len(labels)]

    def summarize(self, sums) -> dict:
        loss, correct, count = sums
        return {"loss": loss / max(count, 1), "accuracy": correct / max(count, 1)}

    def score(self, metrics) -> float:
        return metrics["accuracy"]

    @torch.no_grad()
    def report(self, model, device) -> dict:
        """Test accuracy, per-language precision/recall and the confusion matrix."""
        model.eval()
        names = [n for n, _ in self.splits["test"]]
        truth = torch.tensor([y for _, y in self.splits["test"]])
        logits = torch.cat([model(self.encode(names[i : i + 512], device)).cpu()
                            for i in range(0, len(names), 512)])
        pred = logits.argmax(-1)
        k = len(self.classes)
        confusion = torch.zeros(k, k, dtype=torch.long)
        confusion.index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
        per = {}
        for i, lang in enumerate(self.classes):
            tp = confusion[i, i].item()
            per[lang] = {"precision": tp / max(confusion[:, i].sum().item(), 1),
                         "recall": tp / max(confusion[i].sum().item(), 1),
                         "support": confusion[i].sum().item()}
        return {"accuracy": (pred == truth).float().mean().item(), "per_language": per,
                "confusion": confusion.tolist()}

    @torch.no_grad()
    def predict(self, model, names: list[str], device, top: int):
        model.eval()
        probs = model(self.encode(names, device)).softmax(-1).cpu()
        best = probs.topk(min(top, len(self.classes)), dim=-1)
        return [[(self.classes[i], p) for p, i in zip(v.tolist(), ix.tolist(), strict=True)]
                for v, ix in zip(best.values, best.indices, strict=True)]


def print_report(report: dict, classes: list[str], log=print) -> None:
    log(f"test accuracy {report['accuracy']:.4f}")
    log(f"{'language':<12} {'precision':>9} {'recall':>7} {'names':>6}")
    for lang in classes:
        r = report["per_language"][lang]
        log(f"{lang:<12} {r['precision']:9.3f} {r['recall']:7.3f} {r['support']:6d}")
