"""VQ pre-tokenisation: generation images -> Janus VQ ids once at build time, so training reads ids, not JPEGs.

Rows whose ids came from a generator with this stage's VQ (lineage params `vq`, a content id of
the VQ weights) keep them: those are the ids the image was sampled as, not a lossy re-encode of
its compressed pixels. Everything else is encoded with the VQ alone (never the LLM or vision tower).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from pydantic import NonNegativeInt

from pipeline.schema import LINEAGE_TYPE, STATUS_FAILED, STATUS_KEPT, conform
from stages.base import Resources, Stage, StageConfig, StageError, models_root, register, with_verdicts


class VQTokenizeConfig(StageConfig):
    # A model dir (relative to the recipe), or a tiny preset name built under <build>/models/.
    # It must be the checkpoint training starts from: ids are indices into its VQ codebook.
    model_dir: str
    gpus: float = 0.0
    # 0 runs as plain Ray tasks (one model load per partition, no actor process): cheaper for
    # small builds with a partition or two per source; > 0 keeps the model loaded in an actor pool
    actors: NonNegativeInt = 1


@register
class VQTokenize(Stage):
    name = "vq_tokenize"
    version = 2  # 2: decode() applies EXIF, scales 16-bit, composites alpha on white
    Config = VQTokenizeConfig
    needs = ("image",)
    adds = ("image_tokens", "image_token_grid")
    batch_size = 32

    def resources(self) -> Resources:
        return Resources(cpus=1.0, gpus=self.config.gpus, actors=self.config.actors)

    def _model_dir(self) -> Path:
        from model.tiny import resolve_recipe_model

        return resolve_recipe_model(self.config.model_dir, self.context.recipe_dir, models_root(self.context, None))

    def preflight(self) -> None:
        from model.tiny import ModelDirError

        try:
            self._model_dir()
        except ModelDirError as err:
            raise StageError(f"vq_tokenize.model_dir: {err}") from None

    def setup(self) -> None:
        import torch
        from transformers import JanusImageProcessor

        from model.generate import load_vq, vq_fingerprint

        model_dir = self._model_dir()
        self.vq = load_vq(model_dir)
        self.fingerprint = vq_fingerprint(self.vq)
        self.image_processor = JanusImageProcessor.from_pretrained(model_dir, local_files_only=True)
        if self.config.gpus > 0 and torch.cuda.is_available():
            self.vq.to("cuda")
        self.skipped = self.encoded = 0  # rows per worker: ids kept from the generator / encoded here

    def ids_from_this_vq(self, row: dict) -> bool:
        """The row's ids were made with this stage's VQ weights (by a generator, or by an earlier run)."""
        params = (row.get("lineage") or {}).get("params")
        try:
            return json.loads(params).get("vq") == self.fingerprint if params else False
        except (ValueError, AttributeError):
            return False

    def process(self, batch: pa.Table) -> pa.Table:
        from model.data import decode_image, generation_pixels
        from model.generate import encode_image_tokens
        from model.shards import DataError

        rows = batch.to_pylist()
        verdicts = [(row["status"], row.get("reason"), row.get("detail")) for row in rows]
        todo, images = [], []
        for i, row in enumerate(rows):
            if row["task"] != "generation" or row["status"] != STATUS_KEPT:
                continue  # other tasks and rejected rows pass through
            has_ids = row.get("image_tokens") is not None
            if has_ids and self.ids_from_this_vq(row):
                self.skipped += 1  # sampled (or encoded before) with this very VQ: exact, keep
                continue
            if has_ids and not (row.get("image") or {}).get("bytes"):
                continue  # ids of unrecorded origin and no image to re-encode: keep them as given
            try:
                images.append(decode_image(row))
                todo.append(i)
            except DataError as err:
                bomb = getattr(err, "reason", None) == "decompression_bomb"  # named as in every other stage
                verdicts[i] = (STATUS_FAILED, "decompression_bomb" if bomb else "bad_image", str(err)[:500])
        tokens, grids = batch.column("image_tokens").to_pylist(), batch.column("image_token_grid").to_pylist()
        lineages = batch.column("lineage").to_pylist()
        if todo:
            ids, grid = encode_image_tokens(self.vq, generation_pixels(images, self.image_processor))
            self.encoded += len(todo)
            for i, row_ids in zip(todo, ids.tolist()):
                tokens[i], grids[i] = row_ids, list(grid)
                lineages[i] = self.record_vq(lineages[i])
        batch = conform(batch)
        for name, values, typ in (("image_tokens", tokens, pa.list_(pa.int32())), ("image_token_grid", grids, pa.list_(pa.int32())),
                                  ("lineage", lineages, LINEAGE_TYPE)):
            idx = batch.schema.get_field_index(name)
            batch = batch.set_column(idx, batch.schema.field(name), pa.array(values, typ))
        return with_verdicts(batch, verdicts)

    def record_vq(self, lineage: dict | None) -> dict:
        """Lineage params `vq` now names the VQ these ids index (a rerun, or the trainer, can check it)."""
        lineage = dict(lineage or {})
        params = json.loads(lineage.get("params") or "{}")
        lineage["params"] = json.dumps({**params, "vq": self.fingerprint}, sort_keys=True)
        return lineage
