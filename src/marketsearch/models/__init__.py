"""Model builders and trainers: photo CNN, Word2Vec text CNN / TF-Hub encoder, fusion head.

Every model takes what the shared preprocessing produces (uint8 photos from
``marketsearch.images``, token ids or strings from ``marketsearch.text``), has a Dense
"embedding" layer (the fusion head: "fused_embedding") and a softmax "probs" output, and saves
and loads with ``model.save("x.keras")`` / ``keras.models.load_model`` (custom layers are
registered when this package is imported).
"""
from .fusion import (FUSED_INPUTS, LogitBlend, ModalityDropout, assemble_fused_model,
                     build_fusion_head, classifier_weights, embedding_model, fused_inputs,
                     present_flags, train_fusion_head)
from .image import ImageScaling, build_backbone, build_image_model, train_image_model
from .text import (STRINGS, TOKENS, HashedBigrams, HubTextEncoder, MaskedAttentionPool,
                   MaskedMeanPool, build_hub_text_model, build_text_ensemble, build_text_model,
                   embedding_matrix, prepare_text_input, text_input_kind, train_text_model,
                   train_word2vec)
from .training import fit, set_seed

__all__ = [
    "FUSED_INPUTS", "STRINGS", "TOKENS", "HashedBigrams", "HubTextEncoder", "ImageScaling",
    "LogitBlend", "MaskedAttentionPool", "MaskedMeanPool", "ModalityDropout",
    "assemble_fused_model", "build_backbone", "build_fusion_head", "build_hub_text_model",
    "build_image_model", "build_text_ensemble", "build_text_model", "classifier_weights",
    "embedding_matrix",
    "embedding_model", "fit", "fused_inputs", "prepare_text_input", "present_flags",
    "set_seed", "text_input_kind", "train_fusion_head", "train_image_model", "train_text_model",
    "train_word2vec",
]
