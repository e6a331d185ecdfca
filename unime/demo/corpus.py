"""A small synthetic image-text corpus that exercises every MMEB task type, offline.

``python -m unime.demo.corpus DIR`` renders shapes of known colour, count and position with
PIL and writes, deterministically for a seed:

- ``train/<Dataset>/train-00000.parquet``: MMEB-train pairs (``qry, qry_image_path,
  pos_text, pos_image_path``) for retrieval (i2t, t2i), classification, VQA and grounding;
  captions come at three levels of detail, so real false negatives exist (many images
  fit "red circles");
- ``train/DemoNoisy.jsonl``: a few deliberately broken rows (missing, corrupt and empty
  images, empty queries) beside good ones, so that every run exercises the quarantine;
- ``eval/<Subset>/test-00000.parquet``: MMEB-eval rows (``qry_text, qry_img_path,
  tgt_text[], tgt_img_path[]``, the positive at index 0) on held-out renders; with
  ``held_out_combos`` > 0 some (shape, colour) combinations never appear in training and
  the ``*Novel`` subsets ask about them (out-of-distribution compositions);
- ``eval_global/captions.parquet``: ``(caption, image)``, two captions per held-out image,
  for global image-text retrieval (recall@k both ways);
- ``images/``: the PNGs all paths are relative to, and ``attributes.parquet``, the ground
  truth of every image (what it shows), which lets experiments tell true from false
  negatives.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

# DemoCorpusConfig lives in the config (which owns the ``demo.corpus`` section); re-exported
# here for the callers that build a corpus with ``demo_data.DemoCorpusConfig(...)``
from unime.config import DemoCorpusConfig
from unime.prompts import MMEB_IMAGE_PLACEHOLDER as IMG

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (225, 195, 20),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
             "center": "in the center"}

INSTRUCTIONS = {
    "i2t": f"{IMG}\nFind a caption for the given image.\n",
    "t2i": "Find an image that matches the given caption: {caption}\n",
    "image_target": f"{IMG}\nRepresent the given image.\n",
    "shape_cls": f"{IMG}\nRepresent the given image for shape classification.\n",
    "colour_cls": f"{IMG}\nRepresent the given image for colour classification.\n",
    "vqa": f"{IMG}\nRepresent the given image with the following question: {{question}}\n",
    "grounding": f'{IMG}\nSelect the portion of the image that isolates the object labelled as "{{label}}".\n',
    "crop_target": f"{IMG}\nRepresent the given cropped image of the object.\n",
}
QUESTIONS = {
    "count": ("How many shapes are there?", lambda s: COUNT_WORDS[s.count], list(COUNT_WORDS.values())),
    "colour": ("What colour are the shapes?", lambda s: s.colour, list(COLOURS)),
    "shape": ("What shape is shown?", lambda s: s.shape, list(SHAPES)),
    "position": ("Where are the shapes?", lambda s: POSITIONS[s.position], list(POSITIONS.values())),
}


@dataclass(frozen=True)
class Scene:
    """``count`` shapes of one kind and colour, grouped in one region of the image."""

    shape: str
    colour: str
    count: int
    position: str

    def caption(self, level: int) -> str:
        """Level 0 names colour and shape, 1 adds the count, 2 adds the position (unique)."""
        plural = self.shape + "s" if self.count > 1 else self.shape
        if level == 0:
            return f"a {self.colour} {self.shape}" if self.count == 1 else f"{self.colour} {plural}"
        counted = f"{COUNT_WORDS[self.count]} {self.colour} {plural}"
        return counted if level == 1 else f"{counted} {POSITIONS[self.position]}"


# The demo subsets by MMEB meta-task (all in-distribution), for unime.eval.mmeb.aggregate.
EVAL_GROUPS = {"Classification": (["DemoShapeCls", "DemoColourCls"], []), "VQA": (["DemoVQA"], []),
               "Retrieval": (["DemoI2T", "DemoT2I"], []), "Grounding": (["DemoGrounding"], [])}
# Out-of-distribution subsets of a corpus with held-out (shape, colour) combinations.
NOVEL_SUBSETS = {"VQA": ["DemoVQANovel"], "Retrieval": ["DemoI2TNovel", "DemoT2INovel"]}

ALL_SCENES = [Scene(*combo) for combo in itertools.product(SHAPES, COLOURS, COUNT_WORDS, POSITIONS)]


def eval_groups(novel: bool = False) -> dict[str, tuple[list[str], list[str]]]:
    """The demo subsets by meta-task; with ``novel`` the held-out compositions as OOD."""
    return {task: (ind, list(NOVEL_SUBSETS.get(task, [])) if novel else []) for task, (ind, _) in EVAL_GROUPS.items()}


def held_out_combos(seed: int, count: int) -> set[tuple[str, str]]:
    """``count`` (shape, colour) combinations kept out of training, chosen by ``seed``, at most
    one per shape and per colour so that every shape and every colour is still seen."""
    rng = random.Random(f"held-out-{seed}")
    shapes, colours = list(SHAPES), list(COLOURS)
    rng.shuffle(shapes)
    rng.shuffle(colours)
    if count > min(len(shapes), len(colours)):
        raise ValueError(f"held_out_combos={count}: at most {min(len(shapes), len(colours))}")
    return set(zip(shapes[:count], colours[:count]))


@dataclass
class _Writer:
    root: Path
    rng: random.Random
    image_size: int
    held_out: set[tuple[str, str]] = field(default_factory=set)
    attributes: list[dict] = field(default_factory=list)

    @property
    def seen_scenes(self) -> list[Scene]:
        return [s for s in ALL_SCENES if (s.shape, s.colour) not in self.held_out]

    @property
    def novel_scenes(self) -> list[Scene]:
        return [s for s in ALL_SCENES if (s.shape, s.colour) in self.held_out]

    def save(self, image, rel_path: str, attributes: dict) -> str:
        path = self.root / "images" / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", optimize=False)
        self.attributes.append({"image": f"images/{rel_path}", "attributes": json.dumps(attributes, sort_keys=True)})
        return f"images/{rel_path}"


REGIONS = {"left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0), "top": (0.0, 0.0, 1.0, 0.5),
           "bottom": (0.0, 0.5, 1.0, 1.0), "center": (0.25, 0.25, 0.75, 0.75)}


def draw_shape(draw, shape: str, centre: tuple[float, float], radius: float, colour) -> None:
    x, y = centre
    if shape == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    elif shape == "square":
        draw.rectangle([x - radius, y - radius, x + radius, y + radius], fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=colour)
    else:
        draw.polygon([(x, y - radius), (x + radius, y), (x, y + radius), (x - radius, y)], fill=colour)


def render_scene(scene: Scene, size: int, rng: random.Random):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = (v * size for v in REGIONS[scene.position])
    cols = 1 if scene.count == 1 else 2
    rows = (scene.count + cols - 1) // cols
    cell_w, cell_h = (x1 - x0) / cols, (y1 - y0) / rows
    # shapes about 13 pixels across in a 64-pixel image: small enough for four to a half, large
    # enough that a tiny vision tower's 14-pixel patches tell a circle from a diamond
    radius = min(cell_w, cell_h, size / 4) * 0.42
    for k in range(scene.count):
        cx = x0 + (k % cols + 0.5) * cell_w + rng.uniform(-1.5, 1.5)
        cy = y0 + (k // cols + 0.5) * cell_h + rng.uniform(-1.5, 1.5)
        draw_shape(draw, scene.shape, (cx, cy), radius, COLOURS[scene.colour])
    return image


def render_pair(objects: list[tuple[str, str]], size: int, rng: random.Random):
    """Two single objects side by side; returns the image and each object's crop."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    boxes = []
    for k, (shape, colour) in enumerate(objects):
        cx = size * (0.25 + 0.5 * k) + rng.uniform(-2, 2)
        cy = size * 0.5 + rng.uniform(-8, 8)
        radius = size * 0.14
        draw_shape(draw, shape, (cx, cy), radius, COLOURS[colour])
        pad = radius + 3
        boxes.append((int(cx - pad), int(cy - pad), int(cx + pad), int(cy + pad)))
    return image, [image.crop(box).resize((size // 2, size // 2)) for box in boxes]


def scene_pairs(scene: Scene, image: str, rng: random.Random) -> dict[str, list[dict]]:
    """MMEB-train rows (UniME-V2 field names) that one rendered scene yields, by dataset."""
    question_key = rng.choice(sorted(QUESTIONS))
    question, answer_of, _ = QUESTIONS[question_key]
    caption = scene.caption(rng.randrange(3))
    return {
        "DemoI2T": [_row(INSTRUCTIONS["i2t"], image, caption, "")],
        "DemoT2I": [_row(INSTRUCTIONS["t2i"].format(caption=caption), "", INSTRUCTIONS["image_target"], image)],
        "DemoShapeCls": [_row(INSTRUCTIONS["shape_cls"], image, scene.shape, "")],
        "DemoColourCls": [_row(INSTRUCTIONS["colour_cls"], image, scene.colour, "")],
        "DemoVQA": [_row(INSTRUCTIONS["vqa"].format(question=question), image, answer_of(scene), "")],
    }


def _row(query_text: str, query_image: str, pos_text: str, pos_image: str) -> dict:
    return {"query_text": query_text, "query_image": query_image, "pos_text": pos_text, "pos_image": pos_image}


def _eval_row(qry_text: str, qry_img: str, targets: list[tuple[str, str]]) -> dict:
    return {"qry_text": qry_text, "qry_img_path": qry_img, "tgt_text": [t for t, _ in targets],
            "tgt_img_path": [i for _, i in targets]}


def _render_scenes(writer: _Writer, split: str, count: int, scenes: list[Scene] | None = None,
                   stem: str = "scene") -> list[tuple[Scene, str]]:
    rendered, scenes = [], scenes or writer.seen_scenes
    for idx in range(count):
        scene = writer.rng.choice(scenes)
        image = render_scene(scene, writer.image_size, writer.rng)
        rendered.append((scene, writer.save(image, f"{split}/{stem}_{idx:05d}.png", asdict(scene))))
    return rendered


def _render_grounding(writer: _Writer, split: str, count: int) -> list[tuple[list, str, list[str]]]:
    kinds = [kind for kind in itertools.product(SHAPES, COLOURS) if kind not in writer.held_out]
    rendered = []
    for idx in range(count):
        objects = writer.rng.sample(kinds, 2)
        image, crops = render_pair(objects, writer.image_size, writer.rng)
        path = writer.save(image, f"{split}/pair_{idx:05d}.png", {"objects": [list(o) for o in objects]})
        crop_paths = [
            writer.save(crop, f"{split}/pair_{idx:05d}_obj{k}.png", {"shape": o[0], "colour": o[1], "crop": True})
            for k, (crop, o) in enumerate(zip(crops, objects))
        ]
        rendered.append((objects, path, crop_paths))
    return rendered


def build_train(writer: _Writer, config: DemoCorpusConfig) -> dict[str, list[dict]]:
    datasets: dict[str, list[dict]] = {}
    for scene, image in _render_scenes(writer, "train", config.train_images):
        for name, rows in scene_pairs(scene, image, writer.rng).items():
            datasets.setdefault(name, []).extend(rows)
    for objects, image, crops in _render_grounding(writer, "train", config.grounding_images):
        target = writer.rng.randrange(2)
        label = " ".join(reversed(objects[target]))
        query = INSTRUCTIONS["grounding"].format(label=label)
        datasets.setdefault("DemoGrounding", []).append(_row(query, image, INSTRUCTIONS["crop_target"], crops[target]))
    return datasets


def _distractors(rng: random.Random, scene: Scene, count: int) -> list[Scene]:
    return rng.sample([s for s in ALL_SCENES if s != scene], count)


def build_eval(writer: _Writer, config: DemoCorpusConfig) -> dict[str, list[dict]]:
    rng, n_cand = writer.rng, config.eval_candidates
    scenes = _render_scenes(writer, "eval", config.eval_queries)
    subsets: dict[str, list[dict]] = {name: [] for name in
                                      ("DemoI2T", "DemoT2I", "DemoShapeCls", "DemoColourCls", "DemoVQA", "DemoGrounding")}
    pool = {scene: image for scene, image in scenes}
    for scene, image in scenes:
        others = _distractors(rng, scene, n_cand - 1)
        subsets["DemoI2T"].append(_eval_row(INSTRUCTIONS["i2t"], image, [(s.caption(2), "") for s in [scene, *others]]))
        image_others = [s for s in pool if s != scene][: n_cand - 1]
        t2i_targets = [(INSTRUCTIONS["image_target"], pool[s]) for s in [scene, *image_others]]
        subsets["DemoT2I"].append(_eval_row(INSTRUCTIONS["t2i"].format(caption=scene.caption(2)), "", t2i_targets))
        for name, key, labels in (("DemoShapeCls", "shape_cls", SHAPES), ("DemoColourCls", "colour_cls", list(COLOURS))):
            truth = getattr(scene, "shape" if key == "shape_cls" else "colour")
            ordered = [truth, *[label for label in labels if label != truth]]
            subsets[name].append(_eval_row(INSTRUCTIONS[key], image, [(label, "") for label in ordered]))
        subsets["DemoVQA"].append(_vqa_eval_row(rng, scene, image))
    grounding = _render_grounding(writer, "eval", config.eval_queries)
    all_crops = [(obj, crop) for objects, _, crops in grounding for obj, crop in zip(objects, crops)]
    for objects, image, crops in grounding:
        target = rng.randrange(2)
        other_crops = [crop for obj, crop in all_crops if obj != objects[target] and crop != crops[1 - target]]
        candidates = [crops[target], crops[1 - target], *rng.sample(other_crops, min(n_cand - 2, len(other_crops)))]
        label = " ".join(reversed(objects[target]))
        subsets["DemoGrounding"].append(_eval_row(
            INSTRUCTIONS["grounding"].format(label=label), image, [(INSTRUCTIONS["crop_target"], c) for c in candidates]))
    if writer.held_out:
        subsets |= build_novel_eval(writer, config, scenes)
    return subsets


def _vqa_eval_row(rng: random.Random, scene: Scene, image: str) -> dict:
    question, answer_of, answers = QUESTIONS[rng.choice(sorted(QUESTIONS))]
    truth = answer_of(scene)
    targets = [(a, "") for a in [truth, *[a for a in answers if a != truth]]]
    return _eval_row(INSTRUCTIONS["vqa"].format(question=question), image, targets)


def build_novel_eval(writer: _Writer, config: DemoCorpusConfig, seen: list[tuple[Scene, str]]) -> dict[str, list[dict]]:
    """Subsets over renders of the held-out (shape, colour) combinations: their captions,
    images and questions never occur in training. T2I candidates mix seen and novel renders."""
    rng, n_cand = writer.rng, config.eval_candidates
    novel = _render_scenes(writer, "eval", config.eval_queries, writer.novel_scenes, stem="novel")
    renders = seen + novel
    subsets: dict[str, list[dict]] = {"DemoI2TNovel": [], "DemoT2INovel": [], "DemoVQANovel": []}
    for scene, image in novel:
        captions = [(s.caption(2), "") for s in [scene, *_distractors(rng, scene, n_cand - 1)]]
        subsets["DemoI2TNovel"].append(_eval_row(INSTRUCTIONS["i2t"], image, captions))
        others = rng.sample([i for s, i in renders if s != scene], n_cand - 1)
        targets = [(INSTRUCTIONS["image_target"], i) for i in [image, *others]]
        subsets["DemoT2INovel"].append(_eval_row(INSTRUCTIONS["t2i"].format(caption=scene.caption(2)), "", targets))
        subsets["DemoVQANovel"].append(_vqa_eval_row(rng, scene, image))
    return subsets


def global_captions(attributes: list[dict]) -> list[dict]:
    """Flickr30K/COCO-style pool: every eval scene image with two captions (count level and
    full detail), for recall@k in both directions over the whole pool."""
    rows = []
    for entry in attributes:
        if entry["image"].startswith("images/eval/scene_"):
            scene = Scene(**json.loads(entry["attributes"]))
            rows += [{"caption": scene.caption(level), "image": entry["image"]} for level in (1, 2)]
    return rows


def write_noisy(root: Path, good_rows: list[dict]) -> int:
    """Broken rows of every kind the data layer quarantines, beside good ones."""
    broken_dir = root / "images" / "broken"
    broken_dir.mkdir(parents=True, exist_ok=True)
    (broken_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png body")
    (broken_dir / "empty.png").write_bytes(b"")
    lines = [json.dumps(row) for row in good_rows]
    lines += [
        json.dumps(_row(INSTRUCTIONS["i2t"], "images/broken/missing.png", "a red circle", "")),
        json.dumps(_row(INSTRUCTIONS["i2t"], "images/broken/corrupt.png", "a red circle", "")),
        json.dumps(_row(INSTRUCTIONS["i2t"], "images/broken/empty.png", "a red circle", "")),
        json.dumps(_row("", "", "a red circle", "")),
        json.dumps({**_row("what is shown?", "", "a red circle", ""), "pos_text": 7}),
        '{"query_text": "truncated row", ',
    ]
    (root / "train" / "DemoNoisy.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def vocabulary_sentences() -> list[str]:
    """Every caption, question, answer and instruction the corpus can produce (tokenizer training)."""
    sentences = [scene.caption(level) for scene in ALL_SCENES for level in range(3)]
    for question, _, answers in QUESTIONS.values():
        sentences += [question, *answers]
    sentences += [text.replace("{caption}", "").replace("{question}", "").replace("{label}", "")
                  for text in INSTRUCTIONS.values()]
    return sentences


def build(out_dir: str | Path, config: DemoCorpusConfig | None = None) -> dict:
    """Write the corpus under ``out_dir``; returns its manifest (row counts per file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = config or DemoCorpusConfig()
    root = Path(out_dir)
    writer = _Writer(root, random.Random(config.seed), config.image_size,
                     held_out_combos(config.seed, config.held_out_combos))
    counts: dict[str, int] = {}
    for name, rows in build_train(writer, config).items():
        mmeb = [{"qry": r["query_text"], "qry_image_path": r["query_image"], "pos_text": r["pos_text"],
                 "pos_image_path": r["pos_image"]} for r in rows]
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(mmeb), root / "train" / name / "train-00000.parquet")
        counts[f"train/{name}"] = len(rows)
    if config.noisy_rows:
        first = writer.attributes[0]  # the good rows describe the image they name
        good = scene_pairs(Scene(**json.loads(first["attributes"])), first["image"], writer.rng)["DemoI2T"] * 2
        counts["train/DemoNoisy.jsonl"] = write_noisy(root, good)
    for name, rows in build_eval(writer, config).items():
        (root / "eval" / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), root / "eval" / name / "test-00000.parquet")
        counts[f"eval/{name}"] = len(rows)
    global_rows = global_captions(writer.attributes)
    (root / "eval_global").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(global_rows), root / "eval_global" / "captions.parquet")
    counts["eval_global/captions.parquet"] = len(global_rows)
    pq.write_table(pa.Table.from_pylist(writer.attributes), root / "attributes.parquet")
    manifest = {"config": asdict(config), "rows": counts, "images": len(writer.attributes)}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unime.demo.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=DemoCorpusConfig.train_images)
    parser.add_argument("--eval-queries", type=int, default=DemoCorpusConfig.eval_queries)
    args = parser.parse_args(argv)
    config = DemoCorpusConfig(seed=args.seed, train_images=args.train_images, eval_queries=args.eval_queries)
    manifest = build(args.dir, config)
    print(json.dumps(manifest["rows"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
